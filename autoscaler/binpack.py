"""Bin-packing for the planner: shapes, packing onto free capacity, and choosing new nodes.

The planner's estimator and expander (after Kubernetes cluster-autoscaler's split): `pack` places
demand on capacity that exists or is on the way; `Expander` picks the node types that waste least
for the rest, within the launch `Limits`. Everything works in counts ("how many of this shape fit
here"), never per task, so the cost grows with distinct shapes and nodes, not with queued tasks.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

# Slack for float resources (0.1 CPU * 3 must fit 0.3 CPU; leftovers of -1e-17 are zero).
EPS = 1e-9

Shape = tuple[tuple[str, float], ...]
"""A resource shape in canonical form: sorted (name, amount) pairs, amounts > 0, hashable."""


def to_shape(resources: Mapping[str, float]) -> Shape:
    """Canonical form: zero-need keys dropped (they constrain nothing), keys sorted."""
    return tuple(sorted((k, float(v)) for k, v in resources.items() if v > EPS))


def shape_label(shape: Shape) -> str:
    """A short stable text for status displays, e.g. 'CPU=4, GPU=1'."""
    return ", ".join(f"{k}={v:g}" for k, v in shape)


def shape_order(shape: Shape) -> tuple:
    """Sort key that puts bigger shapes first: GPU, then CPU, then the rest, then the names."""
    amounts = dict(shape)
    others = sum(v for k, v in shape if k not in ("GPU", "CPU"))
    return (-amounts.get("GPU", 0.0), -amounts.get("CPU", 0.0), -others, shape)


def add_shapes(shapes: Iterable[Shape]) -> Shape:
    """The one shape that holds all of `shapes` together (a STRICT_PACK group)."""
    total: dict[str, float] = {}
    for shape in shapes:
        for k, v in shape:
            total[k] = total.get(k, 0.0) + v
    return to_shape(total)


def fits(avail: Mapping[str, float], shape: Shape) -> int:
    """How many copies of `shape` fit in `avail`: the minimum over its resources of avail/need."""
    return min(math.floor(avail.get(k, 0.0) / need + EPS) for k, need in shape)


def take(avail: dict[str, float], shape: Shape, count: int) -> None:
    """Remove `count` copies of `shape` from `avail` in place, rounding float dust to zero."""
    for k, need in shape:
        left = avail.get(k, 0.0) - need * count
        avail[k] = left if left > EPS else 0.0


@dataclass
class Bin:
    """Capacity on one node (existing, launching or not yet created) to place demand on."""

    avail: dict[str, float]
    node_type: str
    node_id: str | None = None  # None for nodes the provider does not list yet
    used: bool = False  # something was placed here, so the node is needed


def pack(demand: Mapping[Shape, int], bins: list[Bin]) -> dict[Shape, int]:
    """Place demand on bins, biggest shapes first, first bin with room first; return the rest."""
    left: dict[Shape, int] = {}
    for shape in sorted(demand, key=shape_order):
        count = demand[shape]
        for b in bins:
            if count == 0:
                break
            k = min(fits(b.avail, shape), count)
            if k:
                take(b.avail, shape, k)
                b.used = True
                count -= k
        if count:
            left[shape] = count
    return left


def fill(
    avail: dict[str, float], order: list[Shape], remaining: Mapping[Shape, int]
) -> dict[Shape, int]:
    """Greedily fill one node's `avail` (mutated) with `remaining` in `order`: shape -> count."""
    placed = {}
    for shape in order:
        k = min(fits(avail, shape), remaining[shape])
        if k:
            take(avail, shape, k)
            placed[shape] = k
    return placed


def utilization(total: Mapping[str, float], placed: Mapping[Shape, int]) -> float:
    """Mean over the node's resources of the fraction `placed` uses: 1.0 means nothing is wasted.

    Rounded so that equal fills compare equal and ties fall to the caller's deterministic order.
    """
    keys = [k for k, v in total.items() if v > EPS]
    if not keys:
        return 0.0
    used: dict[str, float] = {}
    for shape, count in placed.items():
        for k, need in shape:
            used[k] = used.get(k, 0.0) + need * count
    return round(sum(min(1.0, used.get(k, 0.0) / total[k]) for k in keys) / len(keys), 9)


class Limits:
    """Launch allowance left in this plan: per node type, global max_workers and upscaling speed."""

    def __init__(self, per_type: dict[str, int], global_left: int, rate_left: int):
        self.per_type, self.global_left, self.rate_left = per_type, global_left, rate_left

    def allowed(self, node_type: str) -> int:
        return max(0, min(self.per_type.get(node_type, 0), self.global_left, self.rate_left))

    def take(self, node_type: str, n: int) -> None:
        self.per_type[node_type] -= n
        self.global_left -= n
        self.rate_left -= n


def _has_gpu(resources: Mapping[str, float]) -> bool:
    return resources.get("GPU", 0) > 0


class Expander:
    """Chooses node types for demand that free capacity cannot hold, and records the launches.

    Least waste: take the biggest remaining shape that some type with allowance left can hold; for
    each such type greedily fill one new node with the remaining demand, biggest shapes first, and
    keep the best score (utilization of the node's resources, demand placed, then type name). A GPU
    type only takes shapes that need a GPU or that no CPU-only type could ever hold; once it holds
    such a shape, other shapes may fill its leftover CPU.
    """

    def __init__(self, types: Mapping[str, Mapping[str, float]], limits: Limits):
        """`types`: the launchable node types (max_workers > 0), name -> resources."""
        self.types = sorted(types.items())
        self.limits = limits
        self.launched: Counter = Counter()
        cpu_types = [r for _, r in self.types if not _has_gpu(r)]
        self._gpu_ok = functools.cache(
            lambda s: _has_gpu(dict(s)) or not any(fits(r, s) for r in cpu_types)
        )

    def record(self, name: str, n: int) -> None:
        self.limits.take(name, n)
        self.launched[name] += n

    def launch_for(
        self, demand: Mapping[Shape, int]
    ) -> tuple[Counter, list[tuple[str, int, dict]]]:
        """Launch nodes for `demand`; return (unmet demand, [(type, count, leftover per node)]).

        One chosen fill is repeated on as many identical nodes as the demand allows, so the loop
        runs once per distinct fill, never per task, and at most once per launched node.
        """
        left = Counter({s: c for s, c in demand.items() if c > 0})
        groups = []
        while left:
            best = self._best(left)
            if best is None:
                break
            name, placed, leftover = best
            n = min(self.limits.allowed(name), min(left[s] // c for s, c in placed.items()))
            self.record(name, n)
            groups.append((name, n, leftover))
            left.subtract({s: c * n for s, c in placed.items()})
            left = +left
        return left, groups

    def _best(self, left: Counter) -> tuple[str, dict[Shape, int], dict] | None:
        """The least-waste (type, fill, leftover) among types that can take the biggest shape that
        any type can take now, so big (GPU) shapes get nodes first and small ones fill the rest."""
        order = sorted(left, key=shape_order)
        for anchor in order:
            best, best_score = None, None
            for name, total in self.types:
                if self.limits.allowed(name) <= 0 or not self._takes(total, anchor):
                    continue
                avail = dict(total)
                placed = self._fill(avail, order, left)
                score = (utilization(total, placed), sum(placed.values()))
                if best_score is None or score > best_score:
                    best, best_score = (name, placed, avail), score
            if best:
                return best
        return None

    def _takes(self, total: Mapping[str, float], shape: Shape) -> bool:
        return fits(total, shape) > 0 and (not _has_gpu(total) or self._gpu_ok(shape))

    def _fill(self, avail: dict, order: list[Shape], left: Counter) -> dict[Shape, int]:
        if not _has_gpu(avail):
            return fill(avail, order, left)
        placed = fill(avail, [s for s in order if self._gpu_ok(s)], left)
        if placed:
            placed.update(fill(avail, [s for s in order if not self._gpu_ok(s)], left))
        return placed
