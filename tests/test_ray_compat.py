"""Ray compatibility: programs written as a Ray user writes them (from Ray 2.x's documentation),
each run unchanged as its own process with `python -m runtime.ray_compat PROGRAM.py`, so `import
ray` is this runtime; each test asserts the program's printed stdout exactly.

The programs live in tests/ray_programs/, one per feature. They all join ONE module-scoped cluster
(a head and a worker, 2 CPUs each, on their own loopback addresses): the subprocess's
$CLUSTER_RUNTIME_DIR is the head's runtime directory, so its `ray.init()` — or its first
`.remote()`, without any init — finds the running cluster there (session.json and token), as a
Ray program run on the head node of a `ray start --head` cluster does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import node
from tests.conftest import clear_cluster_env, free_port, pid_alive

HEAD_IP, WORKER_IP = "127.0.8.1", "127.0.8.2"
CPUS_PER_NODE = 2
GiB = 1024 ** 3
PROGRAMS = Path(__file__).parent / "ray_programs"
REPO = Path(__file__).parent.parent
PROGRAM_TIMEOUT_S = 30  # each program ends in seconds; this only bounds a hang


@pytest.fixture(scope="module")
def program_env(tmp_path_factory):
    """Start the shared cluster; yield the environment a program needs to join it."""
    home = tmp_path_factory.mktemp("ray-compat")
    pids: list[int] = []
    with pytest.MonkeyPatch.context() as mp:
        clear_cluster_env(mp)
        try:
            mp.setenv("CLUSTER_RUNTIME_DIR", str(home / "head"))
            head = node.start_head(free_port(HEAD_IP), {"CPU": CPUS_PER_NODE, "memory": 2 * GiB},
                                   ip=HEAD_IP)
            pids += head.pids.values()
            token = (home / "head" / "token").read_text()
            mp.setenv("CLUSTER_RUNTIME_DIR", str(home / "worker"))
            worker = node.start_worker(head.gcs_address, {"CPU": CPUS_PER_NODE, "memory": 2 * GiB},
                                       "cpu-2", ip=WORKER_IP, token=token)
            pids += worker.pids.values()
            scratch = home / "tmp"
            scratch.mkdir()
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
            env.update(CLUSTER_RUNTIME_DIR=str(home / "head"), TMPDIR=str(scratch),
                       PYTHONUNBUFFERED="1")
            yield env
        finally:
            node._kill_all({str(p): p for p in pids}, grace_s=3)
    assert not [p for p in pids if pid_alive(p)]


def run_program(env: dict, name: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "runtime.ray_compat", str(PROGRAMS / name)],
                              cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=PROGRAM_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        raise AssertionError(f"{name} did not end within {PROGRAM_TIMEOUT_S}s\n--- stdout\n"
                             f"{text(exc.stdout)}\n--- stderr\n{text(exc.stderr)}") from None


# program -> its exact stdout under Ray, in the order of the features they cover
EXPECTED = {
    # 1. no ray.init(): the first .remote() connects
    "implicit_init.py": """\
initialized before: False
initialized after: True
[0, 1, 4, 9, 16]
True
""",
    # ... and ray.init() on a node running a cluster joins it, refusing sizing options
    "init_existing_cluster.py": """\
['num_cpus'] ValueError
['resources'] ValueError
True 2
""",
    # 2. errors: the cause's class, custom attributes, timeouts, cancel, killed actors
    "exceptions.py": """\
ValueError: True True
QuotaError: 429 True
GetTimeoutError True
TaskCancelledError True
pong
actor ValueError: True True
3
RayActorError
""",
    "actor_init_error.py": """\
RayActorError True True
RayActorError True True
""",
    # 3. retry_exceptions=True / [classes], max_retries
    "retries.py": """\
flaky: ok on attempt 3
picky-value: ok on attempt 2
KeyError not retried, attempts: 1
hopeless raised ValueError, attempts: 2
default raised ValueError, attempts: 1
crash: survived the crash
""",
    # 4. @ray.method(num_returns=2), .options(num_returns=N)
    "num_returns.py": """\
key value
[7, -7] (7, -7)
[5, 10, 15]
(1, 2, 3)
""",
    # 5. ray.util.ActorPool
    "actor_pool.py": """\
[0, 10, 20, 30, 40, 50]
[0, 10, 20, 30, 40, 50]
True 70 80 False
True
""",
    # 6. ray.util.queue.Queue between a task and an actor
    "queue_shared.py": """\
produced 5
[0, 1, 4, 9, 16]
Empty
True 0
""",
    # 7. NodeAffinitySchedulingStrategy
    "node_affinity.py": """\
2 True
True
True
TaskUnschedulableError
True
""",
    # 8. memory=
    "memory_option.py": """\
task ran
task ran
actor ran
actor ran
""",
    # 9. generators: streaming, failing mid-stream, dynamic, actor methods; ray.wait on one
    "generators.py": """\
0
1
4
9
0 1
ValueError after 2 items: True
exhausted
['label-0', 'label-1', 'label-2']
['HELLO', 'BIG', 'WORLD']
""",
    "generator_wait.py": """\
1 0 tick-0
1 0 tick-1
1 0 tick-2
finished
""",
    # 10. ray.ObjectRef(bytes.fromhex(ref.hex()))
    "object_ref_hex.py": """\
{'key': 'value'}
True True True
42
43
""",
    # 11. placement_group_capture_child_tasks
    "pg_capture.py": """\
captured: True True
not captured: True None
driver: None
""",
    "pg_current.py": """\
True True
None None
""",
    # 12. max_task_retries on an actor whose process dies
    "max_task_retries.py": """\
work done
restarted: True
without max_task_retries: RayActorError
work done
""",
    # 13. async actors: async __init__, await ref
    "async_actor.py": """\
svc ready=True
42
[2, 4, 6]
signalled
10
""",
    # 14. exit_actor() / sys.exit() in a method: dead, not restarted
    "actor_exit.py": """\
leave pong
leave -> RayActorError
leave later call -> RayActorError
leave later call -> RayActorError
quit pong
quit -> RayActorError
quit later call -> RayActorError
quit later call -> RayActorError
""",
    # 15. runtime_env env_vars in ray.init and .options
    "runtime_env_vars.py": """\
['hello', 'job']
['hello', 'job']
['hi', 'task']
['hey', 'actor']
None
""",
    "runtime_env_merge.py": """\
['hello', 'task', '1']
['hello', 'task', '1']
""",
    # 16. trees of tasks blocking on their children, wider than the CPUs
    "task_tree.py": f"""\
{2 * CPUS_PER_NODE}
8
{list(range(12))}
{[[0, 1, 4, 9]] * 6}
""",
    # 17. options Ray has and this runtime refuses: NotImplementedError naming them
    "unsupported_options.py": """\
label_selector NotImplementedError True
include_dashboard NotImplementedError True
local_mode NotImplementedError True
_system_config NotImplementedError True
max_pending_calls NotImplementedError True
pip NotImplementedError True
1 pong
""",
    # concurrency groups of an async actor
    "concurrency_groups.py": """\
{'io': 2, 'compute': 1, 'default': 1}
""",
    # ray.util.register_serializer
    "custom_serializer.py": """\
cannot serialize by default
Connection to db://b
db://c
""",
    # ray.util.inspect_serializability
    "inspect_serializability.py": """\
True []
False [('lock', 'test')]
False [('lock', 'DBClient')]
False [('lock', 'DBClient')]
False [('client', 'query')]
True []
""",
    # ray.util.multiprocessing.Pool
    "multiprocessing_pool.py": """\
[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
[0, 1, 4, 9, 16]
[0, 1, 4, 9, 16]
[32, 27]
['hello, ann', 'hello, bob']
144 [144] True
ValueError: negative: -2 ('negative: -2',)
Pool not running
""",
    # actor builtins and restarts
    "actor_lifecycle.py": """\
True
restarted: False
restarted: True
terminated
""",
    # ... and max_calls, which it supports
    "max_calls.py": """\
3
True
""",
    # 18. get_runtime_context() ids
    "runtime_context.py": """\
driver: True None None
task: True True True None
actor: True True True True
other actor: True
""",
}


def test_every_program_has_an_expectation():
    assert sorted(p.name for p in PROGRAMS.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_program(program_env, name):
    result = run_program(program_env, name)
    assert (result.returncode, result.stdout) == (0, EXPECTED[name]), (
        f"{name}: exit code {result.returncode}\n--- stdout\n{result.stdout}\n"
        f"--- stderr\n{result.stderr[-4000:]}")
