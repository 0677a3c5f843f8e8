"""Ray's `ray.util.ActorPool`: spread calls over a fixed set of actors, one call per actor at a
time, and hand the results back in submission order or as they finish.

`fn(actor, value)` makes the call and returns its ObjectRef; the actor counts as busy until that
result has been taken with `get_next`/`get_next_unordered`. Submissions made while every actor is
busy wait here, in order, and go out as results are taken and actors come free.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from runtime import api

TIMEOUT_MESSAGE = "Timed out waiting for result"


class ActorPool:
    """A pool over `actors` (handles); see the module docstring."""

    def __init__(self, actors: Iterable):
        self._idle_actors = list(actors)
        self._future_to_actor: dict = {}  # ref -> (submission index, actor running it)
        self._index_to_future: dict = {}  # submission index -> ref, for results in order
        self._next_task_index = 0
        self._next_return_index = 0  # the submission get_next returns next
        self._pending_submits: list = []  # (fn, value) waiting for an idle actor

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable) -> Iterator:
        """Submit fn over every value now; the generator yields the results in the order of
        `values`. As in Ray, results of earlier submissions not yet taken are dropped first."""
        self._drop_pending()
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next)

    def map_unordered(self, fn: Callable[[Any, Any], Any], values: Iterable) -> Iterator:
        """Like map(), but the generator yields each result as soon as it is ready."""
        self._drop_pending()
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next_unordered)

    def _results(self, take: Callable[[], Any]) -> Iterator:
        while self.has_next():
            yield take()

    def _drop_pending(self) -> None:
        """Forget every submission whose result was not taken: queued ones never run, and the
        actors of running ones count as idle again (their new calls queue behind the old)."""
        self._pending_submits.clear()
        self._idle_actors += [actor for _, actor in self._future_to_actor.values()]
        self._future_to_actor.clear()
        self._index_to_future.clear()
        self._next_return_index = self._next_task_index

    def submit(self, fn: Callable[[Any, Any], Any], value) -> None:
        """Call fn(actor, value) on an idle actor, or queue it until one comes free."""
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        future = fn(actor, value)
        self._future_to_actor[future] = (self._next_task_index, actor)
        self._index_to_future[self._next_task_index] = future
        self._next_task_index += 1

    def has_next(self) -> bool:
        """Whether a submitted call's result has not been taken yet."""
        return bool(self._future_to_actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """The result of the oldest submission not yet taken, waiting up to `timeout` seconds.

        TimeoutError when it is not ready in time; with ignore_if_timedout the submission is
        also given up (its actor counts as idle again) so the next call moves past it. A call
        that raised raises here. StopIteration when nothing is pending.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        future = self._index_to_future[self._next_return_index]
        if timeout is not None and not api.wait([future], timeout=timeout)[0]:
            if not ignore_if_timedout:
                raise TimeoutError(TIMEOUT_MESSAGE)
            self._take(future)
            raise TimeoutError(f"{TIMEOUT_MESSAGE}. The task {future} has been ignored.")
        self._take(future)
        return api.get(future)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """The result of whichever pending submission is ready first, waiting up to `timeout`
        seconds. TimeoutError when none is ready in time; with ignore_if_timedout the oldest
        pending submission is given up as well. StopIteration when nothing is pending."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = api.wait(list(self._future_to_actor), num_returns=1, timeout=timeout)
        if not ready:
            if not ignore_if_timedout:
                raise TimeoutError(TIMEOUT_MESSAGE)
            oldest = self._index_to_future[min(self._index_to_future)]
            self._take(oldest)
            raise TimeoutError(f"{TIMEOUT_MESSAGE}. The task {oldest} has been ignored.")
        self._take(ready[0])
        return api.get(ready[0])

    def _take(self, future) -> None:
        """The submission behind `future` is done with: its actor is free for the next."""
        index, actor = self._future_to_actor.pop(future)
        del self._index_to_future[index]
        self._next_return_index = max(self._next_return_index, index + 1)
        self._return_actor(actor)

    def _return_actor(self, actor) -> None:
        self._idle_actors.append(actor)
        if self._pending_submits:
            self.submit(*self._pending_submits.pop(0))

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self):
        """Take an idle actor out of the pool; None when none is free (see has_free)."""
        return self._idle_actors.pop() if self.has_free() else None

    def push(self, actor) -> None:
        """Add an actor to the pool (it takes a waiting submission at once, if any).
        ValueError when it is in the pool already."""
        busy = [a for _, a in self._future_to_actor.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
