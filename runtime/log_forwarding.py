"""What tasks and actors print shows on their driver's terminal, prefixed "(name pid=N)", as in
Ray (`init(log_to_driver=False)` turns it off).

In a worker, `capture()` wraps stdout and stderr: each line still goes to the worker's log file,
and is also queued with the job of the task that printed it; a thread sends the queue to the GCS
every FLUSH_S, and the worker flushes it before it hands back a result, so a task's lines reach
the GCS before its result exists. In the driver, `DriverLogs` long-polls the GCS for its job's
lines and prints them; `get` drains what is pending before it returns, once any line came.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from typing import Callable

from runtime.generated import runtime_pb2 as pb

FLUSH_S = 0.1
POLL_S = 1.0


class _Stream(io.TextIOBase):
    """A worker's stdout or stderr: writes through, and hands each complete line to `sink`."""

    def __init__(self, original, is_stderr: bool, sink: Callable[[str, bool], None]):
        self._original = original
        self._is_stderr = is_stderr
        self._sink = sink
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        self._original.write(text)
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._sink(line, self._is_stderr)
        return len(text)

    def flush(self) -> None:
        self._original.flush()

    def fileno(self) -> int:
        return self._original.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self):
        return self._original.encoding


class WorkerLogs:
    """The worker side: lines queued per job, sent to the GCS in batches."""

    def __init__(self, gcs, context: Callable[[], tuple]):
        self._gcs = gcs
        self._context = context  # () -> (job id, name of the running task or actor)
        self._queue: list = []  # (job id, LogLine)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        threading.Thread(target=self._loop, daemon=True, name="log-forwarding").start()

    def capture(self) -> None:
        sys.stdout = _Stream(sys.stdout, False, self._add)
        sys.stderr = _Stream(sys.stderr, True, self._add)

    def _add(self, text: str, is_stderr: bool) -> None:
        job_id, name = self._context()
        if not job_id:  # not a driver's work (a detached actor's): its log file only
            return
        line = pb.LogLine(prefix=f"({name} pid={self._pid})", text=text, stderr=is_stderr)
        with self._lock:
            self._queue.append((job_id, line))

    def flush(self) -> None:
        with self._lock:
            queued, self._queue = self._queue, []
        by_job: dict[str, list] = {}
        for job_id, line in queued:
            by_job.setdefault(job_id, []).append(line)
        for job_id, lines in by_job.items():
            try:
                self._gcs.AppendLogs(pb.LogLines(job_id=job_id, lines=lines), timeout=10)
            except Exception:  # the GCS is away: the lines are in the worker's log file
                pass

    def _loop(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            if self._queue:
                self.flush()


class DriverLogs:
    """The driver side: prints its job's lines as they arrive."""

    def __init__(self, gcs, job_id: str):
        self._gcs = gcs
        self._job_id = job_id
        self._cursor = 0
        self._lock = threading.Lock()  # guards the cursor while printing: each line prints once
        self._stopped = threading.Event()
        self.seen_any = False
        threading.Thread(target=self._loop, daemon=True, name="driver-logs").start()

    def drain(self, timeout: float = 10.0) -> None:
        """Print what is pending now (giving up after `timeout` if the GCS does not answer)."""
        self._read(0.0, timeout)

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self._read(POLL_S, POLL_S + 10)
            except Exception:  # the cluster went away; the driver is ending
                self._stopped.wait(POLL_S)

    def _read(self, wait: float, timeout: float) -> None:
        reply = self._gcs.ReadLogs(pb.LogRead(job_id=self._job_id, after=self._cursor,
                                              timeout=wait), timeout=timeout)
        first = reply.last - len(reply.lines) + 1  # the cursor of reply.lines[0]
        with self._lock:  # another reader may have printed some of them meanwhile
            fresh = reply.lines[max(0, self._cursor + 1 - first):]
            self._cursor = max(self._cursor, reply.last)
            for line in fresh:
                self.seen_any = True
                print(f"{line.prefix} {line.text}", file=sys.stderr if line.stderr else sys.stdout,
                      flush=True)


