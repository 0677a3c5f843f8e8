"""Tests for the pure planner: one table or one function per rule it promises."""

from __future__ import annotations

import random
import time

import pytest

from autoscaler.binpack import fits, to_shape
from autoscaler.planner import (
    Demand,
    NodeState,
    NodeTypeSpec,
    PlacementGroupDemand,
    PlannerConfig,
    ResourceDemand,
    plan,
)

NOW = 1_000.0
TYPES = {
    "head": NodeTypeSpec("head", {"CPU": 2}, 0, 0),
    "cpu4": NodeTypeSpec("cpu4", {"CPU": 4}, 0, 50),
    "cpu16": NodeTypeSpec("cpu16", {"CPU": 16}, 0, 50),
    "gpu1": NodeTypeSpec("gpu1", {"CPU": 8, "GPU": 1, "accelerator_type:T4": 1}, 0, 50),
    "gpu4": NodeTypeSpec("gpu4", {"CPU": 32, "GPU": 4, "accelerator_type:A10G": 1}, 0, 50),
    "special": NodeTypeSpec("special", {"CPU": 4, "special": 2}, 0, 50),
}


def config(
    types=("cpu4",), overrides=None, max_workers=100, upscaling_speed=1.0, idle_timeout_s=60.0
):
    """The head plus `types`; `overrides` replaces fields of a type: {name: {field: value}}."""
    specs = {"head": TYPES["head"]}
    for name in types:
        fields = {**vars(TYPES[name]), **(overrides or {}).get(name, {})}
        specs[name] = NodeTypeSpec(**fields)
    return PlannerConfig(specs, "head", max_workers, upscaling_speed, idle_timeout_s)


def node(node_id, node_type="cpu4", available=None, idle_since=None, launching=False, head=False):
    total = dict(TYPES[node_type].resources) if node_type in TYPES else {"CPU": 4}
    available = total if available is None else available
    return NodeState(node_id, node_type, head, total, available, idle_since, launching)


HEAD = node("head", "head", available={"CPU": 0}, head=True)


def busy(n):
    """`n` fully used workers (running, no free capacity)."""
    return [node(f"b{i:04d}", available={}) for i in range(n)]


def tasks(*pairs):
    return Demand(tasks=tuple(ResourceDemand(shape, count) for shape, count in pairs))


def run(cfg, nodes=(), demand=Demand(), pending=None):
    return plan(cfg, [HEAD, *nodes], pending or {}, demand, NOW)


# ---- packing onto free capacity ------------------------------------------------------------------


@pytest.mark.parametrize(
    "available, demand, launch",
    [
        ({"CPU": 3}, [({"CPU": 1}, 3)], {}),
        ({"CPU": 3}, [({"CPU": 1}, 4)], {"cpu4": 1}),
        ({"CPU": 3}, [({"CPU": 2}, 2)], {"cpu4": 1}),
        ({"CPU": 0.3}, [({"CPU": 0.1}, 3)], {}),
        ({"CPU": 4}, [({"CPU": 2}, 3), ({"CPU": 1}, 2)], {"cpu4": 1}),
        ({"CPU": 0}, [({"CPU": 2}, 3), ({"CPU": 1}, 2)], {"cpu4": 2}),
        ({"CPU": 0}, [({"CPU": 3}, 2), ({"CPU": 1}, 2)], {"cpu4": 2}),
        ({"CPU": 4}, [({"CPU": 1, "GPU": 0}, 4)], {}),
    ],
    ids=[
        "fits",
        "one-more",
        "shape-too-big-for-rest",
        "float",
        "mixed-fits",
        "mixed-launch",
        "big-first",
        "zero-need-key",
    ],
)
def test_packs_free_capacity_before_launching(available, demand, launch):
    result = run(config(), [node("w1", available=available)], tasks(*demand))
    assert result.launch == launch


@pytest.mark.parametrize(
    "nodes, pending",
    [
        ([node("w1", launching=True)], {}),
        ([], {"cpu4": 1}),
        ([node("w1", launching=True)], {"cpu4": 1}),
    ],
    ids=["launching-node", "pending-launch", "both"],
)
def test_capacity_on_the_way_counts(nodes, pending):
    demand = tasks(({"CPU": 1}, 4 * (len(nodes) + sum(pending.values()))))
    assert run(config(), nodes, demand, pending).launch == {}
    more = tasks(({"CPU": 1}, 4 * (len(nodes) + sum(pending.values())) + 1))
    assert run(config(), nodes, more, pending).launch == {"cpu4": 1}


# ---- choosing node types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "types, demand, launch",
    [
        (("cpu4", "cpu16"), [({"CPU": 4}, 1)], {"cpu4": 1}),
        (("cpu4", "cpu16"), [({"CPU": 1}, 2)], {"cpu4": 1}),
        (("cpu4", "cpu16"), [({"CPU": 1}, 16)], {"cpu16": 1}),
        (("cpu4", "cpu16"), [({"CPU": 1}, 20)], {"cpu16": 1, "cpu4": 1}),
        (("cpu4", "cpu16"), [({"CPU": 8}, 2)], {"cpu16": 1}),
        (("cpu4", "special"), [({"CPU": 1}, 4)], {"cpu4": 1}),
        (("cpu4", "special"), [({"CPU": 1, "special": 1}, 3)], {"special": 2}),
    ],
    ids=[
        "4cpu-on-cpu4",
        "small-on-cpu4",
        "16-on-cpu16",
        "20-mixed",
        "8cpu-on-cpu16",
        "custom-type-spared",
        "custom-resource",
    ],
)
def test_least_waste_type_choice(types, demand, launch):
    cfg = config(types, upscaling_speed=10)
    assert run(cfg, demand=tasks(*demand)).launch == launch


@pytest.mark.parametrize(
    "overrides, demand, launch, unfulfilled",
    [
        ({}, [({"CPU": 1}, 8)], {"cpu4": 2}, {}),
        ({}, [({"CPU": 4}, 1)], {"cpu4": 1}, {}),
        ({"cpu4": {"max_workers": 1}}, [({"CPU": 1}, 8)], {"cpu4": 1}, {"CPU=1": 4}),
        ({"cpu4": {"max_workers": 0}}, [({"CPU": 1}, 8)], {"gpu1": 1}, {}),
        ({}, [({"CPU": 6}, 1)], {"gpu1": 1}, {}),
    ],
    ids=[
        "cpu-work-on-cpu-type",
        "exact-fit",
        "cpu-type-capped",
        "no-cpu-type-enabled",
        "last-resort",
    ],
)
def test_gpu_types_avoided_for_cpu_work(overrides, demand, launch, unfulfilled):
    result = run(config(("cpu4", "gpu1"), overrides), demand=tasks(*demand))
    assert (result.launch, result.unfulfilled) == (launch, unfulfilled)


@pytest.mark.parametrize(
    "demand, launch",
    [
        ([({"GPU": 1, "CPU": 4}, 2)], {"gpu1": 2}),
        ([({"GPU": 1, "CPU": 4}, 8)], {"gpu4": 2}),
        ([({"GPU": 1, "accelerator_type:A10G": 0.001}, 1)], {"gpu4": 1}),
        ([({"GPU": 1, "CPU": 4}, 1), ({"CPU": 1}, 4)], {"gpu1": 1}),
        ([({"GPU": 1, "CPU": 4}, 1), ({"CPU": 1}, 8)], {"gpu1": 1, "cpu4": 1}),
    ],
    ids=[
        "small-gpu",
        "many-gpus",
        "accelerator-type",
        "cpu-rides-along",
        "cpu-overflow-to-cpu-type",
    ],
)
def test_gpu_demand_launches_gpu_types(demand, launch):
    cfg = config(("cpu4", "cpu16", "gpu1", "gpu4"))
    assert run(cfg, demand=tasks(*demand)).launch == launch


# ---- limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type_max, global_max, existing, pending, launch, unmet",
    [
        (50, 100, 0, 0, 5, 15),
        (3, 100, 0, 0, 3, 17),
        (3, 100, 2, 0, 1, 19),
        (3, 100, 1, 1, 1, 18),
        (50, 2, 0, 0, 2, 18),
        (50, 4, 2, 1, 1, 18),
    ],
    ids=[
        "rate-only",
        "type-max",
        "type-max-existing",
        "type-max-pending",
        "global-max",
        "global-max-counts-all",
    ],
)
def test_max_workers(type_max, global_max, existing, pending, launch, unmet):
    cfg = config(overrides={"cpu4": {"max_workers": type_max}}, max_workers=global_max)
    demand = tasks(({"CPU": 4}, 20))
    result = run(cfg, busy(existing), demand, {"cpu4": pending} if pending else None)
    assert result.launch == ({"cpu4": launch} if launch else {})
    assert result.unfulfilled == {"CPU=4": unmet}


@pytest.mark.parametrize(
    "speed, running, launching, pending, launch",
    [
        (1.0, 0, 0, 0, 5),
        (1.0, 10, 0, 0, 10),
        (0.5, 30, 0, 0, 15),
        (0.5, 3, 0, 0, 5),
        (1.0, 10, 3, 2, 5),
        (1.0, 0, 3, 2, 0),
    ],
    ids=[
        "floor-no-workers",
        "speed-1",
        "speed-half",
        "floor-wins",
        "in-flight-counts",
        "floor-used-up",
    ],
)
def test_upscaling_speed(speed, running, launching, pending, launch):
    nodes = busy(running) + [node(f"l{i}", launching=True) for i in range(launching)]
    # Enough demand to need 100 more nodes on top of what is on the way.
    demand = tasks(({"CPU": 4}, 100 + launching + pending))
    cfg = config(overrides={"cpu4": {"max_workers": 500}}, max_workers=500, upscaling_speed=speed)
    result = run(cfg, nodes, demand, {"cpu4": pending} if pending else None)
    assert result.launch == ({"cpu4": launch} if launch else {})


def test_min_workers_launch_without_demand_and_count_first():
    cfg = config(("cpu4", "cpu16"), {"cpu4": {"min_workers": 3}})
    assert run(cfg).launch == {"cpu4": 3}
    assert run(cfg, [node("w1")], pending={"cpu4": 1}).launch == {"cpu4": 1}
    # The min_workers nodes hold 3 tasks; the rate cap (5) leaves 2 launches, the bigger type first.
    result = run(cfg, demand=tasks(({"CPU": 4}, 10)))
    assert result.launch == {"cpu4": 4, "cpu16": 1}
    assert result.unfulfilled == {"CPU=4": 2}


@pytest.mark.parametrize(
    "idle_since, min_workers, terminated",
    [
        ({"w1": 0.0, "w2": 100.0}, 0, ["w1", "w2"]),
        ({"w1": 0.0, "w2": 100.0}, 1, ["w1"]),
        ({"w1": 0.0, "w2": 100.0}, 2, []),
        ({"w1": 500.0, "w2": 500.0}, 1, ["w1"]),
    ],
    ids=["no-min", "keep-shortest-idle", "keep-all", "tie-by-node-id"],
)
def test_min_workers_protect_from_scale_down(idle_since, min_workers, terminated):
    cfg = config(overrides={"cpu4": {"min_workers": min_workers}})
    nodes = [node(i, idle_since=t) for i, t in idle_since.items()]
    result = run(cfg, nodes)
    assert [i for i, _ in result.terminate] == terminated
    assert result.launch == {}


# ---- scale-down ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "idle_since, launching, terminate",
    [
        (NOW - 62, False, (("w1", "idle for 62s >= idle timeout 60s"),)),
        (NOW - 60, False, (("w1", "idle for 60s >= idle timeout 60s"),)),
        (NOW - 59, False, ()),
        (None, False, ()),
        (NOW - 600, True, ()),
    ],
    ids=["idle-past-timeout", "idle-at-timeout", "not-yet-idle-long-enough", "busy", "launching"],
)
def test_idle_timeout(idle_since, launching, terminate):
    assert (
        run(config(), [node("w1", idle_since=idle_since, launching=launching)]).terminate
        == terminate
    )


def test_head_never_terminated_or_counted():
    head = node("h", "head", idle_since=0.0, head=True)
    cfg = config(max_workers=1)
    result = plan(cfg, [head, node("w1")], {}, tasks(({"CPU": 4}, 2)), NOW)
    assert result.terminate == ()
    assert result.launch == {}  # the head does not count, but the one worker fills global max 1
    result = plan(cfg, [head], {}, tasks(({"CPU": 4}, 2)), NOW)
    assert result.launch == {"cpu4": 1}


def test_head_capacity_holds_demand():
    head = node("h", "head", head=True)
    assert plan(config(), [head], {}, tasks(({"CPU": 1}, 2)), NOW).launch == {}


def test_idle_node_kept_when_pending_demand_was_placed_on_it():
    nodes = [
        node("busy", available={}),
        node("old", idle_since=0.0),
        node("older", idle_since=-10.0),
    ]
    result = run(config(), nodes, tasks(({"CPU": 2}, 2)))
    # Demand fills the shortest-idle node; the other one goes.
    assert result.launch == {}
    assert [i for i, _ in result.terminate] == ["older"]


@pytest.mark.parametrize(
    "nodes, reasons",
    [
        (
            [node("x1", "old-type", idle_since=None)],
            {"x1": "node type old-type no longer in config"},
        ),
        ([node("x1", "old-type", launching=True)], {}),
        (
            [node("w1"), node("w2", idle_since=990.0), node("w3", idle_since=900.0)],
            {"w3": "3 cpu4 workers > max_workers 2 of the type"},
        ),
        (
            [node("w1", launching=True), node("w2", launching=True), node("w3")],
            {"w3": "3 cpu4 workers > max_workers 2 of the type"},
        ),
    ],
    ids=[
        "unknown-type",
        "unknown-type-launching-kept",
        "over-type-max-idle-first",
        "over-type-max-not-launching",
    ],
)
def test_config_enforcement(nodes, reasons):
    cfg = config(overrides={"cpu4": {"max_workers": 2}})
    assert dict(run(cfg, nodes).terminate) == reasons


def test_global_max_enforced_above_min_workers():
    cfg = config(("cpu4", "cpu16"), {"cpu4": {"min_workers": 2}}, max_workers=2)
    nodes = [node("a", idle_since=900.0), node("b", idle_since=900.0), node("c", "cpu16")]
    result = run(cfg, nodes)
    assert result.terminate == (("c", "3 workers > global max_workers 2"),)


# ---- infeasible ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, infeasible, unfulfilled",
    [
        ({"CPU": 64}, ({"CPU": 64},), {}),
        ({"GPU": 1}, ({"GPU": 1},), {}),
        ({"CPU": 1, "tpu": 1}, ({"CPU": 1, "tpu": 1},), {}),
        ({"CPU": 1, "special": 1}, (), {"CPU=1, special=1": 3}),
    ],
    ids=["too-big", "no-gpu-type", "unknown-resource", "type-disabled-is-not-infeasible"],
)
def test_infeasible_shapes_never_launch(shape, infeasible, unfulfilled):
    cfg = config(("cpu4", "special"), {"special": {"max_workers": 0}})
    result = run(cfg, demand=tasks((shape, 3)))
    assert (result.launch, result.infeasible, result.unfulfilled) == ({}, infeasible, unfulfilled)


# ---- placement groups ----------------------------------------------------------------------------


def pgs(*groups):
    return Demand(placement_groups=tuple(PlacementGroupDemand(tuple(b), s) for b, s in groups))


@pytest.mark.parametrize(
    "nodes, bundles, launch",
    [
        ([], [{"CPU": 1}] * 3, {"cpu4": 3}),
        ([node("w1")], [{"CPU": 1}] * 3, {"cpu4": 2}),
        ([node("w1"), node("w2"), node("w3")], [{"CPU": 1}] * 3, {}),
        ([node("w1", available={})], [{"CPU": 4}, {"CPU": 1}], {"cpu4": 2}),
    ],
    ids=["all-new", "one-free-node", "enough-nodes", "full-node-not-used"],
)
def test_strict_spread_needs_distinct_nodes(nodes, bundles, launch):
    result = run(config(upscaling_speed=10), nodes, pgs((bundles, "STRICT_SPREAD")))
    assert result.launch == launch


def test_strict_spread_leftover_holds_other_demand():
    demand = Demand(
        tasks=(ResourceDemand({"CPU": 3}, 2),),
        placement_groups=(PlacementGroupDemand(({"CPU": 1},) * 2, "STRICT_SPREAD"),),
    )
    assert run(config(), demand=demand).launch == {"cpu4": 2}


@pytest.mark.parametrize(
    "bundles, launch, infeasible",
    [
        ([{"CPU": 2}, {"CPU": 2}], {"cpu4": 1}, ()),
        ([{"CPU": 2}] * 3, {}, ({"CPU": 6},)),
        ([{"CPU": 2}, {"CPU": 9}], {}, ({"CPU": 11},)),
    ],
    ids=["fits-one-node", "sum-exceeds-every-type", "one-bundle-too-big"],
)
def test_strict_pack(bundles, launch, infeasible):
    result = run(config(), demand=pgs((bundles, "STRICT_PACK")))
    assert (result.launch, result.infeasible) == (launch, infeasible)


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD"])
def test_pack_and_spread_are_ordinary_demand(strategy):
    result = run(config(), demand=pgs(([{"CPU": 2}] * 3, strategy)))
    assert result.launch == {"cpu4": 2}


def test_pg_with_infeasible_bundle_launches_nothing():
    result = run(config(), demand=pgs(([{"CPU": 1}, {"CPU": 9}], "STRICT_SPREAD")))
    assert (result.launch, result.infeasible) == ({}, ({"CPU": 9},))


# ---- request_resources ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nodes, requested, launch",
    [
        ([], [{"CPU": 4}] * 3, {"cpu4": 3}),
        (busy(1), [{"CPU": 4}] * 3, {"cpu4": 2}),
        ([], [{"CPU": 1}] * 6, {"cpu4": 1}),
        (busy(3), [{"CPU": 4}] * 3, {}),
    ],
    ids=["empty-cluster", "busy-node-counts", "head-counts", "already-enough"],
)
def test_request_resources_is_a_floor_on_total_capacity(nodes, requested, launch):
    result = run(config(), nodes, Demand(requested=tuple(requested)))
    assert result.launch == launch


def test_request_resources_launches_are_capacity_for_tasks():
    demand = Demand(tasks=(ResourceDemand({"CPU": 4}, 2),), requested=({"CPU": 4},) * 2)
    assert run(config(), demand=demand).launch == {"cpu4": 2}


def test_request_resources_protects_idle_nodes():
    nodes = [node("w1", idle_since=0.0), node("w2", idle_since=0.0), node("w3", idle_since=0.0)]
    result = run(config(), nodes, Demand(requested=({"CPU": 4},) * 2))
    assert [i for i, _ in result.terminate] == ["w3"]
    assert run(config(), nodes, Demand(requested=({"CPU": 64},))).infeasible == ({"CPU": 64},)


@pytest.mark.parametrize(
    "demand, unfulfilled",
    [
        (Demand(requested=({"CPU": 4},) * 3), {"CPU=4": 1}),
        (pgs(([{"CPU": 1}] * 3, "STRICT_SPREAD")), {"CPU=1": 1}),
        (tasks(({"CPU": 4}, 3)), {"CPU=4": 1}),
    ],
    ids=["requested", "strict-spread", "tasks"],
)
def test_unfulfilled_counts_what_the_caps_left_out(demand, unfulfilled):
    result = run(config(overrides={"cpu4": {"max_workers": 2}}), demand=demand)
    assert (result.launch, result.unfulfilled) == ({"cpu4": 2}, unfulfilled)


# ---- scale and determinism -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "per_task, count, max_workers, launch",
    [
        ({"CPU": 1}, 100_000, 1000, 1000 - 10),
        ({"CPU": 1}, 100_000, 100_000, 25_000),
        ({"CPU": 3}, 100_000, 100_000, 100_000 - 10),
        ({"CPU": 2}, 99_999, 100_000, 50_000),
    ],
    ids=["capped-at-max", "uncapped", "one-per-node", "odd-count-rounds-up"],
)
def test_100k_homogeneous_tasks(per_task, count, max_workers, launch):
    cfg = config(
        overrides={"cpu4": {"max_workers": max_workers}},
        max_workers=max_workers,
        upscaling_speed=1e6,
    )
    start = time.perf_counter()
    result = run(cfg, busy(10), tasks((per_task, count)))
    assert time.perf_counter() - start < 0.5
    assert result.launch == {"cpu4": launch}


def test_deterministic_whatever_the_input_order():
    cfg = config(("cpu4", "cpu16", "gpu1", "gpu4", "special"), upscaling_speed=5)
    states = [({}, None), (None, 990.0), (None, 0.0)]  # busy, idle a while, idle past the timeout
    nodes = [node(f"w{i}", ("cpu4", "cpu16")[i % 2], *states[i % 3]) for i in range(30)]
    demand = Demand(
        tasks=tuple(
            ResourceDemand(s, c) for s, c in [({"CPU": 1}, 50), ({"CPU": 2}, 7), ({"GPU": 1}, 3)]
        ),
        placement_groups=(PlacementGroupDemand(({"CPU": 2},) * 3, "STRICT_SPREAD"),),
        requested=({"CPU": 16},) * 4,
    )
    first = run(cfg, nodes, demand)
    shuffled = list(nodes)
    random.Random(7).shuffle(shuffled)
    assert run(cfg, shuffled, demand) == first
    assert first.launch and first.terminate


@pytest.mark.parametrize(
    "avail, shape, count",
    [
        ({"CPU": 4}, {"CPU": 1}, 4),
        ({"CPU": 0.3}, {"CPU": 0.1}, 3),
        ({"CPU": 4}, {"CPU": 1, "GPU": 1}, 0),
        ({"CPU": 8, "GPU": 1}, {"CPU": 1, "GPU": 0.5}, 2),
    ],
    ids=["whole", "float-dust", "missing-key", "min-over-resources"],
)
def test_fits_counts(avail, shape, count):
    assert fits(avail, to_shape(shape)) == count
