"""A worker process: receives tasks from its node agent, runs them, sends back the results.

User code inside a task can call the runtime API (nested `.remote()`, `get`): the worker connects
to its node agent like a driver does, from the environment the agent gave it. An actor's worker
runs the ACTOR_CREATION call once, keeps the instance, and runs its method calls in the order they
arrive (or side by side: async and threaded actors).

Large dependencies arrive as the path of their file in the node's shared-memory store: the worker
maps it, so arrays inside are read without a copy. Large results are written into that store by
the worker itself; only their size goes back to the agent. A generator's items go back one message
each, as they are produced, before the task's own result.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import json
import os
import pickle
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional
from multiprocessing.connection import Connection

import cloudpickle

from runtime import client as client_state, ray_compat
from runtime.log_forwarding import WorkerLogs
from runtime.exceptions import (PASSED_ON, ActorDiedError, AsyncioActorExit, ObjectStoreFullError,
                                constructor_failure)
from runtime.generated import runtime_pb2 as pb
from runtime.generators import DynamicObjectRefGenerator
from runtime.ids import item_id
from runtime.object_store import map_file, stage
from runtime.serialization import (ObjectRef, Serialized, loads_args, serialize, serialize_error,
                                   serialize_task_error)


_actor = None  # the instance, in an actor's dedicated worker
_actor_loop: Optional[asyncio.AbstractEventLoop] = None  # an async actor's event loop
_actor_error: Serialized | None = None  # the creation error, returned by every method call
_in_task = False  # whether user code runs now: only then does cancel()'s SIGINT interrupt it


def _interrupt(signum, frame):
    """cancel(): KeyboardInterrupt in the running task; a SIGINT between tasks is dropped."""
    if _in_task:
        raise KeyboardInterrupt


def run_task(spec: pb.TaskSpec, dependencies: dict) -> list[Serialized]:
    """Run one task, actor creation or actor method; one object per return id. `dependencies`
    maps object id -> bytes, or the path of a file to map."""
    global _actor_error
    if spec.kind == pb.TaskSpec.ACTOR_METHOD and _actor_error is not None:
        return [_actor_error] * _count(spec)
    attempts_left = spec.max_retries - spec.attempt if spec.retry_exceptions else 0
    while True:
        try:
            with _runtime_env(spec):
                return _results(spec, _invoke(spec, dependencies))
        except SystemExit:
            if spec.kind != pb.TaskSpec.ACTOR_METHOD:
                raise
            _exit_actor()
        except BaseException as exc:  # everything the user's code raises goes back to the caller
            if attempts_left != 0 and spec.kind == pb.TaskSpec.TASK and _retriable(spec, exc):
                attempts_left -= 1
                continue
            if spec.kind == pb.TaskSpec.ACTOR_CREATION:  # the agent ends the actor; calls
                _actor_error = serialize_task_error(  # sent before that fail as after it
                    ActorDiedError(spec.name, constructor_failure(exc)))
            return _error_results(spec, exc)


async def run_task_async(spec: pb.TaskSpec, dependencies: dict) -> list[Serialized]:
    """An async actor's method call: awaited on the actor's event loop."""
    if _actor_error is not None:
        return [_actor_error] * _count(spec)
    try:
        value = _invoke(spec, dependencies)
        if inspect.isasyncgen(value):
            return _generator_results(spec, [item async for item in value])
        if inspect.isawaitable(value):
            value = await value
        return _results(spec, value)
    except (SystemExit, AsyncioActorExit):
        _exit_actor()
    except BaseException as exc:
        return _error_results(spec, exc)


def _retriable(spec: pb.TaskSpec, exc: BaseException) -> bool:
    """retry_exceptions: whether this exception reruns the task (never a failed dependency's
    error, nor a cancel; with a list of classes, only those)."""
    if isinstance(exc, (*PASSED_ON, KeyboardInterrupt)):
        return False
    if not spec.retry_exception_types:
        return True
    return isinstance(exc, cloudpickle.loads(spec.retry_exception_types))


def _exit_actor() -> None:
    """The actor exits on purpose (exit_actor() or sys.exit() in a method): atexit handlers run,
    then the process ends with code 0, which its node agent takes as "do not restart"."""
    try:
        atexit._run_exitfuncs()
        _logs.flush()  # what they printed reaches the driver
    finally:
        os._exit(0)


@contextlib.contextmanager
def _runtime_env(spec: pb.TaskSpec):
    """The work's runtime_env env_vars: set for a task's run (then restored: the worker is
    reused), for good in an actor's own worker."""
    env_vars = json.loads(spec.runtime_env).get("env_vars", {}) if spec.runtime_env else {}
    if spec.kind == pb.TaskSpec.ACTOR_METHOD or not env_vars:
        yield
        return
    saved = {name: os.environ.get(name) for name in env_vars}
    os.environ.update(env_vars)
    try:
        yield
    finally:
        if spec.kind == pb.TaskSpec.TASK:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _invoke(spec: pb.TaskSpec, dependencies: dict):
    """Call what the spec names with its arguments; returns what the call returned."""
    global _actor
    blobs = {d: map_file(v) if isinstance(v, str) else v for d, v in dependencies.items()}
    args, kwargs = loads_args(spec.args, blobs)
    if spec.kind == pb.TaskSpec.ACTOR_METHOD:
        if spec.method == "__ray_ready__":
            return True
        if spec.method == "__ray_terminate__":
            raise SystemExit(0)
        return getattr(_actor, spec.method)(*args, **kwargs)
    function = client_state.function_table().load(spec.function_id)
    if spec.kind == pb.TaskSpec.ACTOR_CREATION:
        _actor = _construct(function, args, kwargs)
        return None
    return function(*args, **kwargs)


def _construct(cls, args, kwargs):
    """The actor's instance; an `async def __init__` is awaited on the actor's event loop."""
    if not inspect.iscoroutinefunction(getattr(cls, "__init__", None)):
        return cls(*args, **kwargs)
    instance = cls.__new__(cls)
    asyncio.run_coroutine_threadsafe(instance.__init__(*args, **kwargs), _actor_loop).result()
    return instance


def _count(spec: pb.TaskSpec) -> int:
    return max(1, len(spec.return_ids))


def _results(spec: pb.TaskSpec, value) -> list[Serialized]:
    if spec.generator != pb.TaskSpec.NOT_GENERATOR:
        return _generator_results(spec, value)
    count = _count(spec)
    if count == 1:
        return [serialize(value)]
    values = list(value)
    if len(values) != count:
        raise ValueError(f"task {spec.name} declared num_returns={count} "
                         f"but returned {len(values)} values")
    return [serialize(v) for v in values]


def _generator_results(spec: pb.TaskSpec, items) -> list[Serialized]:
    """Store each item as it is produced (a streaming caller gets its ref at once); the task's
    own result is the count of items, or (dynamic) the refs to all of them."""
    refs = []
    for index, item in enumerate(items):
        object_id = item_id(spec.task_id, index)
        _send(("item", object_id, _output(object_id, serialize(item), spec.name)))
        refs.append(ObjectRef(object_id))
    if spec.generator == pb.TaskSpec.STREAMING:
        return [serialize(len(refs))]
    return [serialize(DynamicObjectRefGenerator(refs))]


def _error_results(spec: pb.TaskSpec, exc: BaseException) -> list[Serialized]:
    if isinstance(exc, PASSED_ON):  # a failed dependency: its error is the result, unchanged
        return [serialize_task_error(exc)] * _count(spec)
    return [serialize_error(spec.name, exc)] * _count(spec)


class ConcurrentActor:
    """Runs an actor's method calls side by side instead of one after another: an actor with
    `async def` methods awaits them on one event loop (Ray's async actors); an actor created with
    max_concurrency > 1 or concurrency groups runs them in threads (threaded actors). Each
    concurrency group runs at most its size at once, the default group max_concurrency (1000 for
    async); a call's group is its own option, else its method's (`@method(concurrency_group=)`).
    Each result goes back when its call ends, in any order: the agent matches them by task id."""

    def __init__(self, cls, is_async: bool, max_concurrency: int, groups: dict):
        global _actor_loop
        self._cls = cls
        sizes = {"": max_concurrency or (1000 if is_async else 1), **groups}
        if is_async:
            self._loop = _actor_loop = asyncio.new_event_loop()
            self._slots = {name: asyncio.Semaphore(size) for name, size in sizes.items()}
            threading.Thread(target=self._loop.run_forever, daemon=True, name="actor-loop").start()
        else:
            self._pools = {name: ThreadPoolExecutor(size, thread_name_prefix=f"actor-{name or 'call'}")
                           for name, size in sizes.items()}
        self._is_async = is_async

    def _group(self, spec: pb.TaskSpec) -> str:
        group = spec.concurrency_group or getattr(getattr(self._cls, spec.method, None),
                                                  "__ray_concurrency_group__", "")
        known = self._slots if self._is_async else self._pools
        return group if group in known else ""

    def submit(self, spec: pb.TaskSpec, dependencies: dict) -> None:
        group = self._group(spec)
        if not self._is_async:
            self._pools[group].submit(lambda: _send_result(spec, run_task(spec, dependencies)))
        else:
            asyncio.run_coroutine_threadsafe(self._call(spec, dependencies, group), self._loop)

    async def _call(self, spec: pb.TaskSpec, dependencies: dict, group: str) -> None:
        async with self._slots[group]:
            results = await run_task_async(spec, dependencies)
        await asyncio.get_running_loop().run_in_executor(None, _send_result, spec, results)


def _concurrency(creation: pb.TaskSpec) -> Optional[ConcurrentActor]:
    """Before an actor's creation: how its calls run, if not one at a time (its event loop must
    exist before an `async def __init__` runs)."""
    cls = client_state.function_table().load(creation.function_id)
    is_async = any(inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
                   for _, member in inspect.getmembers(cls, callable))
    groups = dict(creation.concurrency_groups)
    if not is_async and creation.max_concurrency <= 1 and not groups:
        return None
    return ConcurrentActor(cls, is_async, creation.max_concurrency, groups)


_conn: Optional[Connection] = None
_send_lock = threading.Lock()
_logs: Optional[WorkerLogs] = None


def _send(message: tuple) -> None:
    data = pickle.dumps(message, protocol=5)
    with _send_lock:
        _conn.send_bytes(data)


_calls: dict[str, int] = {}  # function id -> tasks run, for max_calls


def _send_result(spec: pb.TaskSpec, results: list) -> None:
    """Hand the results back; a worker that ran a max_calls function that often exits after."""
    ids = list(spec.return_ids) or [spec.return_id]
    _logs.flush()  # the task's prints reach the GCS before its result exists
    outputs = [_output(i, obj, spec.name) for i, obj in zip(ids, results)]
    _calls[spec.function_id] = _calls.get(spec.function_id, 0) + 1
    last = 0 < spec.max_calls <= _calls[spec.function_id]
    _send(("last result" if last else "result", spec.task_id, outputs))
    if last:
        os._exit(0)  # (what the task's code started in this process goes with it)


def _output(object_id: str, obj: Serialized, task_name: str):
    """A result for the agent: bytes, or the size of the file written into the store."""
    try:
        return stage(os.environ.get("CLUSTER_OBJECT_STORE_DIR"), object_id, obj)
    except ObjectStoreFullError as exc:  # shared memory is full: the caller gets the error
        return serialize_error(task_name, exc).to_bytes()


def main() -> None:
    global _in_task, _conn, _logs
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, _interrupt)
    _conn = Connection(int(sys.argv[1]))
    ray_compat.install(fallback=True)  # task code that imports ray itself
    client_state.connect_from_environment()
    _logs = WorkerLogs(client_state.connected().gcs,
                       lambda: (client_state.task_context.job_id, client_state.task_context.name))
    _logs.capture()
    concurrent: Optional[ConcurrentActor] = None
    while True:
        try:
            message = _conn.recv_bytes()
        except EOFError:
            os._exit(0)  # the agent went away
        spec_bytes, dependencies, gpu_ids = pickle.loads(message)
        spec = pb.TaskSpec.FromString(spec_bytes)
        if gpu_ids is not None:  # a GPU node: the task sees its own devices and no others
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        client_state.enter_task(spec, gpu_ids)
        if concurrent is not None:
            concurrent.submit(spec, dependencies)
            continue
        if spec.kind == pb.TaskSpec.ACTOR_CREATION:
            try:
                concurrent = _concurrency(spec)
            except Exception:  # the class cannot be loaded: run_task reports why
                pass
        _in_task = True
        try:
            results = run_task(spec, dependencies)
        finally:
            _in_task = False
        _send_result(spec, results)


if __name__ == "__main__":
    main()
