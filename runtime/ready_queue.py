"""A node's ready queue: tasks whose dependencies are here, waiting for a place.

Tasks wait in FIFO order per scheduling class: same resources, same kind, same forwarding budget.
All tasks of a class would be placed the same way, so when the first one finds no room, the ones
behind it need not be looked at: a scheduling pass costs O(classes + tasks placed), not O(tasks
queued). With 10,000 queued no-op tasks and two CPUs, looking at every task after each finished
one made the queue itself the bottleneck.
"""

from __future__ import annotations

from collections import deque
from itertools import chain
from typing import Callable, Iterable, Iterator, Optional


class ReadyQueue:
    def __init__(self, class_of: Callable[[object], tuple]):
        self._class_of = class_of  # task -> its scheduling class (hashable)
        self._classes: dict[tuple, deque] = {}

    def append(self, task) -> None:
        self._queue(task).append(task)

    def appendleft(self, task) -> None:
        """Back to the front of its class: a retried or returned task goes first."""
        self._queue(task).appendleft(task)

    def extendleft(self, tasks: Iterable) -> None:
        """`tasks` to the front, in the order given."""
        for task in reversed(list(tasks)):
            self.appendleft(task)

    def _queue(self, task) -> deque:
        return self._classes.setdefault(self._class_of(task), deque())

    def classes(self) -> list[tuple]:
        return list(self._classes)

    def tasks(self, cls: tuple) -> list:
        return list(self._classes.get(cls, ()))

    def head(self, cls: tuple) -> Optional[object]:
        queue = self._classes.get(cls)
        return queue[0] if queue else None

    def pop(self, cls: tuple):
        queue = self._classes[cls]
        task = queue.popleft()
        if not queue:
            del self._classes[cls]
        return task

    def counts(self) -> Iterator[tuple]:
        """(a task of the class, how many are queued) per class."""
        return ((queue[0], len(queue)) for queue in self._classes.values())

    def remove_if(self, predicate: Callable[[object], bool]) -> list:
        """Take out the tasks `predicate` picks (O(tasks queued)); returns them."""
        removed = []
        for cls, queue in list(self._classes.items()):
            kept = deque()
            for task in queue:
                (removed if predicate(task) else kept).append(task)
            if kept:
                self._classes[cls] = kept
            else:
                del self._classes[cls]
        return removed

    def __iter__(self) -> Iterator:
        return chain.from_iterable(list(self._classes.values()))

    def __len__(self) -> int:
        return sum(len(q) for q in self._classes.values())

    def __bool__(self) -> bool:
        return bool(self._classes)
