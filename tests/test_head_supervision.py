"""The head's supervisor: a killed GCS, agent or autoscaler is back within seconds, and a GCS
restart loses neither the driver's running work nor named actors nor the KV table."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import yaml

import runtime as ray
from runtime import node, rpc, supervisor
from runtime.exceptions import RuntimeClusterError
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc
from tests.conftest import free_port, pid_alive, wait_for

IP = "127.0.8.1"
RESTART_S = 5.0  # a killed process is running again (and answering) within this


@pytest.fixture
def head(runtime_home, tmp_path):
    """A head with an autoscaler (a local-provider config that never launches anything), and
    this process's driver connected to it."""
    config = yaml.safe_load((Path(__file__).parent.parent / "cluster-configs/local.yaml").read_text())
    config["provider"]["state_dir"] = str(tmp_path / "local-state")
    config["max_workers"] = 0
    config["available_node_types"]["cpu-2"]["max_workers"] = 0
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(config))
    session = node.start_head(free_port(IP), {"CPU": 2}, ip=IP, node_id="head",
                              autoscaling_config=str(tmp_path / "cluster.yaml"))
    try:
        ray.init(address=session.gcs_address)
        yield session
    finally:
        ray.shutdown()
        node.stop_node(grace_s=3)
    assert not [p for p in _all_pids(session) if pid_alive(p)]


def _all_pids(session) -> set:
    return set(session.pids.values()) | set(supervisor.child_pids(node.runtime_dir()).values())


def _kill(name: str) -> tuple:
    """kill -9 a child of the supervisor; returns (its pid, when)."""
    pid = supervisor.child_pids(node.runtime_dir())[name]
    os.kill(pid, signal.SIGKILL)
    return pid, time.monotonic()


def _restarted(name: str, old_pid: int) -> int:
    def new_pid():
        pid = supervisor.child_pids(node.runtime_dir()).get(name)
        return pid if pid and pid != old_pid and pid_alive(pid) else None
    return wait_for(new_pid, RESTART_S, f"{name} to be started again")


def _gcs(session):
    return pb_grpc.GcsStub(rpc.make_channel(session.gcs_address, ray.client.connected().token))


@ray.remote
def slow_square(x, seconds):
    time.sleep(seconds)
    return x * x


@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return self.n


def test_a_killed_gcs_comes_back_with_its_tables_and_the_driver_carries_on(head):
    counter = Counter.options(name="counter", lifetime="detached").remote()
    assert ray.get(counter.add.remote()) == 1
    gcs = _gcs(head)
    gcs.KvPut(pb.KvRequest(key="answer", value=b"42", overwrite=True), timeout=10)
    running = slow_square.remote(7, 4)  # runs across the GCS's restart
    time.sleep(1)

    old, killed_at = _kill("gcs")
    _restarted("gcs", old)
    assert gcs.KvGet(pb.KvRequest(key="answer"), timeout=10).value == b"42"  # retried until up
    print(f"GCS answering again {time.monotonic() - killed_at:.2f}s after kill -9")
    assert time.monotonic() - killed_at < RESTART_S

    assert ray.get(running, timeout=30) == 49
    found = ray.get_actor("counter")
    assert ray.get(found.add.remote()) == 2 and ray.get(counter.add.remote()) == 3
    assert ray.get(slow_square.remote(3, 0)) == 9  # new work, its function stored anew
    assert [n["Alive"] for n in ray.nodes()] == [True]


def test_a_killed_agent_or_autoscaler_is_started_again(head):
    old, killed_at = _kill("agent")
    _restarted("agent", old)
    gcs = _gcs(head)
    wait_for(lambda: any(n.node_id == "head" for n in
                         gcs.GetClusterState(pb.Empty(), timeout=5).nodes), RESTART_S,
             "the restarted agent to register")
    print(f"agent registered again {time.monotonic() - killed_at:.2f}s after kill -9")
    time.sleep(1)  # the driver's channel to it connects again (calls to agents fail fast)
    assert ray.get(slow_square.remote(5, 0), timeout=30) == 25  # at the same address

    old, killed_at = _kill("autoscaler")
    _restarted("autoscaler", old)
    print(f"autoscaler running again {time.monotonic() - killed_at:.2f}s after kill -9")
    log = (node.runtime_dir() / "logs" / "supervisor.log").read_text()
    assert "agent exited with signal SIGKILL" in log and "autoscaler exited with signal SIGKILL" in log


def test_a_killed_supervisor_takes_its_children_and_stop_finds_the_rest(head):
    children = supervisor.child_pids(node.runtime_dir())
    assert set(children) == {"gcs", "agent", "autoscaler"}
    os.kill(head.pids["supervisor"], signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(p) for p in children.values()), 10,
             "the children to end with their supervisor")
    assert sorted(node.stop_node()) == ["agent", "autoscaler", "gcs"]
    assert not [p for p in _all_pids(head) if pid_alive(p)]


def test_a_gcs_that_cannot_start_fails_the_start_with_its_log(runtime_home):
    with socket.socket() as taken:
        taken.bind((IP, 0))
        taken.listen()
        with pytest.raises(RuntimeClusterError, match="gcs exited with code 1"):
            node.start_head(taken.getsockname()[1], {"CPU": 1}, ip=IP, node_id="head")
    started = re.findall(r"started \w+ \(pid (\d+)\)", (runtime_home / "logs/supervisor.log").read_text())
    assert started and not [p for p in started if pid_alive(int(p))]
