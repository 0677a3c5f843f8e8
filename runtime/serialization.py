"""How values become objects, and how ObjectRefs travel inside them.

An object is one contiguous blob, the same in the agent's memory, in a shared-memory file and on the
wire: a header (kind: value or error; the pickle's length; each out-of-band buffer's offset and
length), the cloudpickle protocol-5 stream, then the out-of-band buffers (numpy arrays, Arrow
buffers, ...) each at a 64-byte aligned offset. Unpickling from a mapped file hands those buffers
back as read-only views into the mapping: large arrays are read without a copy.
Errors are stored as objects too, so `get` on a failed task's result raises on the caller's side.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import pickle
import threading
import struct
import traceback
from collections import ChainMap

import cloudpickle

from runtime import refs
from runtime.exceptions import RayError, RayTaskError

_VALUE = b"V"
_ERROR = b"E"
_HEADER = struct.Struct("<4scxxxIxxxxQ")  # magic, kind, buffer count, pickle length
_BUFFER = struct.Struct("<QQ")  # offset, length
_MAGIC = b"RTO1"
_ALIGN = 64


class ObjectRef:
    """A reference to an object that exists, or will exist, somewhere in the cluster.

    A ref the runtime made for this process (`put`, `.remote()`) is owned: when the last such ref
    goes, the process may free the object (see runtime.refs). Pickling a ref lets it escape.
    """

    __slots__ = ("_id", "_owned")

    def __init__(self, object_id: str | bytes, _owned: bool = False):
        self._id = object_id.hex() if isinstance(object_id, bytes) else object_id
        self._owned = _owned

    def hex(self) -> str:
        return self._id

    def binary(self) -> bytes:
        return bytes.fromhex(self._id)

    def future(self) -> concurrent.futures.Future:
        """A future that resolves to the object's value (or its error)."""
        from runtime.objects_api import get

        future: concurrent.futures.Future = concurrent.futures.Future()

        def resolve():
            try:
                future.set_result(get(self))
            except BaseException as exc:
                future.set_exception(exc)
        threading.Thread(target=resolve, daemon=True, name="ref-future").start()
        return future

    def __await__(self):  # `await ref` in async code, as in Ray
        return asyncio.wrap_future(self.future()).__await__()

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self):
        return hash(self._id)

    def __repr__(self):
        return f"ObjectRef({self._id})"

    def __reduce__(self):
        if self._owned:
            refs.escaped(self._id)
        return (ObjectRef, (self._id,))

    def __del__(self):
        if self._owned:
            refs.dropped(self._id)


class _Dependency:
    """Stands for a top-level ObjectRef argument in a task's pickled arguments: the worker gets
    the value in its place, and the ref does not escape (the owner tracks the task instead)."""

    __slots__ = ("object_id",)

    def __init__(self, object_id: str):
        self.object_id = object_id

    def __reduce__(self):
        return (_Dependency, (self.object_id,))


_custom_reducers: dict = {}  # class -> reducer, from register_serializer


class _Pickler(cloudpickle.CloudPickler):
    """cloudpickle, plus the serializers registered in this process (looked up on each object)."""

    dispatch_table = ChainMap(_custom_reducers, cloudpickle.CloudPickler.dispatch_table)


def dumps_value(value, buffer_callback=None) -> bytes:
    """The pickle of a value as the runtime sends it (protocol 5, custom serializers applied)."""
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffer_callback).dump(value)
    return out.getvalue()


def register_serializer(cls: type, *, serializer, deserializer) -> None:
    """Ray's custom serialization: objects of `cls` this process sends are `serializer(obj)`,
    rebuilt with `deserializer(that)` wherever they arrive (the deserializer travels along, by
    value). Registered per process, as in Ray: a worker that sends such objects registers too."""
    def reduce(obj):
        return deserializer, (serializer(obj),)
    _custom_reducers[cls] = reduce


def deregister_serializer(cls: type) -> None:
    _custom_reducers.pop(cls, None)


class Serialized:
    """A value as an object: write `chunks()` one after another, or take `to_bytes()`."""

    def __init__(self, kind: bytes, value):
        buffers: list = []
        self.pickled = dumps_value(value, buffer_callback=buffers.append)
        self.buffers = [b.raw() for b in buffers]
        offset = _HEADER.size + _BUFFER.size * len(self.buffers) + len(self.pickled)
        self.layout = []
        for buffer in self.buffers:
            offset = _aligned(offset)
            self.layout.append((offset, buffer.nbytes))
            offset += buffer.nbytes
        self.size = offset
        self.header = _HEADER.pack(_MAGIC, kind, len(self.buffers), len(self.pickled)) + b"".join(
            _BUFFER.pack(o, n) for o, n in self.layout)

    def chunks(self) -> list:
        """The blob's pieces in order, padding included."""
        pieces, end = [self.header, self.pickled], len(self.header) + len(self.pickled)
        for (offset, length), buffer in zip(self.layout, self.buffers):
            pieces += [bytes(offset - end), buffer]
            end = offset + length
        return pieces

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks())


def _aligned(offset: int) -> int:
    return (offset + _ALIGN - 1) // _ALIGN * _ALIGN


def serialize(value) -> Serialized:
    return Serialized(_VALUE, value)


def serialize_error(task_name: str, exc: BaseException) -> Serialized:
    """An exception raised by user code, keeping the remote traceback as text."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        error = Serialized(_ERROR, RayTaskError(task_name, text, exc, pid=os.getpid()))
        pickle.loads(error.pickled, buffers=error.buffers)  # it must come back out too
        return error
    except Exception:  # the user's exception itself cannot be pickled: keep its text
        return Serialized(_ERROR, RayTaskError(task_name, text, pid=os.getpid()))


def serialize_task_error(error: RayError) -> Serialized:
    return Serialized(_ERROR, error)


def dumps_task_error(error: RayError) -> bytes:
    return serialize_task_error(error).to_bytes()


def loads(blob):
    """Return the stored value, or raise the stored error (a task's: as its cause's class too). `blob` is bytes or a memoryview of
    a mapped file; buffers inside the value point into it, read-only."""
    view = memoryview(blob)
    magic, kind, count, pickle_len = _HEADER.unpack_from(view)
    if magic != _MAGIC:
        raise ValueError("not a runtime object (bad header)")
    start = _HEADER.size + _BUFFER.size * count
    buffers = [view[o:o + n] for o, n in (_BUFFER.unpack_from(view, _HEADER.size + _BUFFER.size * i)
                                          for i in range(count))]
    value = pickle.loads(view[start:start + pickle_len], buffers=buffers)
    if kind == _ERROR:
        raise value.as_instanceof_cause() if isinstance(value, RayTaskError) else value
    return value


def error_class_name(result) -> str:
    """For state listings: "" when a task result (bytes, or the size of a file the worker wrote:
    not read here) holds a value; else the class of the error, or of the user exception inside."""
    if not isinstance(result, bytes) or result[4:5] != _ERROR:
        return ""
    try:
        loads(result)
    except RayTaskError as error:
        return type(error.cause or error).__name__
    except RayError as error:
        return type(error).__name__
    except Exception:  # the user's exception class cannot be loaded here
        return RayTaskError.__name__
    return ""


def error_traceback(result) -> str:
    """The remote traceback of a task result that holds a RayTaskError ("" if it cannot be read
    here, e.g. its exception class is not importable in this process)."""
    try:
        loads(result)
    except RayTaskError as error:
        return error.traceback_str
    except Exception:
        pass
    return ""


def dumps_args(args: tuple, kwargs: dict, call: str) -> tuple[bytes, list[str]]:
    """Pickle a call's arguments; top-level ObjectRefs become dependencies the task waits for.
    The process keeps those objects until the task's results exist (runtime.refs). An argument
    that cannot be pickled is a TypeError naming the call (e.g. "train.remote()")."""
    def mark(a):
        return _Dependency(a.hex()) if isinstance(a, ObjectRef) else a

    try:
        data = dumps_value((tuple(mark(a) for a in args), {k: mark(v) for k, v in kwargs.items()}))
    except Exception as exc:
        raise TypeError(f"{call}: an argument cannot be serialized: {exc}") from None
    deps = [a.hex() for a in list(args) + list(kwargs.values()) if isinstance(a, ObjectRef)]
    refs.hold(deps)
    return data, deps


def loads_args(data: bytes, resolved: dict) -> tuple[tuple, dict]:
    """Unpickle arguments, replacing each top-level dependency by its value (raising its error);
    `resolved` maps object id -> blob (bytes or a mapped file's memoryview)."""
    args, kwargs = cloudpickle.loads(data)

    def resolve(a):
        return loads(resolved[a.object_id]) if isinstance(a, _Dependency) else a

    return tuple(resolve(a) for a in args), {k: resolve(v) for k, v in kwargs.items()}
