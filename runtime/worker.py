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

import os
import pickle
import signal
import sys
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
    global _actor, _actor_error
    count = max(1, len(spec.return_ids))
    if spec.kind == pb.TaskSpec.ACTOR_METHOD and _actor_error is not None:
        return [_actor_error] * count
    attempts_left = spec.max_retries - spec.attempt if spec.retry_exceptions else 0
    while True:
        try:
            blobs = {d: map_file(v) if isinstance(v, str) else v for d, v in dependencies.items()}
            args, kwargs = loads_args(spec.args, blobs)
            if spec.kind == pb.TaskSpec.ACTOR_METHOD:
                value = getattr(_actor, spec.method)(*args, **kwargs)
            elif spec.kind == pb.TaskSpec.ACTOR_CREATION:
                cls = api.function_table().load(spec.function_id)
                _actor = cls(*args, **kwargs)
                return [serialize(None)]
            else:
                value = api.function_table().load(spec.function_id)(*args, **kwargs)
            if count == 1:
                return [serialize(value)]
            values = list(value)
            if len(values) != count:
                raise ValueError(f"task {spec.name} declared num_returns={count} "
                                 f"but returned {len(values)} values")
            return [serialize(v) for v in values]
        except TaskError as exc:  # a failed dependency: its error is the result, unchanged
            result = serialize_task_error(exc)
        except BaseException as exc:  # everything the user's code raises goes back to the caller
            if attempts_left != 0 and spec.kind == pb.TaskSpec.TASK and \
                    not isinstance(exc, KeyboardInterrupt):
                attempts_left -= 1
                continue
            result = serialize_error(spec.name, exc)
        if spec.kind == pb.TaskSpec.ACTOR_CREATION:
            _actor_error = result
        return [result] * count


def main() -> None:
    global _in_task
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, _interrupt)
    conn = Connection(int(sys.argv[1]))
    api.connect_from_environment()
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            os._exit(0)  # the agent went away
        spec_bytes, dependencies, gpu_ids = pickle.loads(message)
        spec = pb.TaskSpec.FromString(spec_bytes)
        if gpu_ids is not None:  # a GPU node: the task sees its own devices and no others
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
            api.set_gpu_ids(gpu_ids)
        _in_task = True
        try:
            results = run_task(spec, dependencies)
        finally:
            _in_task = False
        store = os.environ.get("CLUSTER_OBJECT_STORE_DIR")
        ids = list(spec.return_ids) or [spec.return_id]
        outputs = [_output(store, i, obj, spec.name) for i, obj in zip(ids, results)]
        conn.send_bytes(pickle.dumps(("result", spec.task_id, outputs), protocol=5))


def _output(store, object_id: str, obj: Serialized, task_name: str):
    """A result for the agent: bytes, or the size of the file written into the store."""
    try:
        return stage(store, object_id, obj)
    except ObjectStoreFullError as exc:  # shared memory is full: the caller gets the error
        return serialize_error(task_name, exc).to_bytes()


if __name__ == "__main__":
    main()
