"""A node that dies: its forwarded work runs again elsewhere, its objects are rebuilt from lineage
or reported lost with a clear error. Real node agents, killed with SIGKILL."""

from __future__ import annotations

import os
import time

import pytest

import runtime as ray
from runtime import node
from runtime.node_agent import FORWARDED_CHECK_S
from runtime.util.state import list_actors
from tests.conftest import free_port, pid_alive, wait_for

HEAD_IP, DOOMED_IP, SPARE_IP = "127.0.7.1", "127.0.7.2", "127.0.7.3"


@pytest.fixture
def cluster(runtime_home, monkeypatch):
    """A head with 1 CPU and a 2-CPU worker that the test kills; start_spare() adds another 2-CPU
    worker. The GCS declares a silent node dead after 2 s."""
    monkeypatch.setenv("CLUSTER_NODE_TIMEOUT_S", "2")
    sessions = []

    def start(name, ip, resources):
        monkeypatch.setenv("CLUSTER_RUNTIME_DIR", str(runtime_home / name))
        if name == "head":
            session = node.start_head(free_port(ip), resources, ip=ip, node_id=name)
        else:
            session = node.start_worker(sessions[0].gcs_address, resources, "cpu-2", ip=ip,
                                        node_id=name, token=token())
        sessions.append(session)
        monkeypatch.setenv("CLUSTER_RUNTIME_DIR", str(runtime_home / "head"))
        return session

    def token():
        return (runtime_home / "head" / "token").read_text()

    try:
        start("head", HEAD_IP, {"CPU": 1})
        doomed = start("doomed", DOOMED_IP, {"CPU": 2})
        ray.init(address=sessions[0].gcs_address)
        wait_for(lambda: len(ray.nodes()) == 2, 10, "both nodes")
        time.sleep(0.7)  # a heartbeat more: the head's view has the worker
        yield doomed, lambda: start("spare", SPARE_IP, {"CPU": 2})
    finally:
        ray.shutdown()
        for session in sessions:
            node._kill_all(session.pids, grace_s=3)
    assert not [p for s in sessions for p in s.pids.values() if pid_alive(p)]


def _kill(session) -> None:
    node._kill_all(session.pids, grace_s=0)


@ray.remote(num_cpus=2)
def where(marker=None):
    if marker:
        open(marker, "a").close()
        time.sleep(3)
    return os.environ["CLUSTER_AGENT_ADDRESS"].split(":")[0]


@pytest.mark.parametrize("grace_s", [0, 3], ids=["killed", "stopped"])
def test_work_running_on_a_dead_node_runs_again_elsewhere(cluster, tmp_path, grace_s):
    """Killed, or stopped as the autoscaler stops a node: a stopping agent kills its workers but
    reports no failure for their tasks, so the node that forwarded them runs them again."""
    doomed, start_spare = cluster
    marker = tmp_path / "started"
    ref = where.remote(str(marker))  # 2 CPUs: only the doomed worker holds it
    wait_for(marker.exists, 20, "the task to start on the doomed node")
    node._kill_all(doomed.pids, grace_s=grace_s)
    start_spare()
    assert ray.get(ref, timeout=60) == SPARE_IP


@ray.remote(num_cpus=2)
def made_where(marker):
    open(marker, "a").close()
    return os.environ["CLUSTER_AGENT_ADDRESS"].split(":")[0]


def test_a_result_lost_with_its_node_is_rebuilt_from_lineage(cluster, tmp_path):
    doomed, start_spare = cluster
    marker = tmp_path / "ran"
    ref = made_where.remote(str(marker))
    wait_for(marker.exists, 20, "the task to run on the doomed node")
    # its result is stored there and nowhere else (nothing asked for it yet), and the head has
    # since seen it exist, so only lineage can bring it back
    time.sleep(FORWARDED_CHECK_S + 1)
    _kill(doomed)
    start_spare()
    assert ray.get(ref, timeout=60) == SPARE_IP  # its task ran again on the spare


def test_an_object_that_cannot_be_rebuilt_is_a_clear_error(cluster):
    doomed, start_spare = cluster

    @ray.remote(num_cpus=2)
    def put_there():
        return [ray.put("made on the doomed node")]  # a put has no lineage

    [inner] = ray.get(put_there.remote(), timeout=30)
    _kill(doomed)
    with pytest.raises(ray.ObjectLostError, match="was lost: the node holding it died"):
        ray.get(inner, timeout=30)


@ray.remote(num_cpus=2)
class Where:
    """Needs 2 CPUs: only a worker holds it. Counts its calls, so a restart shows."""

    def __init__(self):
        self.calls = 0

    def node(self, marker=None):
        self.calls += 1
        if marker:
            open(marker, "a").close()
            time.sleep(3)
        return os.environ["CLUSTER_AGENT_ADDRESS"].split(":")[0], self.calls


def test_an_actor_whose_node_dies_restarts_on_another_node_and_its_call_is_retried(cluster,
                                                                                    tmp_path):
    doomed, start_spare = cluster
    actor = Where.options(name="where", max_restarts=1, max_task_retries=1).remote()
    assert ray.get(actor.node.remote(), timeout=30) == (DOOMED_IP, 1)
    marker = tmp_path / "started"
    in_flight = actor.node.remote(str(marker))
    wait_for(marker.exists, 20, "the call to start on the doomed node")
    _kill(doomed)
    start_spare()
    assert ray.get(in_flight, timeout=60) == (SPARE_IP, 1)  # __init__ ran again there
    again = ray.get_actor("where")  # the name survived the restart
    assert ray.get(again.node.remote(), timeout=30) == (SPARE_IP, 2)
    [record] = [a for a in list_actors() if a["name"] == "where"]
    assert (record["state"], record["num_restarts"]) == ("ALIVE", 1)


def test_an_actor_without_restarts_dies_with_its_node_and_calls_say_so(cluster, tmp_path):
    doomed, _ = cluster
    actor = Where.remote()
    marker = tmp_path / "started"
    in_flight = actor.node.remote(str(marker))
    wait_for(marker.exists, 20, "the call to start on the doomed node")
    _kill(doomed)
    with pytest.raises(ray.ActorDiedError, match="its node doomed died"):
        ray.get(in_flight, timeout=30)
    with pytest.raises(ray.ActorDiedError, match="its node doomed died"):
        ray.get(actor.node.remote(), timeout=30)
