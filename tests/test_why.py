"""`cluster why`: the one paragraph for each reason work waits, from a status document."""

from __future__ import annotations

import pytest

from autoscaler.why import explain, explain_task, parse_shape
from runtime.generated import runtime_pb2 as pb

NOW = 5000.0


def status(nodes=(), backoffs=(), unfulfilled=None, max_workers=10):
    return {"time": NOW, "max_workers": max_workers, "unfulfilled": unfulfilled or {},
            "node_types": {"cpu": {"resources": {"CPU": 4}, "min_workers": 0, "max_workers": 2},
                           "gpu": {"resources": {"CPU": 8, "GPU": 1}, "min_workers": 0,
                                   "max_workers": 1}},
            "nodes": list(nodes), "backoffs": list(backoffs)}


def row(node_id, node_type, state, since=NOW - 30, stage=""):
    return {"node_id": node_id, "node_type": node_type, "kind": "worker", "state": state,
            "since": since, "stage": stage}


def live(node_id, available, draining=False):
    return pb.NodeInfo(node_id=node_id, available=available, draining=draining)


@pytest.mark.parametrize("text,shape", [("CPU=2,GPU=1", {"CPU": 2, "GPU": 1}),
                                        ("{CPU: 2, memory: 1e9}", {"CPU": 2, "memory": 1e9}),
                                        ("{CPU: 2, custom/x: 0.5}", {"CPU": 2, "custom/x": 0.5}),
                                        ("a1b2c3", None), ("", None)])
def test_shapes_are_told_from_task_ids(text, shape):
    assert parse_shape(text) == shape


def test_a_node_with_room_means_the_work_starts_soon():
    text = explain({"CPU": 2}, status(), [live("w1", {"CPU": 3}), live("w2", {"CPU": 8}, True)], NOW)
    assert text.startswith("Node w1 has room for {CPU: 2}")


def test_a_shape_no_type_can_hold_is_infeasible_and_the_types_are_listed():
    text = explain({"GPU": 2}, status(), [], NOW)
    assert "No node type can hold {GPU: 2}" in text and "gpu: {CPU: 8, GPU: 1}" in text


def test_a_node_on_its_way_is_named_with_its_state_age_and_stage():
    text = explain({"GPU": 1}, status([row("g1", "gpu", "installing", stage="setting-up")]), [], NOW)
    assert "Node g1 of type gpu is on its way" in text and "installing for 30s, setting-up" in text


def test_a_backed_off_type_says_until_when_and_why():
    backoff = {"node_type": "gpu", "kind": "quota", "until": NOW + 600, "failures": 1,
               "message": "VcpuLimitExceeded; raise the quota"}
    text = explain({"GPU": 1}, status(backoffs=[backoff]), [], NOW)
    assert "gpu is not launched until" in text and "quota error (VcpuLimitExceeded" in text


def test_types_at_their_max_and_a_cluster_at_its_max_are_told_apart():
    full = status([row("c1", "cpu", "running"), row("c2", "cpu", "running")])
    assert "cpu is at its max_workers (2)" in explain({"CPU": 4}, full, [], NOW)
    capped = status([row("c1", "cpu", "running")], max_workers=1)
    assert "the cluster is at max_workers (1)" in explain({"CPU": 4}, capped, [], NOW)


def test_the_upscaling_speed_and_the_next_round_are_the_last_reasons():
    assert "upscaling speed" in explain({"CPU": 1}, status(unfulfilled={"CPU=1": 3}), [], NOW)
    assert "next round launches one" in explain({"CPU": 1}, status(), [], NOW)


def test_no_published_status_points_at_the_autoscaler():
    assert "has published no status" in explain({"CPU": 1}, None, [], NOW)


def test_a_task_is_explained_by_its_state_and_then_by_its_resources():
    running = pb.TaskEvent(task_id="t1", name="f", state="RUNNING", node_id="w1")
    assert "is RUNNING on node w1: it is not waiting" in explain_task(running, status(), [], NOW)
    waiting = pb.TaskEvent(task_id="t2", name="g", state="PENDING_ARGS_AVAIL")
    assert "waits for its arguments" in explain_task(waiting, status(), [], NOW)
    queued = pb.TaskEvent(task_id="t3", name="h", state="PENDING_NODE_ASSIGNMENT",
                          required_resources={"GPU": 4})
    text = explain_task(queued, status(), [], NOW)
    assert text.startswith("Task t3 (h) waits for a node: No node type can hold {GPU: 4}")
