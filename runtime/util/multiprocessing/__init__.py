"""Ray's `ray.util.multiprocessing`: a `Pool` with Python's `multiprocessing.Pool` API whose
processes are actors on the cluster. `TimeoutError` is multiprocessing's, the one its
AsyncResult.get and imap iterators raise, so `except TimeoutError` code ported from there works."""

from multiprocessing import TimeoutError

from runtime.util.multiprocessing.pool import AsyncResult, IMapIterator, Pool

__all__ = ["AsyncResult", "IMapIterator", "Pool", "TimeoutError"]
