"""A node's lifecycle: its states, the one table of legal moves between them, and where they live.

Every state change of a node, whoever makes it (`cluster up` for the head, the autoscaler for
workers), goes through `transition`, which refuses an edge the table does not list and appends
(state, time, reason) to the node's history. The current state and the time it was entered are
written to the instance's own tags (`record`), so a process that crashes at any moment is followed
by one that reads them back (`from_tags`) and carries on; only the history before the last
transition is lost with the process (the autoscaler publishes it to the GCS, see
autoscaler.autoscaler).

A launch that the cloud refused never had an instance to tag: its record (REQUESTED ->
ALLOCATION_FAILED) lives in the autoscaler's memory and published status only. TERMINATED is the
same: an instance that is gone has no tags left, so that last step is history only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

from launcher import tags as T

REQUESTED = "requested"  # a launch was asked of the cloud; instances are created with this state
ALLOCATED = "allocated"  # the cloud returned the instance; nothing of ours runs on it yet
INSTALLING = "installing"  # the updater syncs files, runs setup, installs and starts the runtime
RUNNING = "running"  # set up and started: it joins (or has joined) the runtime
DRAINING = "draining"  # out of every node's view so no work is sent there; removed unless work came
TERMINATING = "terminating"  # termination asked of the cloud
TERMINATED = "terminated"  # gone from the cloud (history only)
ALLOCATION_FAILED = "allocation-failed"  # the cloud refused the launch (history only)
INSTALL_FAILED = "install-failed"  # a setup or start command failed, or installing took too long
PREEMPTED = "preempted"  # the cloud took the instance away (spot reclaim, eviction)

STATES = (REQUESTED, ALLOCATED, INSTALLING, RUNNING, DRAINING, TERMINATING, TERMINATED,
          ALLOCATION_FAILED, INSTALL_FAILED, PREEMPTED)
FINAL = frozenset({TERMINATED, ALLOCATION_FAILED})
# States in which an instance exists but does not yet run the runtime: the planner counts its
# type's capacity as on the way.
COMING = frozenset({REQUESTED, ALLOCATED, INSTALLING})
# Alive on the cloud: may be taken away (PREEMPTED) or vanish (TERMINATED) at any moment.
_ALIVE = (REQUESTED, ALLOCATED, INSTALLING, RUNNING, DRAINING, INSTALL_FAILED)

_EDGES: dict[tuple[Optional[str], str], str] = {
    (None, REQUESTED): "a launch is asked of the cloud; the instance is created carrying this state",
    (REQUESTED, ALLOCATED): "the cloud's create call returned the instance, or a restarted "
                            "autoscaler finds an instance whose launch it did not see end",
    (REQUESTED, ALLOCATION_FAILED): "the cloud refused the launch (capacity, quota, auth, config, "
                                    "API error); the error's class decides the reaction",
    (REQUESTED, TERMINATING): "no longer wanted while its launch is in flight (type removed, "
                              "max_workers lowered)",
    (ALLOCATED, INSTALLING): "the updater starts on the node",
    (ALLOCATED, TERMINATING): "no longer wanted before setup began (`cluster down`, type removed)",
    (INSTALLING, RUNNING): "every stage is done: files, setup, runtime, start commands",
    (INSTALLING, INSTALL_FAILED): "a stage failed, or installing outlasted its timeout",
    (INSTALLING, TERMINATING): "no longer wanted while being set up (`cluster down`, type removed)",
    (INSTALL_FAILED, INSTALLING): "`cluster up` tries the head's setup again",
    (INSTALL_FAILED, TERMINATING): "a worker whose setup failed is replaced",
    (RUNNING, INSTALLING): "the setup, start commands or runtime changed: `cluster up` re-runs "
                           "what changed on the head, the autoscaler on an outdated worker",
    (RUNNING, DRAINING): "idle past idle_timeout_minutes, or outdated: no new work is sent there",
    (RUNNING, TERMINATING): "it died (heartbeats missed), never joined the runtime in time, "
                            "or its type left the config",
    (DRAINING, RUNNING): "it got work while draining: kept",
    (DRAINING, TERMINATING): "drained: idle, or its drain timeout passed",
    (PREEMPTED, TERMINATING): "what the cloud left of a preempted instance (a stopped VM) is removed",
    (TERMINATING, TERMINATED): "the instance is gone from the cloud's listing",
    (PREEMPTED, TERMINATED): "the preempted instance is gone from the cloud's listing",
}
for _state in _ALIVE:
    _EDGES[(_state, PREEMPTED)] = "the cloud took the instance away (spot reclaim, eviction)"
    _EDGES[(_state, TERMINATED)] = "the instance vanished from the cloud (deleted outside the " \
                                   "cluster's tools)"
del _state
EDGES: Mapping[tuple[Optional[str], str], str] = _EDGES


class IllegalTransition(ValueError):
    """A move the table does not list: a bug in the caller, never a user's mistake."""


@dataclass(frozen=True)
class Step:
    state: str
    time: float
    reason: str


@dataclass(frozen=True)
class NodeLifecycle:
    """One node's (or one refused launch's) state, when it was entered, and how it got there."""

    node_id: str
    state: Optional[str] = None  # None: not created yet
    since: float = 0.0
    history: tuple[Step, ...] = ()

    def age(self, now: float) -> float:
        return max(0.0, now - self.since)


def can_move(state: Optional[str], to: str) -> bool:
    return (state, to) in EDGES


def transition(node: NodeLifecycle, to: str, reason: str, now: float) -> NodeLifecycle:
    """`node` in state `to` since `now`, the step added to its history; refuses an illegal edge."""
    if not can_move(node.state, to):
        raise IllegalTransition(f"node {node.node_id}: {node.state or 'new'} -> {to} is not a "
                                f"legal move ({reason})")
    return dataclasses.replace(node, state=to, since=now,
                               history=node.history + (Step(to, now, reason),))


def tags_of(node: NodeLifecycle) -> dict[str, str]:
    """The tags that carry the node's state on its instance."""
    return {T.TAG_NODE_STATUS: node.state or "", T.TAG_STATE_SINCE: str(int(node.since))}


def from_tags(node_id: str, tags: Mapping[str, str],
              history: tuple[Step, ...] = ()) -> NodeLifecycle:
    """The node as its instance's tags describe it (a state unknown to this version, e.g. written
    by an older one, reads as ALLOCATED: the instance exists, nothing is known of its setup)."""
    state = tags.get(T.TAG_NODE_STATUS)
    try:
        since = float(tags.get(T.TAG_STATE_SINCE, "0"))
    except ValueError:
        since = 0.0
    if state not in STATES or state in FINAL:
        state = ALLOCATED
    return NodeLifecycle(node_id, state, since, history)


def record(provider, node: NodeLifecycle, to: str, reason: str, now: float) -> NodeLifecycle:
    """`transition`, then written to the instance's tags (not for the history-only states)."""
    moved = transition(node, to, reason, now)
    if to not in FINAL:
        provider.set_tags(node.node_id, tags_of(moved))
    return moved


def current(provider, node_id: str) -> NodeLifecycle:
    """The node as its tags say now."""
    return from_tags(node_id, provider.node_tags(node_id))
