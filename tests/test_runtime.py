"""The runtime with real processes: a GCS and node agents on different loopback addresses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import grpc
import pytest

import runtime as ray
from runtime import node, rpc
from runtime.exceptions import RuntimeClusterError
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc
from tests.conftest import pid_alive, two_node_cluster, wait_for

HEAD_IP, WORKER_IP = "127.0.3.1", "127.0.3.2"


@pytest.fixture
def two_nodes(runtime_home, monkeypatch):
    """A head offering 1 CPU and a worker offering 2 CPUs and a custom resource."""
    with two_node_cluster(monkeypatch, runtime_home, HEAD_IP, WORKER_IP, {"CPU": 1}) as cluster:
        yield cluster


@ray.remote(num_cpus=0)
def where() -> str:
    return os.environ["CLUSTER_AGENT_ADDRESS"].split(":")[0]


@ray.remote
def add(a, b):
    return a + b


def test_refs_as_arguments_chain_through_tasks(two_nodes):
    a = add.remote(1, 2)
    b = add.remote(a, 10)
    c = add.remote(a, b)
    assert ray.get([a, b, c]) == [3, 13, 16]


def test_task_runs_where_its_resources_are(two_nodes):
    assert ray.get(where.options(resources={"special": 1}).remote()) == WORKER_IP
    assert ray.get(where.options(num_cpus=2).remote()) == WORKER_IP


def test_tasks_beyond_local_capacity_spill_to_the_other_node(two_nodes):
    @ray.remote(num_cpus=1)
    def slow_where():
        time.sleep(1.0)
        return os.environ["CLUSTER_AGENT_ADDRESS"].split(":")[0]

    # the driver submits to the head, which has 1 CPU: the other tasks must go to the worker
    assert set(ray.get([slow_where.remote() for _ in range(3)])) == {HEAD_IP, WORKER_IP}


def test_cluster_resources_sum_all_nodes(two_nodes):
    assert ray.cluster_resources() == {"CPU": 3.0, "special": 1.0}
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {HEAD_IP, WORKER_IP}


def test_large_object_moves_between_nodes_in_chunks(two_nodes):
    @ray.remote(resources={"special": 1})
    def blob(n):
        return bytes(range(256)) * (n // 256)

    data = ray.get(blob.remote(5 * 1024 * 1024))  # 5 MiB: several 1 MiB chunks
    assert len(data) == 5 * 1024 * 1024 and data[:3] == b"\x00\x01\x02"


def test_put_object_is_an_argument_on_another_node(two_nodes):
    ref = ray.put(list(range(1000)))

    @ray.remote(resources={"special": 1})
    def total(xs):
        return sum(xs)

    assert ray.get(total.remote(ref)) == sum(range(1000))


def test_unplaceable_work_is_demand_by_shape_in_the_gcs(two_nodes):
    head, token = two_nodes
    refs = [where.options(num_cpus=8).remote() for _ in range(50)]
    gcs = pb_grpc.GcsStub(rpc.make_channel(head.gcs_address, token))
    deadline = time.monotonic() + 10
    demand = []
    while time.monotonic() < deadline:
        demand = [(dict(d.shape), d.count) for d in gcs.GetClusterState(pb.Empty()).demand]
        if demand and demand[0][1] == 50:  # heartbeats may have carried a part of the queue so far
            break
        time.sleep(0.1)
    assert demand == [({"CPU": 8.0}, 50)]  # one entry for 50 queued tasks: aggregated by shape
    with pytest.raises(ray.GetTimeoutError):
        ray.get(refs[0], timeout=0.5)


def test_task_error_reaches_get_with_remote_traceback(two_nodes):
    @ray.remote
    def fail():
        raise ValueError("bad input 42")

    with pytest.raises(ray.RayTaskError) as info:
        ray.get(fail.remote())
    assert isinstance(info.value.cause, ValueError)
    assert "bad input 42" in info.value.traceback_str and "raise ValueError" in info.value.traceback_str
    assert ray.get(add.remote(1, 1)) == 2  # the cluster keeps serving


def test_actor_method_error_quotes_the_line_in_the_users_file(two_nodes):
    class Model:  # a local class: the worker cannot import it, so it is pickled by value
        def step(self):
            raise RuntimeError("loss is nan")

    model = ray.remote(Model).remote()
    with pytest.raises(ray.RayTaskError) as info:
        ray.get(model.step.remote(), timeout=30)
    raise_line = Model.step.__code__.co_firstlineno + 1
    assert (f'File "{__file__}", line {raise_line}, in step\n'
            f'    raise RuntimeError("loss is nan")\n') in info.value.traceback_str


DRIVER_SCRIPT = """\
import os, sys, time
import runtime as ray

@ray.remote
def train(script):
    while os.path.exists(script):  # as on a node without the script
        time.sleep(0.05)
    raise ValueError("diverged at step 7")

ray.init(address=sys.argv[1])
failed = train.remote(__file__)
os.remove(__file__)
try:
    ray.get(failed, timeout=60)
except ray.RayTaskError as error:
    print(error.traceback_str)
"""


PRINTING_SCRIPT = """\
import sys
import runtime as ray

@ray.remote(resources={"special": 1})
def report(step):
    print(f"step {step} on the worker node")
    print("a warning", file=sys.stderr)
    return step

@ray.remote
class Trainer:
    def fit(self):
        print("fitting")

ray.init(address=sys.argv[1], log_to_driver=sys.argv[2] == "on")
print(ray.get(report.remote(1)))
trainer = Trainer.remote()
ray.get(trainer.fit.remote())
print("done")
"""


def test_what_tasks_and_actors_print_shows_on_the_driver_with_their_name_and_pid(two_nodes,
                                                                                 tmp_path):
    head, token = two_nodes
    script = tmp_path / "printing.py"
    script.write_text(PRINTING_SCRIPT)

    def run(log_to_driver: str):
        done = subprocess.run([sys.executable, str(script), head.gcs_address, log_to_driver],
                              env=dict(os.environ, CLUSTER_AUTH_TOKEN=token),
                              capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr
        return done

    shown = run("on")
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("(report pid=") and lines[0].endswith(") step 1 on the worker node")
    assert lines[1] == "1" and lines[-1] == "done"
    assert any(line.startswith("(Trainer pid=") and line.endswith(") fitting") for line in lines)
    assert "(report pid=" in shown.stderr and ") a warning" in shown.stderr
    quiet = run("off")
    assert quiet.stdout.splitlines() == ["1", "done"] and "a warning" not in quiet.stderr


def test_task_error_of_a_driver_script_quotes_the_script(two_nodes, tmp_path):
    """`python train.py`: its functions are pickled by value, and a worker on another node has no
    copy of the file (here the script deletes itself before its task fails)."""
    head, token = two_nodes
    script = tmp_path / "train.py"
    script.write_text(DRIVER_SCRIPT)
    run = subprocess.run([sys.executable, str(script), head.gcs_address], cwd=tmp_path,
                         env=dict(os.environ, CLUSTER_AUTH_TOKEN=token),
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr
    raise_line = 1 + DRIVER_SCRIPT.splitlines().index('    raise ValueError("diverged at step 7")')
    assert (f'File "{script}", line {raise_line}, in train\n'
            f'    raise ValueError("diverged at step 7")\n') in run.stdout


def test_error_propagates_to_dependent_task(two_nodes):
    @ray.remote
    def fail():
        raise KeyError("missing")

    with pytest.raises(ray.RayTaskError) as info:
        ray.get(add.remote(fail.remote(), 1))
    assert isinstance(info.value.cause, KeyError)


def test_killed_worker_fails_its_task_with_a_clear_error(two_nodes):
    @ray.remote
    def die():
        os._exit(3)

    with pytest.raises(ray.WorkerCrashedError, match="exited with code 3"):
        ray.get(die.remote())


def test_misuse_gives_clear_errors(two_nodes):
    with pytest.raises(TypeError, match=r"use .*\.remote"):
        add(1, 2)
    with pytest.raises(TypeError, match="ObjectRef"):
        ray.get(42)


def test_ports_reject_calls_without_the_token(two_nodes):
    head, token = two_nodes
    for wrong in (None, "0" * 64):
        gcs = pb_grpc.GcsStub(rpc.make_channel(head.gcs_address, wrong))
        with pytest.raises(grpc.RpcError) as info:
            gcs.GetClusterState(pb.Empty(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        agent = pb_grpc.NodeAgentStub(rpc.make_channel(head.agent_address, wrong))
        with pytest.raises(grpc.RpcError) as info:
            agent.GetObjects(pb.GetObjectsRequest(object_ids=["x"], timeout=0), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_processes_bind_to_the_node_address_only(two_nodes):
    head, _ = two_nodes
    port = int(head.gcs_address.rsplit(":", 1)[1])
    with socket.socket() as s:  # the GCS is not on 127.0.0.1, only on the head's address
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_init_without_address_starts_and_stops_a_private_cluster(runtime_home):
    info = ray.init(num_cpus=2)
    try:
        assert ray.get(add.remote(2, 3)) == 5
        assert ray.cluster_resources()["CPU"] == 2.0
        pids = list(ray.client.connected().local_node.pids.values())
    finally:
        ray.shutdown()
    assert info["gcs_address"].startswith("127.0.0.1:")
    assert not [p for p in pids if pid_alive(p)]


def test_cpu_work_avoids_gpu_nodes_while_a_cpu_node_has_room(two_nodes, runtime_home, monkeypatch):
    head, token = two_nodes
    monkeypatch.setenv("CLUSTER_RUNTIME_DIR", str(runtime_home / "gpu"))
    gpu = node.start_worker(head.gcs_address, {"CPU": 4, "GPU": 1}, "gpu", ip="127.0.3.3",
                            node_id="gpu", token=token)
    try:
        deadline = time.monotonic() + 10
        while len(ray.nodes()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2 * 0.3)  # one more heartbeat, so the head's view has the GPU node too
        # 2 CPUs fit the CPU worker (2 free) and the GPU node (4 free): the CPU worker wins
        assert ray.get(where.options(num_cpus=2).remote()) == WORKER_IP
        assert ray.get(where.options(num_gpus=1).remote()) == "127.0.3.3"
    finally:
        node._kill_all(gpu.pids, grace_s=3)


def test_joining_with_a_wrong_token_is_refused_in_one_line(two_nodes, runtime_home, monkeypatch):
    head, _ = two_nodes
    monkeypatch.setenv("CLUSTER_RUNTIME_DIR", str(runtime_home / "intruder"))
    with pytest.raises(RuntimeClusterError, match="refused this node's cluster token") as info:
        node.start_worker(head.gcs_address, {"CPU": 1}, ip="127.0.3.4", node_id="x", token="f" * 64)
    assert "\n" not in str(info.value)
    assert not (runtime_home / "intruder" / "session.json").exists()


def test_bad_calls_are_clear_errors_and_the_cluster_keeps_serving(two_nodes, monkeypatch, capfd):
    import threading

    with pytest.raises(TypeError, match=r"add\.remote\(\): an argument cannot be serialized"):
        add.remote(threading.Lock(), 1)
    with pytest.raises(TypeError, match="cannot be called directly"):
        add(1, 2)
    with pytest.raises(TypeError, match="get\\(\\) takes an ObjectRef"):
        ray.get(5)

    @ray.remote
    def returns_a_lock():
        return threading.Lock()

    with pytest.raises(ray.RayTaskError, match="cannot pickle"):
        ray.get(returns_a_lock.remote(), timeout=30)

    monkeypatch.setattr(ray.objects_api, "WARN_AFTER_S", 0.5)
    never = ray.remote(num_gpus=4)(lambda: 1).remote()  # no node has GPUs, and no autoscaler
    with pytest.raises(ray.GetTimeoutError):
        ray.get(never, timeout=2)
    assert "Warning: work needing {CPU: 1, GPU: 4} cannot be scheduled" in capfd.readouterr().err
    assert ray.get(add.remote(1, 2), timeout=30) == 3


def test_a_task_waiting_for_a_large_argument_goes_to_the_node_holding_it(two_nodes, tmp_path):
    import numpy as np

    from runtime.util import state

    @ray.remote(num_cpus=2)
    def make_large():  # 2 CPUs: runs on the worker, and its 16 MB result stays there
        return np.ones(2 << 20)

    @ray.remote(num_cpus=1)
    def total(array):
        return float(array.sum()), os.environ["CLUSTER_AGENT_ADDRESS"].split(":")[0]

    @ray.remote(num_cpus=1)
    def hold_head(path):  # keeps the head's only CPU busy, so `total` cannot run there
        while not os.path.exists(path):
            time.sleep(0.05)

    def holders(ref):
        return sorted(o["node_id"] for o in state.list_objects() if o["object_id"] == ref.hex())

    release = tmp_path / "release"
    blocker = hold_head.remote(str(release))
    large = make_large.remote()
    wait_for(lambda: holders(large) == ["worker"], 30, "the large result on the worker")
    wait_for(lambda: ray.available_resources().get("CPU") == 2.0, 10, "the worker's CPUs free")
    time.sleep(1.5)  # heartbeats more: the head sees the worker's room too
    assert ray.get(total.remote(large), timeout=30) == (float(2 << 20), WORKER_IP)
    assert holders(large) == ["worker"]  # the task went to the data; the data never moved
    release.touch()
    ray.get(blocker, timeout=30)
