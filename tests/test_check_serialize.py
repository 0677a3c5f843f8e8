"""runtime.util.check_serialize: inspect_serializability names what cannot be serialized, and
where (no cluster needed)."""

from __future__ import annotations

import io
import threading

from runtime.serialization import deregister_serializer, register_serializer
from runtime.util.check_serialize import inspect_serializability


class Connection:
    """Holds a lock, as a client object does: not picklable unless a serializer is registered."""

    def __init__(self, url: str):
        self.url = url
        self.lock = threading.Lock()


def _inspect(obj, **kwargs):
    """(serializable, {(name, type of obj, parent): ...}, report text)."""
    report = io.StringIO()
    ok, failures = inspect_serializability(obj, print_file=report, **kwargs)
    return ok, {(f.name, type(f.obj), f.parent) for f in failures}, report.getvalue()


def _main_function(source: str, **globals_):
    """A function as a script defines it: in a namespace no module import reaches, so it is
    pickled by value with the globals it uses (one from this test module would go by reference)."""
    namespace = dict(globals_)
    exec(source, namespace)
    return namespace["f"]


def test_a_serializable_object_has_no_failures():
    ok, failures, report = _inspect(lambda x: x + 1)
    assert (ok, failures) == (True, set())
    assert "FAIL" not in report
    assert inspect_serializability({"a": [1, 2]}, print_file=io.StringIO()) == (True, set())


def test_a_lock_in_a_closure_is_named_with_its_function():
    lock = threading.Lock()

    def guarded():
        with lock:
            return 1
    ok, failures, report = _inspect(guarded)
    assert not ok
    assert failures == {("lock", type(lock), guarded)}
    assert "closure variable 'lock'" in report and "cannot pickle" in report


def test_a_global_holding_a_lock_is_named():
    lock = threading.Lock()
    f = _main_function("def f():\n    with LOCK:\n        return 1\n", LOCK=lock)
    ok, failures, report = _inspect(f, name="f")
    assert not ok and failures == {("LOCK", type(lock), f)}
    assert "global 'LOCK'" in report


def test_an_unpicklable_attribute_is_named_with_its_object():
    conn = Connection("db://a")
    ok, failures, report = _inspect(conn)
    assert not ok and failures == {("lock", type(conn.lock), conn)}
    assert "attribute 'lock'" in report


def test_every_failing_member_is_reported():
    first, second = Connection("db://a"), Connection("db://b")

    def uses_both():
        return first.url, second.url
    ok, failures, _ = _inspect(uses_both)
    assert failures == {("lock", type(first.lock), first), ("lock", type(second.lock), second)}


def test_depth_limits_how_far_inside_it_looks():
    conn = Connection("db://a")

    def query():
        return conn.url
    assert _inspect(query)[1] == {("lock", type(conn.lock), conn)}  # function > conn > lock
    assert _inspect(query, depth=1)[1] == {("conn", Connection, query)}
    assert _inspect(query, depth=0)[1] == {(None, type(query), None)}


def test_a_class_with_a_registered_serializer_is_serializable():
    conn = Connection("db://a")

    def query():
        return conn.url
    register_serializer(Connection, serializer=lambda c: c.url, deserializer=Connection)
    try:
        assert _inspect(conn)[:2] == (True, set())
        assert _inspect(query)[:2] == (True, set())
    finally:
        deregister_serializer(Connection)
    assert not _inspect(query)[0]
