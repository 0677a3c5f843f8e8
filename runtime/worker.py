"""A worker process: receives tasks from its node agent, runs them, sends back the results.

User code inside a task can call the runtime API (nested `.remote()`, `get`): the worker connects
to its node agent like a driver does, from the environment the agent gave it.
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


def run_task(spec: pb.TaskSpec, dependencies: dict) -> bytes:
    try:
        function = api.function_table().load(spec.function_id)
        args, kwargs = loads_args(spec.args, dependencies)
        return dumps_value(function(*args, **kwargs))
    except TaskError as exc:  # a failed dependency: its error is the result, unchanged
        return dumps_task_error(exc)
    except BaseException as exc:  # everything the user's code raises goes back to the caller
        return dumps_error(spec.name, exc)


def main() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    conn = Connection(int(sys.argv[1]))
    api.connect_from_environment()
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            os._exit(0)  # the agent went away
        spec_bytes, dependencies = pickle.loads(message)
        spec = pb.TaskSpec.FromString(spec_bytes)
        result = run_task(spec, dependencies)
        conn.send_bytes(pickle.dumps(("result", spec.task_id, result), protocol=5))


if __name__ == "__main__":
    main()
