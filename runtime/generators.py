"""Generator tasks, as Ray's: a task (or actor method) that yields gives one object per item.

Streaming (the default for a generator function, or num_returns="streaming"): `.remote()` returns
an `ObjectRefGenerator` at once; each `next()` gives the ref of the next item as soon as the
worker has produced it, while the task still runs. The worker stores item i under the id
`item_id(task id, i)` as it is yielded; the task's own result (its return id) is the number of items,
or the error that ended the generator, which the caller gets after the items made before it.

Dynamic (num_returns="dynamic"): the task's one result is a `DynamicObjectRefGenerator` holding the
refs of every item, stored once the generator is exhausted.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from runtime.ids import item_id, task_of
from runtime.serialization import ObjectRef


class ObjectRefGenerator:
    """The refs of a streaming generator task's items, in the order they were yielded."""

    def __init__(self, end: ObjectRef):
        self._end = end  # the task's result: the item count, or its error
        self._task_id = task_of(end.hex())
        self._next_index = 0
        self._count: Optional[int] = None  # known once the task ended
        self._failed = False  # the task raised: after its items, its error is the last ref

    def __iter__(self):
        return self

    def __next__(self) -> ObjectRef:
        return self._next(timeout=None)

    def _next(self, timeout: Optional[float]) -> ObjectRef:
        from runtime import objects_api
        from runtime.client import connected

        if self._count is not None and self._next_index >= self._count:
            if not self._failed:
                raise StopIteration
            self._failed = False
            return self._end
        item = ObjectRef(item_id(self._task_id, self._next_index), _owned=True)
        if self._count is None:
            connected().refs.created([item.hex()])
            ready, _ = objects_api.wait([item, self._end], num_returns=1, timeout=timeout)
            if not ready:
                raise objects_api.GetTimeoutError(
                    f"no item of the generator {self._task_id} within {timeout}s")
            if item not in ready:  # the task ended: did it yield this item before that?
                try:
                    self._count = objects_api.get(self._end)
                except Exception:
                    self._count, self._failed = self._next_index, True
                return self._next(timeout)
        self._next_index += 1
        return item

    def __aiter__(self):
        return self

    async def __anext__(self) -> ObjectRef:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._next, None)
        except StopIteration:
            raise StopAsyncIteration from None

    def wait_ids(self) -> list:
        """The objects whose existence makes `next()` return at once: the next item or the end
        ([] when the generator is exhausted)."""
        if self._count is not None:
            return [] if self._next_index >= self._count and not self._failed else [self._end.hex()]
        return [item_id(self._task_id, self._next_index), self._end.hex()]

    def completed(self) -> ObjectRef:
        """A ref that is ready when the task has ended (`get` on it raises the task's error)."""
        return self._end

    def is_finished(self) -> bool:
        return self._count is not None and self._next_index >= self._count and not self._failed

    def __repr__(self):
        return f"ObjectRefGenerator({self._task_id})"

    def __del__(self):
        """Items never taken are freed with the generator, once the task has said how many."""
        if self._count is None or self._next_index >= self._count:
            return
        from runtime.client import is_initialized, connected

        if is_initialized():
            connected().refs.created([item_id(self._task_id, i)
                                      for i in range(self._next_index, self._count)])
            for i in range(self._next_index, self._count):
                ObjectRef(item_id(self._task_id, i), _owned=True)  # dropped at once: freed


class DynamicObjectRefGenerator:
    """The value of a num_returns="dynamic" task: iterate it for the refs of the items."""

    def __init__(self, refs: list):
        self._refs = list(refs)

    def __iter__(self):
        return iter(self._refs)

    def __len__(self):
        return len(self._refs)

    def __repr__(self):
        return f"DynamicObjectRefGenerator({len(self._refs)} items)"
