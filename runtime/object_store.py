"""A node's object store: the objects this node produced or fetched, and waiting for them.

Small objects (under INLINE_MAX bytes) live in the node agent's memory and travel inside messages.
Large ones are files in a shared-memory directory of this agent (/dev/shm/cluster-objects-PID):
the process that makes one (a driver's `put`, a worker's task result) writes the file itself and
tells the agent its size; a process on this node that reads one maps the file, so numpy/Arrow
buffers inside come back as read-only views into the mapping, without a copy (the layout is in
runtime/serialization.py).

The files count against a capacity. When a new one does not fit, the least recently used objects
no running task needs are spilled: copied to a directory on disk, the shared-memory file removed.
A spilled object is copied back on access when it fits, else read from its disk file; its disk copy
stays until the object is freed, so spilling it again costs nothing. When nothing can be spilled a
put fails with ObjectStoreFullError naming the sizes; a task result or a fetched copy is kept on
disk instead.

The directories go away when the agent stops; `cluster stop` and the next agent started on the node
remove those of an agent that was killed (remove_dirs, remove_stale_dirs).

A waiter registers the ids it misses, so storing an object costs O(waiters on that object), not a
rescan of every waiter's list.
"""

from __future__ import annotations

import io
import mmap
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from runtime.exceptions import ObjectStoreFullError
from runtime.serialization import Serialized

INLINE_MAX = 100 * 1024
SHM_ROOT = Path("/dev/shm")
DIR_PREFIX = "cluster-objects-"
SHM_FRACTION = 0.8  # of /dev/shm's size: the default capacity ...
MEMORY_FRACTION = 0.3  # ... or of the machine's memory, whichever is smaller
_HOW_TO_GROW = "a larger store: `cluster start --object-store-memory BYTES` or init(object_store_memory=...)"


def shm_dir(pid: int) -> Path:
    return SHM_ROOT / f"{DIR_PREFIX}{pid}"


def spill_dir(runtime_dir: Path, pid: int) -> Path:
    return runtime_dir / "spill" / str(pid)


def default_capacity() -> int:
    shm = os.statvfs(SHM_ROOT)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(shm.f_frsize * shm.f_blocks * SHM_FRACTION, memory * MEMORY_FRACTION))


def remove_dirs(runtime_dir: Path, pids: Iterable[int]) -> None:
    """Remove the store directories of these (stopped) agents."""
    for pid in pids:
        shutil.rmtree(shm_dir(pid), ignore_errors=True)
        shutil.rmtree(spill_dir(runtime_dir, pid), ignore_errors=True)


def remove_stale_dirs(runtime_dir: Path) -> None:
    """Remove the store directories of this user's agents that are gone (killed, not stopped)."""
    stale = []
    for path in SHM_ROOT.glob(f"{DIR_PREFIX}*"):
        pid = path.name[len(DIR_PREFIX):]
        if pid.isdigit() and path.stat().st_uid == os.getuid() and not _alive(int(pid)):
            stale.append(int(pid))
    remove_dirs(runtime_dir, stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_file(path: Union[str, Path], chunks: Iterable) -> None:
    """Write the chunks to a new file with write() (a full /dev/shm is an OSError, not a SIGBUS),
    then rename it into place: a reader never maps a file that is still being written."""
    partial = Path(f"{path}.{os.getpid()}.partial")
    try:
        with open(partial, "wb", buffering=0, opener=lambda p, flags: os.open(p, flags, 0o600)) as f:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                while view.nbytes:
                    view = view[f.write(view):]
        os.rename(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def stage(directory: Optional[str], object_id: str, obj: Serialized) -> Union[bytes, int]:
    """A new object made by this process: small (or no store directory on this node): its bytes;
    large: written into the node's store directory, and its size returned for the agent."""
    if directory is None or obj.size < INLINE_MAX:
        return obj.to_bytes()
    path = os.path.join(directory, object_id)
    try:
        write_file(path, obj.chunks())
    except OSError as exc:
        Path(path).unlink(missing_ok=True)
        raise ObjectStoreFullError(f"cannot write object {object_id} ({obj.size} bytes) into "
                                   f"{directory}: {exc}") from None
    return obj.size


def map_file(path: str) -> memoryview:
    """A read-only view of an object file; the mapping lives as long as views into it do."""
    with open(path, "rb") as f:
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


@dataclass
class _Entry:
    size: int
    data: Optional[bytes] = None  # a small object, in memory; else a file
    in_shm: bool = False  # its shared-memory file exists
    spilled: bool = False  # its disk copy exists


class _Waiter:
    def __init__(self, missing: int, enough: int):
        self.missing = missing  # how many of its ids are not here yet
        self.enough = enough    # done once missing <= enough
        self.event = threading.Event()


class ObjectStore:
    def __init__(self, on_added: Callable[[str], None], directory: Path, spill_directory: Path,
                 capacity: int, in_use: Callable[[], set] = set):
        self.directory = directory
        self.capacity = capacity
        self._spill_directory = spill_directory
        self._in_use = in_use  # ids that running tasks read: never spilled
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        spill_directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._entries: dict[str, _Entry] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # ids in shared memory, least recent first
        self.used = 0  # bytes of shared memory held
        self._lock = threading.Lock()
        self._waiters: dict[str, list[_Waiter]] = {}
        self._on_added = on_added

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self._spill_directory, ignore_errors=True)

    def shm_path(self, object_id: str) -> Path:
        if not (object_id.isascii() and object_id.isalnum()):  # ids come from other processes
            raise ValueError(f"invalid object id {object_id!r}")
        return self.directory / object_id

    def _spill_path(self, object_id: str) -> Path:
        return self._spill_directory / object_id

    # ------------------------------------------------------------------ adding
    def put(self, object_id: str, data: bytes, keep_on_disk: bool = False) -> None:
        """An object given as bytes: kept in memory when small, else written to a file here."""
        if len(data) < INLINE_MAX:
            self._add(object_id, _Entry(len(data), data=data))
            return
        write_file(self.shm_path(object_id), [data])
        self.seal(object_id, len(data), keep_on_disk)

    def put_chunks(self, object_id: str, size: int, chunks: Iterable[bytes]) -> None:
        """An object arriving in chunks (from another node): written to its file as it comes;
        kept on disk if it cannot fit."""
        if size < INLINE_MAX:
            self.put(object_id, b"".join(chunks))
            return
        write_file(self.shm_path(object_id), chunks)
        self.seal(object_id, size, keep_on_disk=True)

    def seal(self, object_id: str, size: int, keep_on_disk: bool = False) -> None:
        """The file shm_path(object_id) of `size` bytes is complete: count it, spilling others to
        make room. Without room: keep it on disk instead, or delete it and raise."""
        path = self.shm_path(object_id)
        if not path.is_file() or path.stat().st_size != size:
            raise ValueError(f"object {object_id}: no file of {size} bytes in {self.directory}")
        entry = _Entry(size)
        in_use = self._in_use()
        with self._lock:
            if object_id in self._entries:  # a second copy (e.g. fetched twice): keep the first
                if not self._entries[object_id].in_shm:
                    path.unlink(missing_ok=True)
                return
            try:
                self._make_room(object_id, size, in_use)
                entry.in_shm = True
                self.used += size
                self._lru[object_id] = None
            except ObjectStoreFullError:
                if not keep_on_disk:
                    path.unlink(missing_ok=True)
                    raise
                shutil.move(path, self._spill_path(object_id))
                entry.spilled = True
        self._add(object_id, entry)

    def _make_room(self, object_id: str, size: int, in_use: set) -> None:
        """Spill least recently used objects until `size` more bytes fit (under the lock)."""
        if self.used + size <= self.capacity:
            return
        if size > self.capacity:
            raise ObjectStoreFullError(
                f"object {object_id} ({size} bytes) is larger than the object store ({self.capacity}"
                f" bytes; {_HOW_TO_GROW})")
        spillable = [i for i in self._lru if i not in in_use]
        freeable = sum(self._entries[i].size for i in spillable)
        if self.used - freeable + size > self.capacity:
            raise ObjectStoreFullError(
                f"object {object_id} ({size} bytes) does not fit in the object store: capacity "
                f"{self.capacity} bytes, {self.used} in use, of which {self.used - freeable} by "
                f"running tasks and cannot be spilled ({_HOW_TO_GROW})")
        for victim in spillable:
            if self.used + size <= self.capacity:
                break
            entry = self._entries[victim]
            if not entry.spilled:
                shutil.copyfile(self.shm_path(victim), self._spill_path(victim))
                entry.spilled = True
            self.shm_path(victim).unlink(missing_ok=True)
            entry.in_shm = False
            del self._lru[victim]
            self.used -= entry.size

    def _add(self, object_id: str, entry: _Entry) -> None:
        with self._lock:
            new = object_id not in self._entries
            self._entries[object_id] = entry
            for waiter in self._waiters.pop(object_id, ()) if new else ():
                waiter.missing -= 1
                if waiter.missing <= waiter.enough:
                    waiter.event.set()
        self._on_added(object_id)

    # ------------------------------------------------------------------ reading
    def size(self, object_id: str) -> int:
        with self._lock:
            entry = self._entries.get(object_id)
            return entry.size if entry is not None else 0

    def listing(self, limit: int) -> list[tuple]:
        """(object id, size, where: IN_MEMORY | SHARED_MEMORY | SPILLED) of up to `limit` objects."""
        with self._lock:
            entries = list(self._entries.items())[:limit or None]
        return [(object_id, e.size, "IN_MEMORY" if e.data is not None else
                 "SHARED_MEMORY" if e.in_shm else "SPILLED") for object_id, e in entries]

    def contains(self, object_id: str) -> bool:
        with self._lock:
            return object_id in self._entries

    def read(self, object_id: str) -> Union[bytes, str, None]:
        """A small object's bytes, or the path of a large object's file (in shared memory, copied
        back there from disk when it fits); None when it is not here."""
        with self._lock:
            entry = self._entries.get(object_id)
            if entry is None or entry.data is not None:
                return None if entry is None else entry.data
            if entry.in_shm:
                self._lru.move_to_end(object_id)
                return str(self.shm_path(object_id))
        in_use = self._in_use()
        with self._lock:
            if entry.in_shm or self._entries.get(object_id) is not entry:
                return str(self.shm_path(object_id)) if entry.in_shm else None
            try:
                self._make_room(object_id, entry.size, in_use)
            except ObjectStoreFullError:
                return str(self._spill_path(object_id))  # read from disk this time
            shutil.copyfile(self._spill_path(object_id), self.shm_path(object_id))
            entry.in_shm = True
            self.used += entry.size
            self._lru[object_id] = None
            return str(self.shm_path(object_id))

    def open(self, object_id: str):
        """(size, binary file object) to read the object through; None if it is not here. A file is
        opened under the lock, so spilling or freeing it meanwhile does not matter."""
        with self._lock:
            entry = self._entries.get(object_id)
            if entry is None or entry.data is not None:
                return None if entry is None else (entry.size, io.BytesIO(entry.data))
            path = self.shm_path(object_id) if entry.in_shm else self._spill_path(object_id)
            return entry.size, open(path, "rb")

    # ------------------------------------------------------------------ freeing
    def free(self, object_ids: Iterable[str]) -> int:
        """Delete these objects here; returns how many were here."""
        count = 0
        with self._lock:
            for object_id in object_ids:
                entry = self._entries.pop(object_id, None)
                if entry is None:
                    continue
                count += 1
                if entry.in_shm:
                    self.shm_path(object_id).unlink(missing_ok=True)
                    del self._lru[object_id]
                    self.used -= entry.size
                if entry.spilled:
                    self._spill_path(object_id).unlink(missing_ok=True)
        return count

    # ------------------------------------------------------------------ waiting
    def wait(self, object_ids: Iterable[str], timeout: float, should_stop: Callable[[], bool]) -> list:
        """Wait until every object is here, `timeout` passes (< 0: never) or should_stop() says so;
        returns the ids that are here."""
        ids = list(dict.fromkeys(object_ids))
        return self.wait_some(ids, len(ids), timeout, should_stop)

    def wait_some(self, object_ids: Iterable[str], num_returns: int, timeout: float,
                  should_stop: Callable[[], bool]) -> list:
        """Wait until num_returns of the objects are here, `timeout` passes (< 0: never) or
        should_stop() says so; returns the ids that are here, in the order given."""
        ids = list(dict.fromkeys(object_ids))
        self._wait(ids, num_returns, timeout, should_stop)
        with self._lock:
            return [i for i in ids if i in self._entries]

    def _wait(self, ids: list, num_returns: int, timeout: float, should_stop) -> None:
        deadline = None if timeout < 0 else time.monotonic() + timeout
        with self._lock:
            missing = [i for i in ids if i not in self._entries]
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
