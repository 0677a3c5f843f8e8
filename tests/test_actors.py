"""Actors, wait, num_returns and retries with `import runtime as ray`: the programs of the Ray
articles, on one module-scoped two-node cluster (a head and a worker on different loopback
addresses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import runtime as ray
from runtime import rpc
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc
from runtime.util.state import list_actors
from tests.conftest import module_two_node_cluster, pid_alive, wait_for

HEAD_IP, WORKER_IP = "127.0.3.11", "127.0.3.12"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head with 2 CPUs and a worker with 2 CPUs and a resource only it has ("special")."""
    with module_two_node_cluster(tmp_path_factory, HEAD_IP, WORKER_IP, {"CPU": 2}) as nodes:
        yield nodes


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self):
        self.value += 1
        return self.value

    def read(self):
        return self.value

    def pid(self):
        return os.getpid()

    def where(self):
        return os.environ["CLUSTER_AGENT_ADDRESS"].split(":")[0]

    def fail(self):
        raise ValueError("bad call 7")


# ---------------------------------------------------------------- the Ray articles' programs

def test_counter_actors(cluster):
    counters = [Counter.remote() for _ in range(10)]
    assert ray.get([c.increment.remote() for c in counters]) == [1] * 10
    assert ray.get([counters[0].increment.remote() for _ in range(5)]) == [2, 3, 4, 5, 6]
    assert ray.get([c.read.remote() for c in counters]) == [6] + [1] * 9
    for c in counters:
        ray.kill(c)


def test_parameter_server_with_three_workers(cluster):
    @ray.remote
    class ParameterServer:
        def __init__(self, size):
            self.params = [0.0] * size

        def get_params(self):
            return self.params

        def update_params(self, grad):
            self.params = [p + g for p, g in zip(self.params, grad)]

    @ray.remote(num_cpus=0)
    def worker(ps, index):
        for _ in range(5):
            params = ray.get(ps.get_params.remote())
            grad = [1.0 if i == index else 0.0 for i in range(len(params))]
            ps.update_params.remote(grad)
        return index

    ps = ParameterServer.remote(4)
    assert sorted(ray.get([worker.remote(ps, i) for i in range(3)])) == [0, 1, 2]
    deadline = time.monotonic() + 10
    while ray.get(ps.get_params.remote()) != [5.0, 5.0, 5.0, 0.0] and time.monotonic() < deadline:
        time.sleep(0.05)  # a worker's last push may still be on its way
    assert ray.get(ps.get_params.remote()) == [5.0, 5.0, 5.0, 0.0]


def test_dependency_graph_a_b_to_c(cluster):
    @ray.remote
    def a():
        return 1

    @ray.remote
    def b():
        return 2

    @ray.remote
    def c(x, y):
        return x + y

    assert ray.get(c.remote(a.remote(), b.remote())) == 3


def test_put_list_and_get_refs(cluster):
    refs = [ray.put(i) for i in range(10)]
    assert ray.get(refs) == list(range(10))
    big = ray.put(list(range(1000)))
    assert ray.get(big)[-1] == 999


def test_wait_with_num_returns_and_timeout(cluster):
    @ray.remote(num_cpus=0)
    def sleep_for(s):
        time.sleep(s)
        return s

    refs = [sleep_for.remote(s) for s in (2.0, 0.05, 0.1)]
    ready, not_ready = ray.wait(refs, num_returns=2, timeout=1.5)
    assert ready == [refs[1], refs[2]] and not_ready == [refs[0]]  # order of `refs` kept
    ready, not_ready = ray.wait(refs, num_returns=3, timeout=0.2)
    assert ready == [refs[1], refs[2]] and not_ready == [refs[0]]  # the timeout wins
    ready, not_ready = ray.wait(refs, num_returns=1)
    assert len(ready) == 1 and len(not_ready) == 2
    assert ray.wait(refs, num_returns=3)[0] == refs
    with pytest.raises(ValueError):
        ray.wait(refs, num_returns=4)


def test_num_returns_two(cluster):
    @ray.remote(num_returns=2)
    def pair(x):
        return x, x * 10

    first, second = pair.remote(4)
    assert ray.get([first, second]) == [4, 40]
    counter = Counter.remote(3)
    x, y = counter.pid.options(num_returns=1).remote(), counter.read.remote()
    assert ray.get(y) == 3 and isinstance(ray.get(x), int)


# ---------------------------------------------------------------- actor semantics

def test_actor_handle_passed_to_a_task(cluster):
    counter = Counter.remote()

    @ray.remote(num_cpus=0)
    def bump(c, times):
        return ray.get([c.increment.remote() for _ in range(times)])

    assert ray.get(bump.remote(counter, 3)) == [1, 2, 3]
    assert ray.get(counter.read.remote()) == 3


def test_named_actor_via_get_actor(cluster):
    Counter.options(name="shared", namespace="team").remote(100)
    handle = ray.get_actor("shared", namespace="team")
    assert ray.get(handle.increment.remote()) == 101
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="shared", namespace="team").remote()
    with pytest.raises(ValueError, match="Failed to look up actor"):
        ray.get_actor("shared")  # another namespace
    assert Counter.options(name="shared", namespace="team", get_if_exists=True).remote() == handle
    ray.kill(handle)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            ray.get_actor("shared", namespace="team")
        except ValueError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("a killed actor's name was not released")


def test_kill_fails_later_calls_with_actor_died_error(cluster):
    counter = Counter.options(name="doomed").remote()
    assert ray.get(counter.increment.remote()) == 1
    ray.kill(counter)
    with pytest.raises(ray.ActorDiedError, match=r"Counter\(doomed\).*kill"):
        ray.get(counter.increment.remote(), timeout=10)


def test_method_error_reaches_get_and_actor_keeps_serving(cluster):
    counter = Counter.remote()
    assert ray.get(counter.increment.remote()) == 1
    with pytest.raises(ray.RayTaskError, match="bad call 7") as info:
        ray.get(counter.fail.remote())
    assert isinstance(info.value.cause, ValueError)
    assert ray.get(counter.increment.remote()) == 2  # state kept


def test_missing_method_raises_attribute_error_at_call_time(cluster):
    counter = Counter.remote()
    with pytest.raises(AttributeError, match="Counter has no method 'incremnt'"):
        counter.incremnt.remote()
    with pytest.raises(TypeError, match=r"use Counter\.remote"):
        Counter()


def test_calls_on_one_handle_run_in_submission_order(cluster):
    @ray.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, x, delay=0.0):
            time.sleep(delay)
            self.items.append(x)

        def items_(self):
            return self.items

    log = Log.remote()
    slow = ray.put(0.2)
    for i in range(50):
        log.add.remote(i, slow if i == 3 else 0.0)  # an argument by ref does not reorder
    assert ray.get(log.items_.remote()) == list(range(50))


def test_sigkill_of_an_actor_worker_gives_actor_died_error(cluster):
    counter = Counter.options(name="victim").remote()
    pid = ray.get(counter.pid.remote())
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ray.ActorDiedError, match=r"Counter\(victim\) died.*exited with code -9"):
        ray.get(counter.increment.remote(), timeout=10)


def test_max_restarts_restarts_the_actor_with_fresh_state(cluster):
    counter = Counter.options(max_restarts=1).remote()
    assert ray.get([counter.increment.remote() for _ in range(3)]) == [1, 2, 3]
    pid = ray.get(counter.pid.remote())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: [a for a in list_actors(state="ALIVE")
                      if a["actor_id"] == counter._actor_id and a["num_restarts"] == 1], 10,
             "the agent to restart the actor")  # a call sent before that would die with it
    assert ray.get(counter.increment.remote(), timeout=10) == 1  # state lost, as Ray
    os.kill(ray.get(counter.pid.remote()), signal.SIGKILL)  # no restarts left
    with pytest.raises(ray.ActorDiedError):
        for _ in range(100):
            ray.get(counter.increment.remote(), timeout=10)
            time.sleep(0.05)


# ---------------------------------------------------------------- tasks: retries

def test_sigkill_of_a_task_worker_is_retried(cluster, tmp_path):
    marker = tmp_path / "attempts"

    @ray.remote(num_cpus=0)
    def crash_once(path):
        with open(path, "a") as f:
            f.write("x")
        if len(open(path).read()) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return "survived"

    assert ray.get(crash_once.remote(str(marker)), timeout=30) == "survived"
    assert marker.read_text() == "xx"


def test_task_crashing_every_time_fails_after_its_retries(cluster, tmp_path):
    marker = tmp_path / "attempts"

    @ray.remote(num_cpus=0, max_retries=2)
    def always_crash(path):
        with open(path, "a") as f:
            f.write("x")
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ray.WorkerCrashedError, match=r"(?s)always_crash.*after 2 retries"):
        ray.get(always_crash.remote(str(marker)), timeout=30)
    assert marker.read_text() == "xxx"


def test_retry_exceptions(cluster, tmp_path):
    marker = tmp_path / "attempts"

    @ray.remote(num_cpus=0, max_retries=2, retry_exceptions=True)
    def flaky(path):
        with open(path, "a") as f:
            f.write("x")
        if len(open(path).read()) < 3:
            raise RuntimeError("flaky")
        return "ok"

    assert ray.get(flaky.remote(str(marker))) == "ok"

    @ray.remote(num_cpus=0)
    def fails(path):
        with open(path, "a") as f:
            f.write("y")
        raise RuntimeError("no retry by default")

    with pytest.raises(ray.RayTaskError, match="no retry by default"):
        ray.get(fails.remote(str(marker)))
    assert marker.read_text() == "xxxy"


# ---------------------------------------------------------------- placement across nodes

def test_actor_needing_a_worker_only_resource_is_placed_there(cluster):
    remote_counter = Counter.options(resources={"special": 1}).remote()
    assert ray.get(remote_counter.where.remote()) == WORKER_IP
    assert ray.get([remote_counter.increment.remote() for _ in range(3)]) == [1, 2, 3]
    assert ray.get(Counter.remote().where.remote()) == HEAD_IP  # fits the driver's node
    ray.kill(remote_counter)


def test_actor_that_fits_no_node_is_demand_by_shape(cluster):
    head, token = cluster
    pending = Counter.options(num_cpus=16).remote()
    gcs = pb_grpc.GcsStub(rpc.make_channel(head.gcs_address, token))
    deadline = time.monotonic() + 10
    demand = []
    while time.monotonic() < deadline:
        demand = [(dict(d.shape), d.count) for d in gcs.GetClusterState(pb.Empty()).demand]
        if demand:
            break
        time.sleep(0.1)
    assert demand == [({"CPU": 16.0}, 1)]
    ref = pending.increment.remote()
    assert ray.wait([ref], timeout=0.3) == ([], [ref])
    ray.kill(pending)
    with pytest.raises(ray.ActorDiedError, match="killed"):
        ray.get(ref, timeout=10)
    while demand and time.monotonic() < deadline + 10:  # the killed actor is no longer demand
        demand = list(gcs.GetClusterState(pb.Empty()).demand)
        time.sleep(0.1)
    assert demand == []


def test_actor_handle_passed_to_another_actor_and_named_lookup_in_a_task(cluster):
    @ray.remote
    class Relay:
        def __init__(self, target):
            self.target = target

        def bump(self):
            return ray.get(self.target.increment.remote())

    counter = Counter.options(name="relayed", resources={"special": 1}).remote(10)
    relay = Relay.remote(counter)
    assert ray.get([relay.bump.remote() for _ in range(3)]) == [11, 12, 13]

    @ray.remote(num_cpus=0)
    def read_named():
        return ray.get(ray.get_actor("relayed").read.remote())

    assert ray.get(read_named.remote()) == 13
    ray.kill(counter)
    ray.kill(relay)


def test_constructor_args_by_ref_and_constructor_error(cluster):
    start = ray.put(41)
    counter = Counter.remote(start)
    assert ray.get(counter.increment.remote()) == 42

    @ray.remote(max_restarts=3)
    class Broken:
        def __init__(self):
            raise RuntimeError("cannot build 9")

        def ping(self):
            return "pong"

    broken = Broken.remote()
    for _ in range(2):  # dead for good, as in Ray: a constructor that raised is not restarted
        with pytest.raises(ray.ActorDiedError, match="raised in its constructor(.|\n)*cannot build 9"):
            ray.get(broken.ping.remote(), timeout=30)
    ray.kill(counter)


def test_a_drivers_non_detached_actors_end_with_it(cluster):
    head, token = cluster
    program = (
        "import runtime as ray\n"
        f"ray.init(address={head.gcs_address!r})\n"
        "@ray.remote\n"
        "class A:\n"
        "    def ping(self):\n"
        "        return 'pong'\n"
        "a = A.options(name='mine').remote()\n"
        "d = A.options(name='kept', lifetime='detached').remote()\n"
        "assert ray.get([a.ping.remote(), d.ping.remote()]) == ['pong', 'pong']\n"
    )
    env = dict(os.environ, CLUSTER_AUTH_TOKEN=token)
    subprocess.run([sys.executable, "-c", program], env=env, check=True, timeout=60)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the agent reports the death as the worker exits
        try:
            ray.get_actor("mine")
        except ValueError:
            break
        time.sleep(0.05)
    with pytest.raises(ValueError, match="Failed to look up"):
        ray.get_actor("mine")
    kept = ray.get_actor("kept")
    assert ray.get(kept.ping.remote()) == "pong"
    ray.kill(kept)


def test_remote_actor_restarts_on_its_node_and_wait_sees_remote_results(cluster):
    counter = Counter.options(resources={"special": 1}, max_restarts=1).remote()
    refs = [counter.increment.remote() for _ in range(3)]
    ready, not_ready = ray.wait(refs, num_returns=3, timeout=10)
    assert ready == refs and not_ready == []
    os.kill(ray.get(counter.pid.remote()), signal.SIGKILL)
    deadline = time.monotonic() + 10
    # calls in flight at the death fail; later ones reach the restarted worker
    while time.monotonic() < deadline:
        try:
            value = ray.get(counter.increment.remote(), timeout=10)
            break
        except ray.ActorDiedError:
            time.sleep(0.05)
    assert value == 1 and ray.get(counter.where.remote()) == WORKER_IP
    ray.kill(counter)


@ray.remote(num_cpus=0, resources={"special": 1})
def hold_special(path):
    """Runs until `path` exists (the worker node's only "special" resource stays taken)."""
    while not os.path.exists(path):
        time.sleep(0.05)
    return "released"


def test_cancel_of_a_queued_task_drops_it(cluster, tmp_path):
    release = tmp_path / "release"
    blocker = hold_special.remote(str(release))
    queued = hold_special.remote(str(release))  # waits: the one "special" is taken
    time.sleep(0.5)
    ray.cancel(queued)
    with pytest.raises(ray.TaskCancelledError, match="was cancelled"):
        ray.get(queued, timeout=30)
    release.touch()
    assert ray.get(blocker, timeout=30) == "released"


@pytest.mark.parametrize("force", [False, True], ids=["interrupt", "force"])
def test_cancel_of_a_running_task_stops_it_without_retry(cluster, tmp_path, force):
    started = tmp_path / "started"

    @ray.remote(num_cpus=0, max_retries=3)
    def long_running(path):
        with open(path, "a") as f:
            f.write("x")
        time.sleep(120)
        return "finished"

    ref = long_running.remote(str(started))
    wait_for(lambda: started.exists(), 30, "the task to start")
    ray.cancel(ref, force=force)
    with pytest.raises(ray.TaskCancelledError):
        ray.get(ref, timeout=30)
    time.sleep(0.5)
    assert started.read_text() == "x"  # never retried
    assert ray.get(hold_special.remote(str(started)), timeout=30) == "released"  # still serving


def test_cancel_after_the_task_finished_keeps_its_result(cluster):
    done = ray.remote(num_cpus=0)(lambda: 42).remote()
    assert ray.get(done, timeout=30) == 42
    ray.cancel(done)
    assert ray.get(done, timeout=30) == 42


@ray.remote
class AsyncBarrier:
    """Every call waits until `parties` calls are inside at once: only concurrent calls finish."""

    def __init__(self, parties):
        import asyncio

        self.parties, self.inside, self.event = parties, 0, asyncio.Event()

    async def arrive(self, i):
        self.inside += 1
        if self.inside == self.parties:
            self.event.set()
        await self.event.wait()
        return i

    def count(self):  # a plain method of an async actor runs on its event loop too
        return self.inside


def test_async_actor_runs_its_calls_concurrently(cluster):
    barrier = AsyncBarrier.remote(20)
    assert ray.get([barrier.arrive.remote(i) for i in range(20)], timeout=30) == list(range(20))
    assert ray.get(barrier.count.remote(), timeout=30) == 20


@ray.remote
class ThreadedBarrier:
    def __init__(self, parties):
        import threading

        self.barrier = threading.Barrier(parties, timeout=20)

    def arrive(self, i):
        self.barrier.wait()
        return i


def test_max_concurrency_runs_a_plain_actors_calls_in_threads(cluster):
    barrier = ThreadedBarrier.options(max_concurrency=4).remote(4)
    assert sorted(ray.get([barrier.arrive.remote(i) for i in range(4)], timeout=30)) == [0, 1, 2, 3]


def test_async_actor_method_errors_reach_the_caller(cluster):
    @ray.remote
    class Failing:
        async def boom(self):
            raise KeyError("async boom")

    with pytest.raises(ray.RayTaskError, match="async boom"):
        ray.get(Failing.remote().boom.remote(), timeout=30)


def test_a_driver_that_exits_takes_its_tasks_with_it(cluster, tmp_path):
    pid_file = tmp_path / "pid"
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import os, time, runtime as ray\n"
        "ray.init('auto')\n"
        "@ray.remote(num_cpus=0)\n"
        "def forever(path):\n"
        "    open(path + '.tmp', 'w').write(str(os.getpid()))\n"
        "    os.rename(path + '.tmp', path)\n"
        "    time.sleep(300)\n"
        f"ref = forever.remote({str(pid_file)!r})\n"
        f"while not os.path.exists({str(pid_file)!r}):\n"
        "    time.sleep(0.05)\n")  # then exits, leaving its task running
    subprocess.run([sys.executable, str(driver)], timeout=60, check=True)
    pid = int(pid_file.read_text())
    wait_for(lambda: not pid_alive(pid), 15, "the exited driver's task to be stopped")
    assert ray.get(ray.remote(num_cpus=0)(lambda: "still serving").remote(), timeout=30) == \
        "still serving"


def test_a_function_with_max_calls_gets_a_fresh_worker_after_that_many_calls(cluster):
    @ray.remote(num_cpus=0, max_calls=1)
    def pid():
        return os.getpid()

    pids = [ray.get(pid.remote(), timeout=30) for _ in range(3)]
    assert len(set(pids)) == 3  # (without max_calls one idle worker would run all three)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "the retired workers to exit")

