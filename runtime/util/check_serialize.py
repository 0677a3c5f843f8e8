"""Ray's `ray.util.inspect_serializability`: say WHICH part of a value cannot be serialized.

A failed `put` or `.remote()` only says "cannot pickle '_thread.lock' object"; this names the
variable that holds it and where. The value is pickled as the runtime pickles it (the pickler of
runtime.serialization, so serializers from `register_serializer` count); on failure we look
inside — a function's closure variables and the globals it uses, a method's function and
instance, a class's methods and attributes, an object's class and attributes (`__dict__`) — and
recurse, up to `depth` levels. Unlike Ray, which stops at the first culprit, every failing member
is reported.
"""

from __future__ import annotations

import inspect
from typing import Any

from runtime.serialization import dumps_value

_RULE = "=" * 70


class FailureTuple:
    """One value that cannot be serialized: `name` is the variable (or attribute) holding `obj`
    in `parent` (both None at the top). Hashed by identity, as in Ray: `obj` may be unhashable."""

    def __init__(self, obj: Any, name: str | None, parent: Any):
        self.obj, self.name, self.parent = obj, name, parent

    def __repr__(self):
        return f"FailTuple({self.name} [obj={self.obj!r}, parent={self.parent!r}])"


def inspect_serializability(base_obj: Any, name: str | None = None, depth: int = 3,
                            print_file: Any = None) -> tuple[bool, set]:
    """Return (True, set()) if `base_obj` serializes; else print a report to `print_file` (as
    `print(file=...)`: None is stdout) and return (False, {FailureTuple, ...})."""
    def out(level: int, text: str):
        print("    " * level + text, file=print_file)

    out(0, _RULE)
    out(0, f"Checking serializability of {base_obj!r}")
    out(0, _RULE)
    failures: set = set()
    if _check(base_obj, name, None, "", depth, 0, failures, frozenset(), out):
        return True, failures
    out(0, _RULE)
    out(0, f"Found {len(failures)} non-serializable variable(s):")
    for failure in sorted(failures, key=lambda f: str(f.name)):
        out(1, repr(failure))
    out(0, "Remove them, create them where they are used (inside the function or class, on the "
           "worker), or register a serializer for their class (ray.util.register_serializer).")
    out(0, _RULE)
    return False, failures


def _check(obj, name, parent, kind, depth, level, failures, ancestors, out) -> bool:
    """Whether `obj` serializes. If not, add the culprits inside it to `failures` — or `obj`
    itself, when `depth` is spent or none of its members fails. `ancestors` (ids) stops cycles."""
    try:
        dumps_value(obj)
        return True
    except Exception as exc:
        label = f"{kind} {name!r} " if kind else ""
        out(level, f"!!! FAIL serializing {label}{obj!r}: {exc}")
    found = False
    if depth > 0:
        ancestors = ancestors | {id(obj)}
        for member_kind, member_name, member in _members(obj):
            if id(member) not in ancestors and not _check(
                    member, member_name, obj, member_kind, depth - 1, level + 1, failures,
                    ancestors, out):
                found = True
    if not found:
        failures.add(FailureTuple(obj, name, parent))
    return False


def _members(obj) -> list[tuple[str, str, Any]]:
    """(kind, name, value) of what `obj` carries into its pickle: where a culprit can hide."""
    if inspect.isfunction(obj):
        closure = inspect.getclosurevars(obj)
        return [("closure variable", k, v) for k, v in closure.nonlocals.items()] + [
            ("global", k, v) for k, v in closure.globals.items()]
    if inspect.ismethod(obj):
        return [("method's instance", "__self__", obj.__self__),
                ("method's function", "__func__", obj.__func__)]
    if inspect.isclass(obj):  # static and class methods: their function
        return [("method" if inspect.isfunction(getattr(v, "__func__", v)) else "class attribute",
                 k, getattr(v, "__func__", v))
                for k, v in vars(obj).items() if not (k.startswith("__") and k.endswith("__"))]
    return [("class", "__class__", type(obj))] + [
        ("attribute", k, v) for k, v in getattr(obj, "__dict__", {}).items()]
