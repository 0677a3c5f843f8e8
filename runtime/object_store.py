"""A node's object store: the objects this node produced or fetched, and waiting for them.

Kept in the node agent's memory in this first version; large objects travel between nodes in
chunks (see node_agent.FetchObject).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, Optional


class ObjectStore:
    def __init__(self, on_added: Callable[[str], None]):
        self._objects: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._on_added = on_added

    def put(self, object_id: str, data: bytes) -> None:
        with self._cond:
            self._objects[object_id] = data
            self._cond.notify_all()
        self._on_added(object_id)

    def get(self, object_id: str) -> Optional[bytes]:
        with self._cond:
            return self._objects.get(object_id)

    def contains(self, object_id: str) -> bool:
        with self._cond:
            return object_id in self._objects

    def wait(self, object_ids: Iterable[str], timeout: float, should_stop: Callable[[], bool]) -> dict:
        """Wait until every object is here, `timeout` passes (< 0: never) or should_stop() says so."""
        ids = list(object_ids)
        deadline = None if timeout < 0 else time.monotonic() + timeout
        with self._cond:
            while True:
                found = {i: self._objects[i] for i in ids if i in self._objects}
                if len(found) == len(ids) or should_stop():
                    return found
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return found
                self._cond.wait(min(remaining, 1.0))
