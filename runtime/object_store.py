"""A node's object store: the objects this node produced or fetched, and waiting for them.

Kept in the node agent's memory in this first version; large objects travel between nodes in
chunks (see node_agent.FetchObject). A waiter registers the ids it misses, so storing an object
costs O(waiters on that object), not a rescan of every waiter's list.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, Optional


class _Waiter:
    def __init__(self, missing: int, enough: int):
        self.missing = missing  # how many of its ids are not here yet
        self.enough = enough    # done once missing <= enough
        self.event = threading.Event()


class ObjectStore:
    def __init__(self, on_added: Callable[[str], None]):
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._waiters: dict[str, list[_Waiter]] = {}
        self._on_added = on_added

    def put(self, object_id: str, data: bytes) -> None:
        with self._lock:
            new = object_id not in self._objects
            self._objects[object_id] = data
            for waiter in self._waiters.pop(object_id, ()) if new else ():
                waiter.missing -= 1
                if waiter.missing <= waiter.enough:
                    waiter.event.set()
        self._on_added(object_id)

    def get(self, object_id: str) -> Optional[bytes]:
        with self._lock:
            return self._objects.get(object_id)

    def contains(self, object_id: str) -> bool:
        with self._lock:
            return object_id in self._objects

    def wait(self, object_ids: Iterable[str], timeout: float, should_stop: Callable[[], bool]) -> dict:
        """Wait until every object is here, `timeout` passes (< 0: never) or should_stop() says so."""
        ids = list(dict.fromkeys(object_ids))
        self._wait(ids, len(ids), timeout, should_stop)
        with self._lock:
            return {i: self._objects[i] for i in ids if i in self._objects}

    def wait_some(self, object_ids: Iterable[str], num_returns: int, timeout: float,
                  should_stop: Callable[[], bool]) -> list:
        """Wait until num_returns of the objects are here, `timeout` passes (< 0: never) or
        should_stop() says so; returns the ids that are here, in the order given."""
        ids = list(dict.fromkeys(object_ids))
        self._wait(ids, num_returns, timeout, should_stop)
        with self._lock:
            return [i for i in ids if i in self._objects]

    def _wait(self, ids: list, num_returns: int, timeout: float, should_stop) -> None:
        deadline = None if timeout < 0 else time.monotonic() + timeout
        with self._lock:
            missing = [i for i in ids if i not in self._objects]
            enough = len(ids) - num_returns  # done when at most this many are missing
            if len(missing) <= enough:
                return
            waiter = _Waiter(len(missing), enough)
            for object_id in missing:
                self._waiters.setdefault(object_id, []).append(waiter)
        try:
            while not waiter.event.is_set() and not should_stop():
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return
                waiter.event.wait(min(remaining, 1.0))
        finally:
            with self._lock:
                for object_id in missing:
                    waiters = self._waiters.get(object_id)
                    if waiters and waiter in waiters:
                        waiters.remove(waiter)
                        if not waiters:
                            del self._waiters[object_id]
