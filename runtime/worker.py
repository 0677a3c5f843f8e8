"""A worker process: receives tasks from its node agent, runs them, sends back the results.

User code inside a task can call the runtime API (nested `.remote()`, `get`): the worker connects
to its node agent like a driver does, from the environment the agent gave it. An actor's worker
runs the ACTOR_CREATION call once, keeps the instance, and runs its method calls in the order they
arrive.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection

from runtime import api
from runtime.generated import runtime_pb2 as pb
from runtime.errors import TaskError
from runtime.serialization import dumps_error, dumps_task_error, dumps_value, loads_args


_actor = None  # the instance, in an actor's dedicated worker
_actor_error: bytes | None = None  # the creation error, returned by every method call


def run_task(spec: pb.TaskSpec, dependencies: dict) -> list[bytes]:
    """Run one task, actor creation or actor method; one object per return id."""
    global _actor, _actor_error
    count = max(1, len(spec.return_ids))
    if spec.kind == pb.TaskSpec.ACTOR_METHOD and _actor_error is not None:
        return [_actor_error] * count
    attempts_left = spec.max_retries - spec.attempt if spec.retry_exceptions else 0
    while True:
        try:
            args, kwargs = loads_args(spec.args, dependencies)
            if spec.kind == pb.TaskSpec.ACTOR_METHOD:
                value = getattr(_actor, spec.method)(*args, **kwargs)
            elif spec.kind == pb.TaskSpec.ACTOR_CREATION:
                cls = api.function_table().load(spec.function_id)
                _actor = cls(*args, **kwargs)
                return [dumps_value(None)]
            else:
                value = api.function_table().load(spec.function_id)(*args, **kwargs)
            if count == 1:
                return [dumps_value(value)]
            values = list(value)
            if len(values) != count:
                raise ValueError(f"task {spec.name} declared num_returns={count} "
                                 f"but returned {len(values)} values")
            return [dumps_value(v) for v in values]
        except TaskError as exc:  # a failed dependency: its error is the result, unchanged
            result = dumps_task_error(exc)
        except BaseException as exc:  # everything the user's code raises goes back to the caller
            if attempts_left != 0 and spec.kind == pb.TaskSpec.TASK:
                attempts_left -= 1
                continue
            result = dumps_error(spec.name, exc)
        if spec.kind == pb.TaskSpec.ACTOR_CREATION:
            _actor_error = result
        return [result] * count


def main() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
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
        result = run_task(spec, dependencies)
        conn.send_bytes(pickle.dumps(("result", spec.task_id, result), protocol=5))


if __name__ == "__main__":
    main()
