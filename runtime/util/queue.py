"""Ray's `ray.util.queue.Queue`: a first-in first-out queue that tasks, actors and the driver
share, held by an async actor.

The actor keeps an asyncio.Queue and runs its calls on one event loop, many at once, so a `get`
blocked on an empty queue does not stop the `put` that will wake it. The `Queue` object is only
the actor's handle and the size limit, so it pickles: pass it to tasks and actors as an argument.
"""

from __future__ import annotations

import asyncio
import queue
from typing import Any, Iterable, Optional

from runtime import api


class Empty(queue.Empty):
    """Nothing to get: the queue stayed empty (no wait asked for, or the timeout passed)."""


class Full(queue.Full):
    """No room to put: the queue stayed full (no wait asked for, or the timeout passed)."""


class _QueueActor:
    """The actor holding the items. Raising Empty/Full here lets the caller re-raise them."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item, timeout: Optional[float] = None) -> None:
        if timeout is not None and timeout <= 0:  # wait_for(..., 0) gives up without trying
            self.put_nowait(item)
            return
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full(f"queue still full after {timeout}s") from None

    async def get(self, timeout: Optional[float] = None):
        if timeout is not None and timeout <= 0:  # likewise
            return self.get_nowait()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty(f"queue still empty after {timeout}s") from None

    def put_nowait(self, item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"queue is full (maxsize {self.maxsize})") from None

    def put_nowait_batch(self, items: list) -> None:
        """All or nothing: no item goes in unless they all fit."""
        if self.maxsize > 0 and len(items) + self.qsize() > self.maxsize:
            raise Full(f"Cannot add {len(items)} items to queue of size {self.qsize()} "
                       f"and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self):
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("queue is empty") from None

    def get_nowait_batch(self, num_items: int) -> list:
        """All or nothing: no item comes out unless there are num_items."""
        if num_items > self.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size {self.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]


def _result(ref):
    """api.get, raising the actor's Empty/Full as themselves, not wrapped as a task's error."""
    try:
        return api.get(ref)
    except Exception as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, (Empty, Full)):
            raise cause from None
        raise


def _check_timeout(timeout: Optional[float]) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """A queue of at most `maxsize` items (0: no limit), in a new actor created with
    `.options(**actor_options)` (e.g. to name it or place it on a given node)."""

    def __init__(self, maxsize: int = 0, actor_options: Optional[dict] = None):
        self.maxsize = maxsize
        # made remote here, not at import: runtime.api imports runtime.util while it initializes
        self.actor = api.remote(_QueueActor).options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue now."""
        return api.get(self.actor.qsize.remote())

    qsize = size

    def empty(self) -> bool:
        return api.get(self.actor.empty.remote())

    def full(self) -> bool:
        return api.get(self.actor.full.remote())

    def put(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Add an item at the end. block=False: Full at once when there is no room; else wait
        for room, up to `timeout` seconds (None: as long as it takes), then Full."""
        if block:
            _check_timeout(timeout)
            _result(self.actor.put.remote(item, timeout))
        else:
            _result(self.actor.put_nowait.remote(item))

    async def put_async(self, item: Any, block: bool = True,
                        timeout: Optional[float] = None) -> None:
        """put() for asyncio code: the wait runs in a thread, so the event loop goes on."""
        await asyncio.get_running_loop().run_in_executor(None, self.put, item, block, timeout)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Remove and return the first item. block=False: Empty at once when there is none;
        else wait for one, up to `timeout` seconds (None: as long as it takes), then Empty."""
        if not block:
            return _result(self.actor.get_nowait.remote())
        _check_timeout(timeout)
        return _result(self.actor.get.remote(timeout))

    async def get_async(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """get() for asyncio code: the wait runs in a thread, so the event loop goes on."""
        return await asyncio.get_running_loop().run_in_executor(None, self.get, block, timeout)

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Add all the items, in order, or none of them (Full) when they would not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        _result(self.actor.put_nowait_batch.remote(list(items)))

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Remove and return the first `num_items` items, or none of them (Empty) when there
        are fewer."""
        if not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return _result(self.actor.get_nowait_batch.remote(num_items))

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """End the queue's actor; its items are lost and later calls on it fail. Unless `force`,
        calls already sent to it from here are first given up to grace_period_s seconds to be
        taken up (the runtime has no graceful actor exit, so the actor is then killed)."""
        if self.actor is None:
            return
        if not force:
            api.wait([self.actor.qsize.remote()], timeout=grace_period_s)
        api.kill(self.actor)
        self.actor = None
