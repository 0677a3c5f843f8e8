"""Ray's task and actor options, checked and turned into what a TaskSpec carries.

Every option Ray accepts is either honoured here or refused with a NotImplementedError naming it;
none is silently ignored. Names unknown to Ray are a TypeError, as a misspelt keyword would be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Optional

import cloudpickle

from runtime import client as client_state
from runtime.placement import in_bundle, scheduled_need
from runtime.util.scheduling_strategies import (NodeAffinitySchedulingStrategy,
                                                PlacementGroupSchedulingStrategy)

# Options shared by tasks and actors, then each one's own (Ray's names).
_COMMON = ("num_cpus", "num_gpus", "resources", "memory", "accelerator_type", "name", "runtime_env",
           "scheduling_strategy", "placement_group", "placement_group_bundle_index",
           "placement_group_capture_child_tasks")
TASK_OPTIONS = _COMMON + ("num_returns", "max_retries", "retry_exceptions", "max_calls")
ACTOR_OPTIONS = _COMMON + ("namespace", "lifetime", "max_restarts", "max_task_retries",
                           "get_if_exists", "max_concurrency", "concurrency_groups")
# Options Ray has that this runtime does not: accepted only at the value that changes nothing.
_NOT_IMPLEMENTED = {"object_store_memory": (None,),
                    "label_selector": (None,), "_metadata": (None,),
                    "max_pending_calls": (None, -1),
                    "enable_task_events": (None, True), "_labels": (None,)}
STREAMING, DYNAMIC = "streaming", "dynamic"
ACCELERATOR_SLIVER = 0.001


def check(options: Mapping, allowed: tuple, what: str) -> dict:
    """The options without the inert ones; TypeError for a name Ray does not have, and
    NotImplementedError for one it has that is not supported here."""
    kept = {}
    for option, value in options.items():
        if option in _NOT_IMPLEMENTED:
            if value not in _NOT_IMPLEMENTED[option]:
                raise NotImplementedError(f"{what}: the option {option}={value!r} is not supported "
                                          f"by this runtime")
            continue
        if option not in allowed:
            raise TypeError(f"{what}: unknown option {option!r}")
        kept[option] = value
    if "runtime_env" in kept:
        client_state.check_runtime_env(kept["runtime_env"], what)
    groups = kept.get("concurrency_groups") or {}
    if not isinstance(groups, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in groups.items()):
        raise ValueError(f"{what}: concurrency_groups must map group names to positive ints")
    return kept


def resource_need(options: Mapping, default_cpus=None) -> dict:
    """The resources asked for ({"CPU": 1, "memory": bytes, ...}), zero amounts left out. An
    accelerator_type asks for a sliver of the node's `accelerator_type:<model>` resource, as in
    Ray, so the work lands on a node with that GPU model."""
    num_cpus = default_cpus if options.get("num_cpus") is None else options["num_cpus"]
    num_gpus, memory = options.get("num_gpus"), options.get("memory")
    resources = dict(options.get("resources") or {})
    if options.get("accelerator_type"):
        resources[f"accelerator_type:{options['accelerator_type']}"] = ACCELERATOR_SLIVER
    for name, amount in (("num_cpus", num_cpus), ("num_gpus", num_gpus), ("memory", memory)):
        if amount is not None and amount < 0:
            raise ValueError(f"{name} must not be negative, got {amount}")
    need = {"CPU": float(num_cpus or 0), "GPU": float(num_gpus or 0),
            "memory": float(memory or 0), **{k: float(v) for k, v in resources.items()}}
    for name in ("CPU", "GPU", "memory"):
        if name in resources:
            raise ValueError(f"use num_cpus/num_gpus/memory instead of resources={{{name!r}: ...}}")
    return {k: v for k, v in need.items() if v > 0}


@dataclass
class Placement:
    """Where work may run: the resources it asks for (renamed into a placement group's bundle
    when scheduled there) and an optional node it is tied to."""

    need: dict
    node_affinity: str = ""
    soft: bool = False
    capture_placement_group: str = ""  # the group the work it submits goes into by default


def placement(need: dict, options: Mapping) -> Placement:
    """Apply `scheduling_strategy` (or the placement-group options) to `need`. With no strategy
    and no group given, work submitted by a task that captures its child tasks goes into that
    task's group, as in Ray."""
    strategy = options.get("scheduling_strategy")
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return Placement(need, node_affinity=strategy.node_id, soft=bool(strategy.soft))
    captured = client_state.task_context.capture_placement_group
    if strategy is None and options.get("placement_group") is None and captured:
        return Placement(in_bundle(need, captured, -1), capture_placement_group=captured)
    grouped = scheduled_need(need, options)
    pg = strategy.placement_group if isinstance(strategy, PlacementGroupSchedulingStrategy) else \
        options.get("placement_group")
    capture = (strategy.placement_group_capture_child_tasks
               if isinstance(strategy, PlacementGroupSchedulingStrategy)
               else options.get("placement_group_capture_child_tasks"))
    return Placement(grouped, capture_placement_group=pg.id if capture and pg not in (None, "default")
                     else "")


def retry_exception_types(retry_exceptions) -> tuple[bool, bytes]:
    """Ray's retry_exceptions: a bool, or a list of exception classes that alone are retried."""
    if isinstance(retry_exceptions, bool):
        return retry_exceptions, b""
    classes = tuple(retry_exceptions)
    if not classes or not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise TypeError("retry_exceptions must be a bool or a list of exception classes")
    return True, cloudpickle.dumps(classes)


def runtime_env_json(options: Mapping, what: str) -> str:
    """The work's runtime_env: the one of the job (init) or parent task, updated by its own
    option, as in Ray: the option's keys win, and env_vars are merged (the option's win)."""
    inherited = client_state.connected().runtime_env
    own = options.get("runtime_env")
    if own is None:
        return inherited
    parent = json.loads(inherited) if inherited else {}  # (`own` was checked with the options)
    merged = {**parent, **own}
    if "env_vars" in parent or "env_vars" in own:
        merged["env_vars"] = {**parent.get("env_vars", {}), **(own.get("env_vars") or {})}
    return client_state.check_runtime_env(merged, what)


def num_returns_kind(num_returns, is_generator: bool) -> tuple[int, str]:
    """(fixed count, generator kind): a generator function streams by default, as in Ray."""
    if num_returns is None:
        return (1, STREAMING) if is_generator else (1, "")
    if num_returns in (STREAMING, DYNAMIC):
        return 1, num_returns
    if not isinstance(num_returns, int) or num_returns < 0:
        raise ValueError(f"num_returns must be a non-negative int, 'streaming' or 'dynamic', "
                         f"got {num_returns!r}")
    return num_returns, ""


def method_options(method, is_generator: bool) -> Optional[str]:
    """An actor method's default num_returns, as text for the actor record (None: 1)."""
    num_returns = getattr(method, "__ray_num_returns__", None)
    if num_returns is None and is_generator:
        return STREAMING
    return None if num_returns is None else str(num_returns)
