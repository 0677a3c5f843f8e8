"""The state API and `cluster list`: what a user sees of tasks, actors, nodes and placement groups."""

from __future__ import annotations

import os
import subprocess

import pytest

import runtime as ray
from runtime import node
from runtime.util import state
from tests.conftest import CLUSTER, clear_cluster_env, free_port, wait_for

IP = "127.0.6.1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node cluster started as `cluster start --head` would, so `cluster list` finds it."""
    with pytest.MonkeyPatch.context() as mp:
        clear_cluster_env(mp)
        mp.setenv("CLUSTER_RUNTIME_DIR", str(tmp_path_factory.mktemp("rt")))
        head = node.start_head(free_port(IP), {"CPU": 2}, ip=IP, node_id="head")
        try:
            ray.init(address=head.gcs_address)
            yield head
        finally:
            ray.shutdown()
            node._kill_all(head.pids, grace_s=3)


@ray.remote(num_cpus=0)
def fails():
    raise ValueError("bad input")


@ray.remote(num_cpus=0)
def waits_for(path):
    while not os.path.exists(path):
        pass
    return "done"


@ray.remote(num_cpus=0)
def quick():
    return 1


@ray.remote(resources={"unobtainium": 1})
def never_placed():
    return 1


@ray.remote
class Tracker:
    def pid(self):
        return os.getpid()


def _task(name_part: str, wanted_state: str):
    tasks = [t for t in state.list_tasks() if name_part in t["name"] and t["state"] == wanted_state]
    return tasks[0] if tasks else None


def test_tasks_show_running_finished_and_failed_with_the_error_type(cluster, tmp_path):
    release = tmp_path / "release"
    running = waits_for.remote(str(release))
    with pytest.raises(ray.RayTaskError):
        ray.get(fails.remote(), timeout=30)
    task = wait_for(lambda: _task("waits_for", "RUNNING"), 10, "the running task in the table")
    assert task["worker_pid"] and task["type"] == "NORMAL_TASK"
    failed = wait_for(lambda: _task("fails", "FAILED"), 10, "the failed task in the table")
    assert failed["error_type"] == "ValueError"
    release.touch()
    ray.get(running, timeout=30)
    wait_for(lambda: _task("waits_for", "FINISHED"), 10, "the task to show as finished")
    assert all(t["state"] == "FAILED" for t in state.list_tasks(state="FAILED"))


def test_a_task_no_node_can_run_shows_what_it_needs_and_cluster_why_says_why(cluster):
    ref = never_placed.remote()
    task = wait_for(lambda: _task("never_placed", "PENDING_NODE_ASSIGNMENT"), 10, "pending task")
    assert task["required_resources"] == {"CPU": 1.0, "unobtainium": 1.0}
    why = subprocess.run([CLUSTER, "why", task["task_id"][:12]], capture_output=True, text=True,
                         timeout=60)
    assert why.returncode == 0, why.stderr
    assert "waits for a node: No node has room for {CPU: 1, unobtainium: 1}" in why.stdout
    ray.cancel(ref)


def test_actors_show_their_state_and_worker_pid(cluster):
    tracker = Tracker.options(name="tracker").remote()
    pid = ray.get(tracker.pid.remote(), timeout=30)
    [actor] = [a for a in state.list_actors(state="ALIVE") if a["name"] == "tracker"]
    assert actor["pid"] == pid and actor["class_name"] == "Tracker"
    ray.kill(tracker)
    wait_for(lambda: [a for a in state.list_actors(state="DEAD") if a["name"] == "tracker"], 10,
             "the killed actor to show as DEAD")


def test_cluster_list_prints_a_table_filtered_by_state(cluster):
    ray.get(quick.remote(), timeout=30)
    env = {**os.environ}

    def listing(*args):
        result = subprocess.run([CLUSTER, "list", *args], capture_output=True, text=True,
                                env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    nodes = listing("nodes")
    assert nodes.splitlines()[0].split()[:3] == ["NODE_ID", "STATE", "NODE_IP"]
    assert "ALIVE" in nodes and nodes.rstrip().endswith("(1 row)")
    def finished_listing():
        out = listing("tasks", "--state", "finished")
        return out if " quick " in out else None

    rows = wait_for(finished_listing, 10, "a finished task in the listing").splitlines()[1:-1]
    assert rows and all(row.split()[2] == "FINISHED" for row in rows)


def test_cluster_list_without_a_cluster_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env["CLUSTER_RUNTIME_DIR"] = str(tmp_path / "none")
    result = subprocess.run([CLUSTER, "list", "actors"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("Error: no cluster runs on this node")
    assert len(result.stderr.strip().splitlines()) == 1


def test_objects_show_their_size_and_where_they_are(cluster):
    import numpy as np

    small, large = ray.put(b"x" * 10), ray.put(np.zeros(1 << 20))  # 8 MB: shared memory
    objects = {o["object_id"]: o for o in state.list_objects()}
    assert objects[small.hex()]["state"] == "IN_MEMORY"
    assert objects[large.hex()]["state"] == "SHARED_MEMORY"
    assert objects[large.hex()]["object_size"] >= 8 << 20
    assert objects[large.hex()]["node_id"] == "head"
    assert [o["object_id"] for o in state.list_objects(state="SHARED_MEMORY")
            if o["object_id"] in (small.hex(), large.hex())] == [large.hex()]
