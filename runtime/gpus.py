"""Which of a node's GPUs each task and actor gets, so it sees only those (CUDA_VISIBLE_DEVICES).

The scheduler counts GPUs as a number; this module gives the number identities. Whole GPUs go to one
holder each; a fraction (num_gpus=0.5) shares one device with other fractions, best fit first, so
half-used devices fill up before an empty one is broken into. A request above 1 must be whole.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from runtime.resources import EPSILON


def visible_gpu_ids(count: int) -> list[str]:
    """The device ids this node's GPUs have: the node's own CUDA_VISIBLE_DEVICES when the node was
    limited to some devices, else 0..count-1."""
    given = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return given[:count] if len(given) >= count else [str(i) for i in range(count)]


class GpuSlots:
    def __init__(self, ids: Sequence[str]):
        self._free = {gpu: 1.0 for gpu in ids}  # device id -> fraction not yet handed out

    def allocate(self, amount: float) -> Optional[list[str]]:
        """Device ids for `amount` GPUs, taken from the free ones; None if they are not free."""
        if amount <= 0:
            return []
        if amount > 1 and not float(amount).is_integer():
            return None
        if amount >= 1:
            whole = [g for g, free in self._free.items() if free >= 1 - EPSILON][:int(amount)]
            if len(whole) < amount:
                return None
            for gpu in whole:
                self._free[gpu] = 0.0
            return whole
        shared = [g for g, free in self._free.items() if free + EPSILON >= amount]
        if not shared:
            return None
        gpu = min(shared, key=lambda g: (self._free[g], g))  # best fit
        self._free[gpu] -= amount
        return [gpu]

    def can_allocate(self, amount: float) -> bool:
        ids = self.allocate(amount)
        if ids is None:
            return False
        self.release(ids, amount)
        return True

    def release(self, ids: Sequence[str], amount: float) -> None:
        share = amount / len(ids) if ids and amount < 1 else 1.0
        for gpu in ids:
            self._free[gpu] = min(1.0, self._free[gpu] + share)

