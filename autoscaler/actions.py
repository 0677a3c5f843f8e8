"""What the reconciler asks the actuators to do, and what they report back when it is done.

Each action is a value: a Launch carries its request id (the instances it creates are tagged with
it, so a restarted autoscaler can tell which launch made them); a Result carries the action, and
either what it produced or the error's class (autoscaler.reactions) and one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Launch:
    request_id: str
    node_type: str
    count: int
    reason: str
    requested_at: float
    on_demand: bool = False  # a spot type falling back to on-demand capacity (reactions)


@dataclass(frozen=True)
class Install:
    node_id: str
    node_type: str


@dataclass(frozen=True)
class Drain:
    node_ids: tuple[str, ...]
    undrain: bool = False


@dataclass(frozen=True)
class Terminate:
    node_ids: tuple[str, ...]


Action = Union[Launch, Install, Drain, Terminate]


@dataclass(frozen=True)
class Result:
    """An action that ended: success, or an error's class (autoscaler.reactions) and one line."""

    action: Action
    node_ids: tuple[str, ...] = ()  # a Launch: the instances it created
    error_kind: str = ""  # "" on success
    error: str = ""
    detail: str = ""  # on success, for the event line (e.g. the stages an install ran)

    @property
    def ok(self) -> bool:
        return not self.error_kind
