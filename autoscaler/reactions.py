"""What the autoscaler does when a launch fails: one table from the error's class to the reaction.

Providers raise typed errors (launcher.errors); `classify` names the class and `react` turns it
into a back-off on the node type, a value with an expiry that the planner sees as a cap (the type
may not grow while it lasts), so the demand moves to the next type able to hold it. Providers
already try every zone or subnet of a type inside one launch, the zones that lately had no
capacity for its machine last (launcher.providers.base.ZoneBackoff: the per-zone half of this
reaction), so a capacity error here means the whole type is short in every zone configured.

  capacity   exponential back-off per type (30 s, 60 s, ... up to 10 min), reset by a success
  quota      stop launching the type for 10 min; the message names the quota (cluster status)
  auth       stop launching every type for 15 min: every call would be refused the same way
  config     stop launching the type for 15 min: the cloud refuses its node_config as written
  transient  retry soon, with jitter, so many heads do not retry in step
  other      an error of no known class: back off like capacity

A spot type can fall back to on-demand capacity: its spot failures (preemptions, and capacity
errors of its spot launches) are counted over SPOT_WINDOW_S; at the type's
`fallback_to_on_demand_after` its launches ask for on-demand instances until the count falls back.

Pure: the clock is passed in and the jitter is derived from what failed, not drawn at random.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

from launcher import errors

CAPACITY, QUOTA, AUTH, CONFIG, TRANSIENT, OTHER = \
    "capacity", "quota", "auth", "config", "transient", "other"
ALL_TYPES = "*"  # an auth back-off stops every type

CAPACITY_BASE_S = 30.0
CAPACITY_MAX_S = 600.0
QUOTA_S = 600.0
STOP_S = 900.0
TRANSIENT_S = 5.0  # plus up to as much again of jitter

_CLASSES = ((errors.CapacityError, CAPACITY), (errors.QuotaError, QUOTA), (errors.AuthError, AUTH),
            (errors.InvalidNodeConfig, CONFIG), (errors.ConfigError, CONFIG),
            (errors.TransientError, TRANSIENT))

_ADVICE = {
    QUOTA: "raise the quota in the cloud's console (or lower this type's max_workers)",
    AUTH: "fix the head's credentials (its role or service account); launches resume in 15 min",
    CONFIG: "fix this node type's node_config and run `cluster up` again",
}


def classify(exc: BaseException) -> str:
    for kind, name in _CLASSES:
        if isinstance(exc, kind):
            return name
    return OTHER


@dataclass(frozen=True)
class Backoff:
    """Launches of `node_type` (ALL_TYPES: every type) wait until `until`."""

    node_type: str
    kind: str
    until: float
    failures: int  # launches failed in a row
    message: str  # the provider's one line, with advice where the user must act

    def active(self, now: float) -> bool:
        return now < self.until


Backoffs = Mapping[str, Backoff]  # node type (or ALL_TYPES) -> its back-off


def react(backoffs: Backoffs, node_type: str, kind: str, message: str, now: float) -> dict:
    """The back-offs after a launch of `node_type` failed with an error of class `kind`."""
    key = ALL_TYPES if kind == AUTH else node_type
    failures = backoffs[key].failures + 1 if key in backoffs else 1
    if kind in (CAPACITY, OTHER):
        wait = min(CAPACITY_MAX_S, CAPACITY_BASE_S * 2 ** (failures - 1))
    elif kind == QUOTA:
        wait = QUOTA_S
    elif kind in (AUTH, CONFIG):
        wait = STOP_S
    else:
        wait = TRANSIENT_S * (1 + _jitter(f"{node_type}/{failures}/{now}"))
    advice = _ADVICE.get(kind)
    line = f"{message}; {advice}" if advice else message
    return {**backoffs, key: Backoff(key, kind, now + wait, failures, line)}


def succeeded(backoffs: Backoffs, node_type: str) -> dict:
    """A launch of the type worked: its back-off (and the count of failures) is over."""
    return {k: b for k, b in backoffs.items() if k != node_type}


def blocked(backoffs: Backoffs, node_type: str, now: float):
    """The back-off that stops launches of `node_type` now, or None."""
    for key in (node_type, ALL_TYPES):
        backoff = backoffs.get(key)
        if backoff is not None and backoff.active(now):
            return backoff
    return None


def expired(backoffs: Backoffs, now: float) -> dict:
    """Back-offs still running; an expired one keeps its failure count only while it is recent,
    so the next failure of a type that keeps failing waits longer."""
    return {k: b for k, b in backoffs.items() if now < b.until + CAPACITY_MAX_S}


def _jitter(seed: str) -> float:
    """A number in [0, 1) that differs between heads and attempts, the same for the same input."""
    return int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16) / 2 ** 32


SPOT_WINDOW_S = 1800.0
SpotFailures = Mapping[str, tuple]  # node type -> times its spot capacity failed, oldest first


def spot_failed(failures: SpotFailures, node_type: str, now: float) -> dict:
    """`failures` with one more of `node_type` at `now`; older than the window forgotten."""
    recent = tuple(t for t in failures.get(node_type, ()) if t > now - SPOT_WINDOW_S)
    return {**failures, node_type: recent + (now,)}


def on_demand(failures: SpotFailures, node_type: str, after, now: float) -> bool:
    """Whether launches of the type ask for on-demand capacity now: it has a fallback (`after`
    spot failures) and that many happened within the window."""
    recent = [t for t in failures.get(node_type, ()) if t > now - SPOT_WINDOW_S]
    return after is not None and len(recent) >= after
