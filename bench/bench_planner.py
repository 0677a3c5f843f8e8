"""Planner and reconciler wall time for 10/100/1000 existing nodes x 100/10k/100k queued tasks.

Demand is built the way the runtime builds it: one resource dict per queued task, aggregated by
shape with a Counter (timed separately), then handed to the planner as shape -> count. Node types
allow 2,000 workers each and the upscaling speed is high, so the planner really has to launch.
`reconcile` is the autoscaler's whole pure step around the plan (each node's lifecycle rules,
then the plan, then the moves and actions), on the same nodes as running instances.

Run: python bench/bench_planner.py
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter

from autoscaler import lifecycle as L
from autoscaler.planner import (
    Demand,
    NodeState,
    NodeTypeSpec,
    PlacementGroupDemand,
    PlannerConfig,
    ResourceDemand,
    plan,
)
from autoscaler.reconciler import Instance, Observations, RuntimeNode, reconcile

RUNS = 5
NOW = 10_000.0
TYPES = {
    "head": NodeTypeSpec("head", {"CPU": 8}, 0, 0),
    "cpu4": NodeTypeSpec("cpu4", {"CPU": 4}, 0, 2000),
    "cpu16": NodeTypeSpec("cpu16", {"CPU": 16}, 0, 2000),
    "gpu1": NodeTypeSpec("gpu1", {"CPU": 8, "GPU": 1, "accelerator_type:T4": 1}, 0, 2000),
    "gpu8": NodeTypeSpec("gpu8", {"CPU": 96, "GPU": 8, "accelerator_type:A100": 1}, 0, 2000),
    "special": NodeTypeSpec("special", {"CPU": 8, "special": 4}, 0, 2000),
}
CONFIG = PlannerConfig(TYPES, "head", max_workers=8000, upscaling_speed=100.0, idle_timeout_s=300.0)
TASK_SHAPES = [{"CPU": 1}, {"CPU": 2}, {"GPU": 1, "CPU": 4}, {"CPU": 1, "special": 1}]


def cluster(n: int, rng: random.Random) -> list[NodeState]:
    """The head plus n workers: busy, partly free, recently idle and long idle."""
    nodes = [NodeState("head", "head", True, TYPES["head"].resources, {"CPU": 0}, None)]
    for i in range(n):
        name = rng.choice(["cpu4", "cpu16", "gpu1", "special"])
        total = dict(TYPES[name].resources)
        state = rng.randrange(4)
        available = [{}, {"CPU": total["CPU"] / 2}, total, total][state]
        idle_since = [None, None, NOW - 30, NOW - 1000][state]
        nodes.append(NodeState(f"w{i:05d}", name, False, total, available, idle_since))
    return nodes


def queued_tasks(n: int, rng: random.Random) -> list[dict]:
    """One resource dict per queued task, as the runtime holds them before aggregating."""
    return [dict(rng.choice(TASK_SHAPES)) for _ in range(n)]


def aggregate(tasks: list[dict]) -> Demand:
    """What the GCS does: count tasks per shape."""
    counts = Counter(tuple(sorted(t.items())) for t in tasks)
    pgs = (PlacementGroupDemand(({"CPU": 2},) * 4, "STRICT_SPREAD"),)
    return Demand(
        tuple(ResourceDemand(dict(s), c) for s, c in sorted(counts.items())),
        pgs,
        ({"CPU": 16},) * 8,
    )


def observations(nodes: list[NodeState], demand: Demand) -> Observations:
    """The planner's nodes as the reconciler sees them: running instances, alive in the GCS."""
    instances = {n.node_id: Instance(n.node_id, n.node_type, n.is_head,
                                     L.NodeLifecycle(n.node_id, L.RUNNING, NOW - 3600))
                 for n in nodes}
    runtime = {n.node_id: RuntimeNode(n.node_id, n.total, n.available,
                                      NOW - n.idle_since if n.idle_since is not None else -1.0)
               for n in nodes}
    return Observations(CONFIG, instances, runtime, demand,
                        known={i: x.lifecycle for i, x in instances.items()})


def median_ms(fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(RUNS):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def main() -> None:
    print(f"planner and reconciler wall time, median of {RUNS} runs (ms)")
    print(
        f"{'nodes':>6} {'tasks':>8} {'shapes':>6} {'aggregate':>10} {'plan':>8} {'reconcile':>10}"
        f" {'launched':>9} {'terminated':>10}"
    )
    for n_nodes in (10, 100, 1000):
        for n_tasks in (100, 10_000, 100_000):
            rng = random.Random(n_nodes * 1_000_003 + n_tasks)
            nodes, tasks = cluster(n_nodes, rng), queued_tasks(n_tasks, rng)
            agg_ms, demand = median_ms(lambda: aggregate(tasks))
            plan_ms, result = median_ms(lambda: plan(CONFIG, nodes, {}, demand, NOW))
            seen = observations(nodes, demand)
            step_ms, _ = median_ms(lambda: reconcile(seen, NOW))
            launched = sum(result.launch.values())
            print(
                f"{n_nodes:>6} {n_tasks:>8} {len(demand.tasks):>6} {agg_ms:>10.2f} {plan_ms:>8.2f}"
                f" {step_ms:>10.2f} {launched:>9} {len(result.terminate):>10}"
            )


if __name__ == "__main__":
    main()
