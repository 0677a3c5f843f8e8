"""Owner-side reference counting: when the process that made an object frees it.

The process that `put` an object, or submitted the task that produces it, owns it. It frees the
object once all of these hold:
1. no ObjectRef the runtime gave it for the object is alive in the process;
2. the ref never escaped: it was never pickled (nested in arguments, inside a put value, returned
   from a task, ...), since another process may then hold it and we cannot count that;
3. the object exists (a dropped task result is freed once the task has stored it);
4. every task the process submitted with the object as a top-level argument has its results, so
   nothing queued or running still needs it. Objects passed to an actor's constructor are kept for
   good: a restarted actor runs the constructor again.
At shutdown a driver frees everything it owns except what 2 and 4 protect. Freeing asks the local
node agent, which drops its copy and tells every other node to drop theirs.

`ObjectRef.__del__` may run in any thread at any moment (garbage collection), so it only appends
to a deque; a background thread does the rest every PERIOD_S.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable, Iterable, Optional

PERIOD_S = 0.2
_BATCH = 10_000  # ids per existence query

log = logging.getLogger("runtime")


class RefTracker:
    def __init__(self, free: Callable[[list], None], existing: Callable[[list], set]):
        self._free = free  # ids -> frees them cluster-wide
        self._existing = existing  # ids -> the subset that exists somewhere
        self._lock = threading.Lock()
        self._live: set = set()  # owned ids whose ref is alive here
        self._escaped: set = set()
        self._held: dict = {}  # id -> submissions it feeds whose results are not known (actors)
        self._feeding: dict = {}  # id -> result ids of tasks it feeds, not yet seen to exist
        self._unreferenced: set = set()  # owned, no ref left, not freed yet
        self._events: deque = deque()  # ("dropped" | "escaped", id), appended without a lock
        self._closed = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="ref-tracker").start()

    def created(self, object_ids: Iterable[str]) -> None:
        with self._lock:
            self._live.update(object_ids)

    def hold(self, object_ids: Iterable[str]) -> None:
        """A call is being made with these as top-level arguments."""
        with self._lock:
            for object_id in object_ids:
                if object_id in self._live:
                    self._held[object_id] = self._held.get(object_id, 0) + 1

    def submitted(self, dependencies: Iterable[str], result_ids: list) -> None:
        """A task was submitted: its dependencies are kept until its results exist."""
        with self._lock:
            self._live.update(result_ids)
            for object_id in dependencies:
                count = self._held.get(object_id, 0)
                if not count:
                    continue
                if count == 1:
                    del self._held[object_id]
                else:
                    self._held[object_id] = count - 1
                self._feeding.setdefault(object_id, set()).update(result_ids)

    def _drain(self) -> None:
        while self._events:
            kind, object_id = self._events.popleft()
            if kind == "escaped":
                if object_id in self._live:
                    self._escaped.add(object_id)
            elif object_id in self._live:
                self._live.discard(object_id)
                if object_id not in self._escaped:
                    self._unreferenced.add(object_id)

    def _ready(self, candidates: Iterable[str], also_exists: bool) -> list:
        """Those candidates no unfinished task needs (and, with also_exists, that exist)."""
        with self._lock:
            candidates = [i for i in candidates if not self._held.get(i)]
            ask = {r for i in candidates for r in self._feeding.get(i, ())}
            if also_exists:
                ask.update(candidates)
        ordered = sorted(ask)
        existing: set = set()
        for start in range(0, len(ordered), _BATCH):
            existing |= self._existing(ordered[start:start + _BATCH])
        ready = []
        with self._lock:
            for object_id in candidates:
                waiting = self._feeding.get(object_id, set()) - existing
                if waiting:
                    self._feeding[object_id] = waiting
                    continue
                self._feeding.pop(object_id, None)
                if not also_exists or object_id in existing:
                    ready.append(object_id)
        return ready

    def _loop(self) -> None:
        while not self._closed.wait(PERIOD_S):
            with self._lock:
                self._drain()
                candidates = list(self._unreferenced)
            if not candidates:
                continue
            try:
                ready = self._ready(candidates, also_exists=True)
                if ready:
                    self._free(ready)
                    with self._lock:
                        self._unreferenced.difference_update(ready)
            except Exception as exc:  # the cluster may be unreachable for a moment: try again
                log.debug("freeing objects failed: %s", exc)

    def alive(self, object_ids: Iterable[str]) -> set:
        """Those of the ids (owned here) that a ref in this process still points to."""
        with self._lock:
            self._drain()
            return {i for i in object_ids if i in self._live}

    def close(self) -> None:
        """Stop; free everything this process still owns that nothing protects (see above)."""
        self._closed.set()
        with self._lock:
            self._drain()
            candidates = list((self._live | self._unreferenced) - self._escaped)
        ready = self._ready(candidates, also_exists=False)
        if ready:
            self._free(ready)


_tracker: Optional[RefTracker] = None


def install(tracker: Optional[RefTracker]) -> None:
    global _tracker
    _tracker = tracker


def hold(object_ids: list) -> None:
    tracker = _tracker
    if tracker is not None and object_ids:
        tracker.hold(object_ids)


def escaped(object_id: str) -> None:
    tracker = _tracker
    if tracker is not None:
        tracker._events.append(("escaped", object_id))


def dropped(object_id: str) -> None:
    tracker = _tracker
    if tracker is not None:
        tracker._events.append(("dropped", object_id))
