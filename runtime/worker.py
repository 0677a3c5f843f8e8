"""A worker process: receives tasks from its node agent, runs them, sends back the results.

User code inside a task can call the runtime API (nested `.remote()`, `get`): the worker connects
to its node agent like a driver does, from the environment the agent gave it. An actor's worker
runs the ACTOR_CREATION call once, keeps the instance, and runs its method calls in the order they
arrive.

Large dependencies arrive as the path of their file in the node's shared-memory store: the worker
maps it, so arrays inside are read without a copy. Large results are written into that store by
the worker itself; only their size goes back to the agent.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional
from multiprocessing.connection import Connection

from runtime import api
from runtime.generated import runtime_pb2 as pb
from runtime.errors import ObjectStoreFullError, TaskError
from runtime.object_store import map_file, stage
from runtime.serialization import (Serialized, loads_args, serialize, serialize_error,
                                   serialize_task_error)


_actor = None  # the instance, in an actor's dedicated worker
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
            return _results(spec, _invoke(spec, dependencies))
        except BaseException as exc:  # everything the user's code raises goes back to the caller
            if attempts_left != 0 and spec.kind == pb.TaskSpec.TASK and \
                    not isinstance(exc, (TaskError, KeyboardInterrupt)):
                attempts_left -= 1
                continue
            results = _error_results(spec, exc)
        if spec.kind == pb.TaskSpec.ACTOR_CREATION:
            _actor_error = results[0]
        return results


async def run_task_async(spec: pb.TaskSpec, dependencies: dict) -> list[Serialized]:
    """An async actor's method call: awaited on the actor's event loop."""
    if _actor_error is not None:
        return [_actor_error] * _count(spec)
    try:
        value = _invoke(spec, dependencies)
        if inspect.isawaitable(value):
            value = await value
        return _results(spec, value)
    except BaseException as exc:
        return _error_results(spec, exc)


def _invoke(spec: pb.TaskSpec, dependencies: dict):
    """Call what the spec names with its arguments; returns what the call returned."""
    global _actor
    blobs = {d: map_file(v) if isinstance(v, str) else v for d, v in dependencies.items()}
    args, kwargs = loads_args(spec.args, blobs)
    if spec.kind == pb.TaskSpec.ACTOR_METHOD:
        return getattr(_actor, spec.method)(*args, **kwargs)
    function = api.function_table().load(spec.function_id)
    if spec.kind == pb.TaskSpec.ACTOR_CREATION:
        _actor = function(*args, **kwargs)
        return None
    return function(*args, **kwargs)


def _count(spec: pb.TaskSpec) -> int:
    return max(1, len(spec.return_ids))


def _results(spec: pb.TaskSpec, value) -> list[Serialized]:
    count = _count(spec)
    if count == 1:
        return [serialize(value)]
    values = list(value)
    if len(values) != count:
        raise ValueError(f"task {spec.name} declared num_returns={count} "
                         f"but returned {len(values)} values")
    return [serialize(v) for v in values]


def _error_results(spec: pb.TaskSpec, exc: BaseException) -> list[Serialized]:
    if isinstance(exc, TaskError):  # a failed dependency: its error is the result, unchanged
        return [serialize_task_error(exc)] * _count(spec)
    return [serialize_error(spec.name, exc)] * _count(spec)


class ConcurrentActor:
    """Runs an actor's method calls side by side instead of one after another: an actor with
    `async def` methods awaits them on one event loop (Ray's async actors); an actor created with
    max_concurrency > 1 runs them in that many threads (threaded actors). At most max_concurrency
    (default 1000 for async) run at once; each result goes back when its call ends, in any order,
    since the agent matches results by task id."""

    def __init__(self, is_async: bool, max_concurrency: int, send_result: Callable):
        self._send = send_result
        if is_async:
            self._loop = asyncio.new_event_loop()
            self._slots = asyncio.Semaphore(max_concurrency or 1000)
            threading.Thread(target=self._loop.run_forever, daemon=True, name="actor-loop").start()
            self._threads = None
        else:
            self._threads = ThreadPoolExecutor(max_concurrency, thread_name_prefix="actor-call")

    def submit(self, spec: pb.TaskSpec, dependencies: dict) -> None:
        if self._threads is not None:
            self._threads.submit(lambda: self._send(spec, run_task(spec, dependencies)))
        else:
            asyncio.run_coroutine_threadsafe(self._call(spec, dependencies), self._loop)

    async def _call(self, spec: pb.TaskSpec, dependencies: dict) -> None:
        async with self._slots:
            results = await run_task_async(spec, dependencies)
        await asyncio.get_running_loop().run_in_executor(None, self._send, spec, results)


def _concurrency(spec: pb.TaskSpec) -> Optional[ConcurrentActor]:
    """After an actor's creation: how its calls run, if not one at a time."""
    is_async = _actor is not None and any(
        inspect.iscoroutinefunction(getattr(type(_actor), name, None)) for name in dir(type(_actor)))
    if not is_async and spec.max_concurrency <= 1:
        return None
    return ConcurrentActor(is_async, spec.max_concurrency, _send_result)


_conn: Optional[Connection] = None
_send_lock = threading.Lock()


def _send_result(spec: pb.TaskSpec, results: list) -> None:
    store = os.environ.get("CLUSTER_OBJECT_STORE_DIR")
    ids = list(spec.return_ids) or [spec.return_id]
    outputs = [_output(store, i, obj, spec.name) for i, obj in zip(ids, results)]
    message = pickle.dumps(("result", spec.task_id, outputs), protocol=5)
    with _send_lock:
        _conn.send_bytes(message)


def main() -> None:
    global _in_task, _conn
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, _interrupt)
    _conn = Connection(int(sys.argv[1]))
    api.connect_from_environment()
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
            api.set_gpu_ids(gpu_ids)
        if concurrent is not None:
            concurrent.submit(spec, dependencies)
            continue
        if spec.kind != pb.TaskSpec.ACTOR_METHOD:  # an actor's nested work is its creator's
            api.set_job(spec.job_id)
        _in_task = True
        try:
            results = run_task(spec, dependencies)
        finally:
            _in_task = False
        _send_result(spec, results)
        if spec.kind == pb.TaskSpec.ACTOR_CREATION:
            concurrent = _concurrency(spec)


def _output(store, object_id: str, obj: Serialized, task_name: str):
    """A result for the agent: bytes, or the size of the file written into the store."""
    try:
        return stage(store, object_id, obj)
    except ObjectStoreFullError as exc:  # shared memory is full: the caller gets the error
        return serialize_error(task_name, exc).to_bytes()


if __name__ == "__main__":
    main()
