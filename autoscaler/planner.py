"""The autoscaler's planner: a pure function from cluster state and demand to a plan.

No I/O, no clock, no randomness: the reconciler passes `now` and what it read from the provider and
the GCS, and acts on the returned Plan; the same input always gives the same plan. Demand arrives
aggregated by shape (shape -> count) and is handled in counts, so planning 100k queued tasks costs
the same as planning 10 of the same shapes.

Stages, in order; launches of each stage use up the launch allowance (per-type max_workers, global
max_workers, upscaling speed) left by the ones before:
  1. config: terminate workers whose type left the config or that exceed a max_workers;
  2. min_workers: launch each type's deficit;
  3. request_resources: the bundles must fit the cluster's total capacity; launch for the rest;
  4. STRICT_SPREAD placement groups: one bundle per distinct node;
  5. tasks, actors and the other placement groups: pack onto free capacity, launch for the rest;
  6. scale-down: terminate idle workers that no stage above placed anything on.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from autoscaler.binpack import (
    Bin,
    Expander,
    Limits,
    Shape,
    add_shapes,
    fits,
    pack,
    shape_label,
    shape_order,
    take,
    to_shape,
)

Resources = Mapping[str, float]

# The upscaling-speed cap never goes below this many nodes launching at once, so a cluster with no
# running workers (upscaling_speed * 0 = 0) can still grow. Ray uses the same floor.
UPSCALING_INITIAL_NODES = 5


@dataclass(frozen=True)
class NodeTypeSpec:
    name: str
    resources: Resources
    min_workers: int
    max_workers: int


@dataclass(frozen=True)
class PlannerConfig:
    node_types: Mapping[str, NodeTypeSpec]  # includes the head type
    head_node_type: str
    max_workers: int  # global cap on workers; the head is not counted
    upscaling_speed: float  # launching at once <= max(5, ceil(speed * running workers))
    idle_timeout_s: float


@dataclass(frozen=True)
class NodeState:
    node_id: str
    node_type: str
    is_head: bool
    total: Resources
    available: Resources  # for launching nodes = total
    idle_since: float | None  # since when the node has run nothing; None = busy
    launching: bool = False  # created but not yet registered with the runtime


@dataclass(frozen=True)
class ResourceDemand:
    shape: Resources
    count: int  # queued tasks/actors each needing `shape`


@dataclass(frozen=True)
class PlacementGroupDemand:
    bundles: tuple[Resources, ...]
    strategy: str  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD


@dataclass(frozen=True)
class Demand:
    tasks: tuple[ResourceDemand, ...] = ()
    placement_groups: tuple[PlacementGroupDemand, ...] = ()
    requested: tuple[Resources, ...] = ()  # request_resources(): a floor on total capacity


@dataclass(frozen=True)
class Plan:
    launch: Mapping[str, int]  # node type -> new nodes to create now
    terminate: tuple[tuple[str, str], ...]  # (node_id, reason)
    infeasible: tuple[Resources, ...]  # shapes no node type can ever hold; nothing is launched
    # Shape label ('CPU=2, GPU=1') -> number of tasks, actors, placement-group bundles and requested
    # bundles that neither free capacity nor this plan's launches hold, because a max_workers or the
    # upscaling speed stopped the launch. Infeasible shapes are not counted here.
    unfulfilled: Mapping[str, int] = field(default_factory=dict)


def plan(
    config: PlannerConfig,
    nodes: Sequence[NodeState],
    pending_launches: Mapping[str, int],
    demand: Demand,
    now: float,
) -> Plan:
    """Decide which nodes to launch and terminate now; see the module docstring for the stages."""
    pending = Counter({t: n for t, n in pending_launches.items() if n > 0})
    nodes = sorted(nodes, key=lambda n: n.node_id)
    heads = [n for n in nodes if n.is_head]
    workers, terminate = _enforce_config(config, [n for n in nodes if not n.is_head], pending)
    counts = Counter(n.node_type for n in workers) + pending
    launchable = {n: s.resources for n, s in config.node_types.items() if s.max_workers > 0}
    expander = Expander(launchable, _limits(config, workers, pending, counts))
    wanted = _classify(demand, _can_hold(config, heads + workers))

    existing = sorted(heads + workers, key=_bin_order)
    on_the_way = pending + _launch_min_workers(config, counts, expander)
    request_bins = _bins(existing, on_the_way, config, use_total=True)
    unmet_requested, launched = _pack_and_launch(wanted.requested, request_bins, expander)
    bins = _bins(existing, on_the_way + launched, config, use_total=False)
    unmet_spread = _place_strict_spread(wanted.spread, bins, expander)
    unmet_tasks, _ = _pack_and_launch(wanted.tasks, bins, expander)

    protected = {b.node_id for b in request_bins + bins if b.used and b.node_id}
    terminate += _scale_down(config, workers, counts, protected, now)
    unmet = unmet_requested + unmet_spread + unmet_tasks
    return Plan(
        launch={t: n for t, n in sorted(expander.launched.items()) if n > 0},
        terminate=tuple(terminate),
        infeasible=tuple(dict(s) for s in sorted(wanted.infeasible, key=shape_order)),
        unfulfilled={shape_label(s): unmet[s] for s in sorted(unmet, key=shape_order)},
    )


# ---- stage 1: config constraints ---------------------------------------------------------------


def _enforce_config(
    config: PlannerConfig, workers: list[NodeState], pending: Counter
) -> tuple[list[NodeState], list[tuple[str, str]]]:
    """Terminate workers of removed types and beyond max_workers; return (kept, terminations).

    Launching nodes are never terminated (they are kept even when their type is gone); the victims
    beyond a max are idle ones first (longest idle first), then busy ones by node id.
    """
    terminate = []
    for n in workers:
        if n.node_type not in config.node_types and not n.launching:
            terminate.append((n.node_id, f"node type {n.node_type} no longer in config"))
    for name, spec in sorted(config.node_types.items()):
        of_type = [n for n in workers if n.node_type == name]
        for n in _victims(of_type, len(of_type) - spec.max_workers):
            reason = f"{len(of_type)} {name} workers > max_workers {spec.max_workers} of the type"
            terminate.append((n.node_id, reason))
    gone = {node_id for node_id, _ in terminate}
    kept = [n for n in workers if n.node_id not in gone]
    # Beyond the global max, never take a type below its min_workers.
    spare = Counter(n.node_type for n in kept) + pending
    spare.subtract({name: spec.min_workers for name, spec in config.node_types.items()})
    for n in _victims(kept, len(kept) - config.max_workers, spare):
        terminate.append(
            (n.node_id, f"{len(kept)} workers > global max_workers {config.max_workers}")
        )
    gone = {node_id for node_id, _ in terminate}
    return [n for n in workers if n.node_id not in gone], terminate


def _victims(nodes: list[NodeState], excess: int, spare: Counter | None = None) -> list[NodeState]:
    """Up to `excess` non-launching nodes, idle ones first; `spare` caps how many per type."""
    chosen = []
    for n in sorted(nodes, key=lambda n: (n.idle_since is None, n.idle_since or 0.0, n.node_id)):
        if len(chosen) >= excess:
            break
        if n.launching or (spare is not None and spare[n.node_type] <= 0):
            continue
        chosen.append(n)
        if spare is not None:
            spare[n.node_type] -= 1
    return chosen


# ---- launch limits -----------------------------------------------------------------------------


def _limits(
    config: PlannerConfig, workers: list[NodeState], pending: Counter, counts: Counter
) -> Limits:
    """Pending launches and launching nodes count against every cap, like running nodes."""
    running = sum(1 for n in workers if not n.launching)
    in_flight = len(workers) - running + sum(pending.values())
    rate = max(UPSCALING_INITIAL_NODES, math.ceil(config.upscaling_speed * running)) - in_flight
    per_type = {name: spec.max_workers - counts[name] for name, spec in config.node_types.items()}
    return Limits(per_type, config.max_workers - len(workers) - sum(pending.values()), rate)


def _launch_min_workers(config: PlannerConfig, counts: Counter, expander: Expander) -> Counter:
    """Launch each type's min_workers deficit (capped by the limits); return the launches."""
    launched = Counter()
    for name, spec in sorted(config.node_types.items()):
        n = min(spec.min_workers - counts[name], expander.limits.allowed(name))
        if n > 0:
            expander.record(name, n)
            launched[name] = n
    return launched


# ---- demand ------------------------------------------------------------------------------------


@dataclass
class _Wanted:
    """Demand in canonical shapes, split by how it is placed."""

    tasks: Counter  # tasks, actors, PACK/SPREAD bundles, STRICT_PACK groups summed to one shape
    spread: list[list[Shape]]  # STRICT_SPREAD groups: one bundle per distinct node
    requested: Counter  # request_resources bundles
    infeasible: set[Shape]


def _can_hold(config: PlannerConfig, nodes: list[NodeState]) -> Callable[[Shape], bool]:
    """Whether some node type (any max_workers) or some existing node could ever hold a shape."""
    totals = [spec.resources for spec in config.node_types.values()] + [n.total for n in nodes]
    return functools.cache(lambda shape: any(fits(total, shape) for total in totals))


def _classify(demand: Demand, can_hold: Callable[[Shape], bool]) -> _Wanted:
    """Canonicalise shapes and set aside infeasible ones (a whole group when one bundle is).

    PACK and SPREAD are best-effort in the runtime, so their bundles are ordinary demand: launching
    extra nodes only to spread them would waste. STRICT_PACK becomes one task of the summed shape.
    """
    wanted = _Wanted(Counter(), [], Counter(), set())
    for d in demand.tasks:
        wanted.tasks[to_shape(d.shape)] += d.count
    for pg in demand.placement_groups:
        bundles = [s for s in map(to_shape, pg.bundles) if s]
        if pg.strategy == "STRICT_PACK" and bundles:
            bundles = [add_shapes(bundles)]
        bad = {s for s in bundles if not can_hold(s)}
        if bad:
            wanted.infeasible |= bad
        elif pg.strategy == "STRICT_SPREAD":
            wanted.spread.append(bundles)
        else:
            wanted.tasks.update(bundles)
    wanted.requested.update(to_shape(r) for r in demand.requested)
    for counter in (wanted.tasks, wanted.requested):
        for shape in [s for s in counter if not s or counter[s] <= 0 or not can_hold(s)]:
            if shape and counter[shape] > 0:
                wanted.infeasible.add(shape)
            del counter[shape]
    return wanted


# ---- placement ---------------------------------------------------------------------------------


def _bin_order(n: NodeState) -> tuple:
    """Fill the head and busy nodes first, then idle ones (shortest idle first), then launching
    ones, so that demand keeps alive as few idle nodes as it can."""
    if n.launching:
        return (2, 0.0, n.node_id)
    if n.is_head or n.idle_since is None:
        return (0, 0.0, n.node_id)
    return (1, -n.idle_since, n.node_id)


def _bins(
    existing: list[NodeState], on_the_way: Counter, config: PlannerConfig, use_total: bool
) -> list[Bin]:
    """Bins for existing nodes (free or total capacity), then nodes on the way (full capacity)."""
    bins = [
        Bin(dict(n.total if use_total or n.launching else n.available), n.node_type, n.node_id)
        for n in existing
    ]
    for name, count in sorted(on_the_way.items()):
        if name in config.node_types:
            bins += [Bin(dict(config.node_types[name].resources), name) for _ in range(count)]
    return bins


def _pack_and_launch(
    demand: Counter, bins: list[Bin], expander: Expander
) -> tuple[Counter, Counter]:
    """Pack onto bins, launch for the rest; return (unmet demand, launches)."""
    left, groups = expander.launch_for(pack(demand, bins))
    launched = Counter()
    for name, n, _ in groups:
        launched[name] += n
    return left, launched


def _place_strict_spread(groups: list[list[Shape]], bins: list[Bin], expander: Expander) -> Counter:
    """Each bundle of a group on a distinct node: a free bin not yet used by the group, else a new
    node (which joins `bins` with its leftover capacity). Return the bundles left unplaced."""
    unmet = Counter()
    for bundles in groups:
        taken: set[int] = set()
        for shape in sorted(bundles, key=shape_order):
            i = next(
                (i for i, b in enumerate(bins) if i not in taken and fits(b.avail, shape)), None
            )
            if i is not None:
                take(bins[i].avail, shape, 1)
                bins[i].used = True
                taken.add(i)
                continue
            left, launched = expander.launch_for({shape: 1})
            if left:
                unmet[shape] += 1
                continue
            name, _, leftover = launched[0]
            taken.add(len(bins))
            bins.append(Bin(leftover, name))
    return unmet


# ---- stage 6: scale-down -----------------------------------------------------------------------


def _scale_down(
    config: PlannerConfig,
    workers: list[NodeState],
    counts: Counter,
    protected: set[str],
    now: float,
) -> list[tuple[str, str]]:
    """Terminate workers idle for idle_timeout_s that hold nothing placed above, longest idle first,
    keeping each type at min_workers (the ones idle the shortest stay)."""
    spare = Counter(counts)
    spare.subtract({name: spec.min_workers for name, spec in config.node_types.items()})
    idle = [
        n
        for n in workers
        if not n.launching
        and n.idle_since is not None
        and now - n.idle_since >= config.idle_timeout_s
        and n.node_id not in protected
    ]
    terminate = []
    for n in sorted(idle, key=lambda n: (n.idle_since, n.node_id)):
        if spare[n.node_type] > 0:
            spare[n.node_type] -= 1
            idle_s = now - n.idle_since
            terminate.append(
                (n.node_id, f"idle for {idle_s:.0f}s >= idle timeout {config.idle_timeout_s:g}s")
            )
    return terminate
