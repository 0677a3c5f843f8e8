"""Ray's `ray.util.multiprocessing.Pool`: Python's `multiprocessing.Pool` API, its processes being
actors spread over the cluster instead of children of this process.

Each of the `processes` actors runs `initializer(*initargs)` once when it starts, as a pool
process does, then runs the chunks of calls sent to it: a chunk is one actor call, so the cost
of a call is paid once per chunk. Chunks go to the actors in turn and each actor runs its own in
the order they came. A call that raises fails its whole chunk (as a failed task does in
multiprocessing). The caller gets the exception the function raised, as Ray's Pool and
multiprocessing hand it back (its own class, args and message), chained to the runtime's task
error, which carries the remote traceback.

Results are collected by a thread per AsyncResult, so callbacks run as soon as the work is done
and before get() returns, as in multiprocessing. imap/imap_unordered keep one chunk per actor in
flight and send an actor its next chunk when it hands one back (Ray's behaviour), so a long
iterable is read as the results are taken, not all at once.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import weakref
from collections import deque
from multiprocessing import TimeoutError
from typing import Any, Callable, Iterable, Iterator, Optional

from runtime import api, client as client_state
from runtime.exceptions import RayTaskError
from runtime.serialization import ObjectRef

logger = logging.getLogger(__name__)


class _PoolProcess:
    """The actor behind one pool process (plain class: made remote by each Pool with its
    ray_remote_args)."""

    def __init__(self, initializer: Optional[Callable], initargs: tuple):
        if initializer is not None:
            initializer(*initargs)

    def run(self, func: Callable, chunk: list) -> list:
        return [func(*args, **kwargs) for args, kwargs in chunk]


def _chunks(calls: Iterator[tuple], size: int) -> Iterator[list]:
    """Lists of `size` (args, kwargs) pairs (the last one shorter), read from `calls` lazily."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"chunksize must be a positive int, got {size!r}")
    while chunk := list(itertools.islice(calls, size)):
        yield chunk


def _get(refs):
    """api.get, raising a failed call's own exception (see the module docstring); the task error
    itself when that exception could not be pickled."""
    try:
        return api.get(refs)
    except RayTaskError as error:
        if error.cause is None:
            raise
        raise error.cause from error


class AsyncResult:
    """What apply_async/map_async/starmap_async return. A thread waits for the chunks, keeps the
    result (or the first error, in submission order), then calls `callback(result)` or
    `error_callback(exception)`, before get()/wait()/ready() see it done."""

    def __init__(self, refs: list, single: bool, callback: Optional[Callable] = None,
                 error_callback: Optional[Callable] = None):
        self._done = threading.Event()
        self._value: Any = None
        self._error: Optional[BaseException] = None
        threading.Thread(target=self._collect, args=(refs, single, callback, error_callback),
                         name="pool-result", daemon=True).start()

    def _collect(self, refs, single, callback, error_callback) -> None:
        try:
            chunks = _get(refs)
            self._value = chunks[0][0] if single else [v for chunk in chunks for v in chunk]
        except Exception as exc:
            self._error = exc
        try:  # a callback that raises shows on stderr; get() still returns
            if self._error is None and callback is not None:
                callback(self._value)
            elif self._error is not None and error_callback is not None:
                error_callback(self._error)
        finally:
            self._done.set()

    def get(self, timeout: Optional[float] = None):
        """The result; the call's exception if it raised; TimeoutError after `timeout` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the result was not ready within {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self, timeout: Optional[float] = None) -> None:
        self._done.wait(timeout)

    def ready(self) -> bool:
        return self._done.is_set()

    def successful(self) -> bool:
        """Whether the work raised nothing; ValueError while it is not done yet."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None


class IMapIterator:
    """The results of imap (in the order of the iterable) or imap_unordered (as chunks finish).
    `next(timeout)` raises TimeoutError when no result comes in time; a chunk whose call raised
    raises that exception at its turn, and iteration can go on past it."""

    def __init__(self, pool: "Pool", func: Callable, iterable: Iterable, chunksize: int,
                 ordered: bool):
        self._pool, self._func, self._ordered = pool, func, ordered
        self._chunks = _chunks((((item,), {}) for item in iterable), chunksize)
        self._running: dict = {}  # ref -> (chunk number, actor slot)
        self._finished: dict = {}  # chunk number -> ref: done, results not taken yet
        self._submitted = self._taken = 0
        self._items: deque = deque()
        for slot in range(len(pool._actors)):
            self._submit_next(slot)

    def _submit_next(self, slot: Optional[int]) -> bool:
        """Send the next chunk to the actor in `slot` (None: the next in turn), if any is left."""
        chunk = next(self._chunks, None)
        if chunk is not None:
            self._running[self._pool._submit(self._func, chunk, slot)] = (self._submitted, slot)
            self._submitted += 1
        return chunk is not None

    def _submit_rest(self) -> None:
        """Send every chunk not sent yet (the pool is closing: no actor takes work later)."""
        while self._submit_next(None):
            pass

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def next(self, timeout: Optional[float] = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._items:
            ref = self._take_finished()
            if ref is not None:
                self._items.extend(_get(ref))
                continue
            if not self._running:
                raise StopIteration
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = api.wait(list(self._running), timeout=remaining)
            if not ready:
                raise TimeoutError(f"no result within {timeout}s")
            number, slot = self._running.pop(ready[0])
            self._finished[number] = ready[0]
            self._submit_next(slot)  # the actor that handed back a chunk gets the next one
        return self._items.popleft()

    def _take_finished(self) -> Optional[ObjectRef]:
        """The finished chunk whose results come next: the next in order, or (unordered) any."""
        if not self._ordered:
            return self._finished.popitem()[1] if self._finished else None
        ref = self._finished.pop(self._taken, None)
        self._taken += ref is not None
        return ref


def _pool_size(processes: Optional[int], address: Optional[str]) -> int:
    """Connect as Ray's Pool does when not connected yet: to `address`, else to the cluster this
    node belongs to ($CLUSTER_ADDRESS or its session), else to a new local cluster with
    `processes` CPUs. The size is `processes`, by default the cluster's CPUs, and never more."""
    if processes is not None and (not isinstance(processes, int) or processes < 1):
        raise ValueError(f"processes must be a positive int or None, got {processes!r}")
    if not client_state.is_initialized():
        if client_state.joins_a_cluster(address):
            api.init(address=address)
        else:
            api.init(num_cpus=processes)
    cpus = int(api.cluster_resources().get("CPU", 0))
    if processes is not None and processes > cpus:
        raise ValueError(f"a pool of {processes} processes needs as many CPUs; the cluster has "
                         f"{cpus}")
    if cpus < 1:
        raise ValueError("the cluster has no CPUs to size the pool by")
    return processes or cpus


class Pool:
    """A pool of `processes` actors (see the module docstring). `ray_remote_args` are the
    actors' options (by default num_cpus=0, as in Ray: a pool process holds no CPU while idle);
    `context` is ignored, as in Ray: there are no local processes to start."""

    def __init__(self, processes: Optional[int] = None, initializer: Optional[Callable] = None,
                 initargs: Optional[Iterable] = None, maxtasksperchild: Optional[int] = None,
                 context: Any = None, ray_address: Optional[str] = None,
                 ray_remote_args: Optional[dict] = None):
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int)
                                             or maxtasksperchild < 1):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if context is not None:
            logger.warning("Pool(context=...) is ignored: the pool's processes are actors")
        actor_class = api.remote(_PoolProcess).options(**{"num_cpus": 0,
                                                          **(ray_remote_args or {})})
        size = _pool_size(processes, ray_address)
        self._start = lambda: actor_class.remote(initializer, tuple(initargs or ()))
        self._max_tasks = maxtasksperchild
        self._actors = [self._start() for _ in range(size)]
        self._chunks_run = [0] * size  # per actor slot, for maxtasksperchild
        self._next_slot = 0
        self._retired: list = []  # actors replaced after maxtasksperchild chunks
        self._stopping: list = []  # their __ray_terminate__ calls (and all after close())
        self._iterators: weakref.WeakSet = weakref.WeakSet()
        self._closed = False
        api.get([actor.__ray_ready__.remote() for actor in self._actors])  # initializer errors

    def _submit(self, func: Callable, chunk: list, slot: Optional[int] = None) -> ObjectRef:
        """Send a chunk to the actor in `slot` (None: the next in turn). An actor that has run
        maxtasksperchild chunks stops after them, and a new one (initializer run again) takes
        its slot, as a pool process is replaced in multiprocessing."""
        if slot is None:
            slot, self._next_slot = self._next_slot, (self._next_slot + 1) % len(self._actors)
        actor = self._actors[slot]
        ref = actor.run.remote(func, chunk)
        self._chunks_run[slot] += 1
        if self._chunks_run[slot] == self._max_tasks:
            self._retired.append(actor)
            self._stopping.append(actor.__ray_terminate__.remote())
            self._actors[slot], self._chunks_run[slot] = self._start(), 0
        return ref

    def _check_running(self) -> None:
        if self._closed:
            raise ValueError("Pool not running")

    def apply(self, func: Callable, args: Iterable = (), kwds: Optional[dict] = None):
        """func(*args, **kwds) on one of the actors; its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable, args: Iterable = (), kwds: Optional[dict] = None,
                    callback: Optional[Callable] = None,
                    error_callback: Optional[Callable] = None) -> AsyncResult:
        self._check_running()
        ref = self._submit(func, [(tuple(args), dict(kwds or {}))])
        return AsyncResult([ref], True, callback, error_callback)

    def map(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None) -> list:
        """[func(x) for x in iterable], run in chunks over the actors."""
        return self.map_async(func, iterable, chunksize).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None,
                  callback: Optional[Callable] = None,
                  error_callback: Optional[Callable] = None) -> AsyncResult:
        return self._map_async(func, [(item,) for item in iterable], chunksize, callback,
                               error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None) -> list:
        """[func(*args) for args in iterable], run in chunks over the actors."""
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None,
                      callback: Optional[Callable] = None,
                      error_callback: Optional[Callable] = None) -> AsyncResult:
        return self._map_async(func, [tuple(args) for args in iterable], chunksize, callback,
                               error_callback)

    def _map_async(self, func, arg_tuples: list, chunksize, callback, error_callback):
        """By default four chunks per actor, as multiprocessing sizes them."""
        self._check_running()
        if chunksize is None:
            chunksize = max(1, math.ceil(len(arg_tuples) / (4 * len(self._actors))))
        refs = [self._submit(func, chunk)
                for chunk in _chunks(((args, {}) for args in arg_tuples), chunksize)]
        return AsyncResult(refs, False, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        """The results of func over iterable, one at a time, in order."""
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable,
                       chunksize: int = 1) -> IMapIterator:
        """The results of func over iterable, one at a time, as they finish."""
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(self, func, iterable, chunksize, ordered) -> IMapIterator:
        self._check_running()
        iterator = IMapIterator(self, func, iterable, chunksize, ordered)
        self._iterators.add(iterator)
        return iterator

    def close(self) -> None:
        """Take no more work; each actor stops once the work already submitted is done (the
        rest of unfinished imap iterators is submitted now, so they still run to the end)."""
        if self._closed:
            return
        self._closed = True
        for iterator in list(self._iterators):
            iterator._submit_rest()
        self._stopping += [actor.__ray_terminate__.remote() for actor in self._actors]

    def terminate(self) -> None:
        """Stop every actor now: work not finished fails (its results raise RayActorError)."""
        self._closed = True
        for actor in self._actors + self._retired:
            api.kill(actor)

    def join(self) -> None:
        """Wait for the actors to stop, after close() or terminate()."""
        if not self._closed:
            raise ValueError("Pool is still running")
        if self._stopping:
            api.wait(self._stopping, num_returns=len(self._stopping))

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc_info) -> None:
        self.terminate()
