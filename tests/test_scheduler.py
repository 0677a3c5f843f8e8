"""The node agent's placement policy and resource ledger, on plain values (no processes)."""

from __future__ import annotations

from runtime.generated import runtime_pb2 as pb
from runtime.gpus import GpuSlots
from runtime.placement import in_bundle
from runtime.reporter import demand
from runtime.scheduler import HERE, MAX_HOPS, NOWHERE, NodeResources, Task, place

PG = "ab" * 16


def task(need: dict, hops: int = 0, kind=pb.TaskSpec.TASK, hold: dict | None = None,
         affinity: str = "", soft: bool = False) -> Task:
    spec = pb.TaskSpec(task_id="t", name="f", kind=kind, hops=hops, resources=need,
                       hold_resources=hold or {}, node_affinity=affinity, node_affinity_soft=soft)
    return Task(spec, dict(need), set())


def node(node_id: str, available: dict, total: dict | None = None) -> pb.NodeInfo:
    return pb.NodeInfo(node_id=node_id, available=available, total=total or available)


def test_work_that_fits_here_runs_here_and_other_work_goes_where_most_cpu_is_free():
    here = NodeResources({"CPU": 2})
    view = {"a": node("a", {"CPU": 4}), "b": node("b", {"CPU": 8})}
    assert place(task({"CPU": 2}), here, view) == HERE
    assert place(task({"CPU": 4}), here, view).node_id == "b"
    assert place(task({"CPU": 16}), here, view) is None  # waits here, as demand


def test_cpu_work_on_a_gpu_node_leaves_the_gpus_for_gpu_work():
    here = NodeResources({"CPU": 8, "GPU": 1}, gpus=GpuSlots(["0"]))
    view = {"cpu": node("cpu", {"CPU": 1}), "gpu": node("gpu", {"CPU": 8, "GPU": 1})}
    assert place(task({"CPU": 1}), here, view).node_id == "cpu"
    assert place(task({"CPU": 1, "GPU": 1}), here, view) == HERE
    elsewhere = NodeResources({"CPU": 1})
    assert place(task({"CPU": 1, "GPU": 1}), elsewhere, view).node_id == "gpu"
    assert place(task({"CPU": 2}), elsewhere, view).node_id == "gpu"  # no CPU-only node has room


def test_a_task_forwarded_too_often_stays():
    here = NodeResources({"CPU": 1})
    view = {"a": node("a", {"CPU": 4})}
    assert place(task({"CPU": 2}, hops=MAX_HOPS), here, view) is None
    assert place(task({"CPU": 2}, hops=MAX_HOPS - 1), here, view).node_id == "a"


def test_gpu_fractions_that_fragment_the_devices_leave_no_whole_gpu():
    here = NodeResources({"GPU": 2}, gpus=GpuSlots(["0", "1"]))
    first, second = here.claim({"GPU": 0.6}), here.claim({"GPU": 0.6})
    assert here.available["GPU"] > 0.79  # the count would fit one more GPU...
    assert place(task({"GPU": 0.8}), here, {}) is None  # ...but no device has 0.8 free
    actor = task({}, kind=pb.TaskSpec.ACTOR_CREATION, hold={"GPU": 0.4})
    assert place(actor, here, {}) == HERE  # an actor holds its GPUs for its life
    here.release({"GPU": 0.6}, first)
    here.release({"GPU": 0.6}, second)
    assert here.available["GPU"] == 2 and place(task({"GPU": 2}), here, {}) == HERE


def test_bundles_are_reserved_all_or_none_and_given_back():
    here = NodeResources({"CPU": 4, "GPU": 1}, gpus=GpuSlots(["0"]))
    assert not here.reserve_bundles(PG, [0, 1], [{"CPU": 2}, {"CPU": 3}])  # 5 CPUs: none taken
    assert here.available == {"CPU": 4, "GPU": 1}
    assert here.reserve_bundles(PG, [0, 1], [{"CPU": 2}, {"CPU": 1, "GPU": 1}])
    assert not here.reserve_bundles(PG, [0], [{"CPU": 1}])  # bundle 0 is here already
    assert here.available["CPU"] == 1 and here.available["GPU"] == 0
    in_group = task(in_bundle({"CPU": 2}, PG, 0))
    assert place(in_group, here, {}) == HERE
    assert place(task(in_bundle({"CPU": 2}, PG, 1)), here, {}) is None  # bundle 1 holds 1 CPU
    offered = here.return_bundles(PG, [0, 1])
    assert f"CPU_group_0_{PG}" in offered
    assert here.available == {"CPU": 4, "GPU": 1} and here.total == {"CPU": 4, "GPU": 1}
    assert place(in_group, here, {}) is None  # the group is gone from this node


def test_work_tied_to_a_node_goes_there_even_without_room_and_fails_when_it_is_gone():
    here = NodeResources({"CPU": 4})
    view = {"a": node("a", {"CPU": 0}, {"CPU": 2}), "b": node("b", {"CPU": 8})}
    assert place(task({"CPU": 1}, affinity="a"), here, view, "me").node_id == "a"  # queues there
    assert place(task({"CPU": 1}, affinity="me"), here, view, "me") == HERE
    assert place(task({"CPU": 8}, affinity="me"), here, view, "me") is None  # waits for room here
    assert place(task({"CPU": 1}, affinity="gone"), here, view, "me") is NOWHERE
    # soft: a full or missing node lets the work go where any other work would
    assert place(task({"CPU": 1}, affinity="a", soft=True), here, view, "me") == HERE
    assert place(task({"CPU": 1}, affinity="gone", soft=True), here, view, "me") == HERE
    assert place(task({"CPU": 8}, affinity="me", soft=True), here, view, "me").node_id == "b"


def test_a_task_blocked_in_get_lends_its_cpus_until_it_returns_or_ends():
    here = NodeResources({"CPU": 2, "GPU": 1})
    parent = task({"CPU": 2, "GPU": 1})
    parent.gpu_ids = here.claim(parent.need)
    assert place(task({"CPU": 1}), here, {}) is None
    assert here.lend(parent) and not here.lend(parent)  # a second get lends nothing more
    assert here.available == {"CPU": 2, "GPU": 0}  # CPUs only, as in Ray
    child = task({"CPU": 2})
    child.gpu_ids = here.claim(child.need)
    here.take_back(parent)
    assert here.available["CPU"] == 0  # one get still blocks
    here.take_back(parent)
    assert here.available["CPU"] == -2  # over-committed until the child ends
    here.release_task(child)
    assert here.lend(parent)
    here.release_task(parent)  # ends while blocked: gives back only what it still holds
    assert here.available == {"CPU": 2, "GPU": 1}


def test_demand_leaves_out_work_waiting_for_a_group_or_tied_to_a_node():
    queued = [(task({"CPU": 1}), 3), (task({"CPU": 1}, affinity="a"), 2),
              (task({"CPU": 1}, affinity="a", soft=True), 1), (task(in_bundle({"CPU": 1}, PG, 0)), 4)]
    assert [(dict(d.shape), d.count) for d in demand(queued)] == [({"CPU": 1.0}, 4)]
