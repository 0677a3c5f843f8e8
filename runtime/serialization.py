"""How values become bytes in the object store, and how ObjectRefs travel inside them.

An object is one header byte (value or error) followed by a cloudpickle (protocol 5) payload.
Errors are stored as objects too, so `get` on a failed task's result raises on the caller's side.
"""

from __future__ import annotations

import traceback

import cloudpickle

from runtime.errors import TaskError

_VALUE = b"V"
_ERROR = b"E"


class ObjectRef:
    """A reference to an object that exists, or will exist, somewhere in the cluster."""

    __slots__ = ("_id",)

    def __init__(self, object_id: str):
        self._id = object_id

    def hex(self) -> str:
        return self._id

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self):
        return hash(self._id)

    def __repr__(self):
        return f"ObjectRef({self._id})"

    def __reduce__(self):
        return (ObjectRef, (self._id,))


def dumps_value(value) -> bytes:
    return _VALUE + cloudpickle.dumps(value, protocol=5)


def dumps_error(task_name: str, exc: BaseException) -> bytes:
    """Serialize an exception raised by user code, keeping the remote traceback as text."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return _ERROR + cloudpickle.dumps(TaskError(task_name, text, exc), protocol=5)
    except Exception:  # the user's exception itself cannot be pickled: keep its text
        return _ERROR + cloudpickle.dumps(TaskError(task_name, text), protocol=5)


def dumps_task_error(error: TaskError) -> bytes:
    return _ERROR + cloudpickle.dumps(error, protocol=5)


def loads(data: bytes):
    """Return the stored value, or raise the stored TaskError."""
    value = cloudpickle.loads(data[1:])
    if data[:1] == _ERROR:
        raise value
    return value


def dumps_args(args: tuple, kwargs: dict) -> tuple[bytes, list[str]]:
    """Pickle a call's arguments; top-level ObjectRefs become dependencies the task waits for."""
    deps = [a.hex() for a in list(args) + list(kwargs.values()) if isinstance(a, ObjectRef)]
    return cloudpickle.dumps((args, kwargs), protocol=5), deps


def loads_args(data: bytes, resolved: dict[str, bytes]) -> tuple[tuple, dict]:
    """Unpickle arguments, replacing each top-level ObjectRef by its value (raising its error)."""
    args, kwargs = cloudpickle.loads(data)

    def resolve(a):
        return loads(resolved[a.hex()]) if isinstance(a, ObjectRef) else a

    return tuple(resolve(a) for a in args), {k: resolve(v) for k, v in kwargs.items()}
