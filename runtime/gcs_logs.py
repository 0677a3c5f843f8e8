"""The GCS's log table: what workers print, kept per driver (job) until that driver reads it.

Workers send their tasks' output lines here in batches; each driver long-polls for the lines of
its own job after a cursor and prints them with their "(task pid=N)" prefix, as Ray's drivers do.
Each job keeps its last MAX_LINES lines; jobs nobody read for JOB_TTL_S are dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from runtime.generated import runtime_pb2 as pb

MAX_LINES = 10_000
JOB_TTL_S = 600.0


@dataclass
class _JobLog:
    lines: deque = field(default_factory=lambda: deque(maxlen=MAX_LINES))  # (cursor, LogLine)
    # of the last line added; it starts at the time in microseconds, so a driver's cursor from
    # before a GCS restart is behind every line the restarted GCS gets
    cursor: int = field(default_factory=lambda: time.time_ns() // 1000)
    touched: float = field(default_factory=time.monotonic)


class LogTable:
    def __init__(self):
        self._lock = threading.Condition()
        self._jobs: dict[str, _JobLog] = {}

    def append(self, request: pb.LogLines) -> None:
        now = time.monotonic()
        with self._lock:
            job = self._jobs.setdefault(request.job_id, _JobLog())
            for line in request.lines:
                job.cursor += 1
                job.lines.append((job.cursor, line))
            job.touched = now
            for job_id in [j for j, log in self._jobs.items() if now - log.touched > JOB_TTL_S]:
                del self._jobs[job_id]
            self._lock.notify_all()

    def read(self, request: pb.LogRead, is_active) -> pb.LogLines:
        """The job's lines after the cursor, waiting up to request.timeout for one."""
        deadline = time.monotonic() + max(0.0, request.timeout)
        with self._lock:
            while True:
                job = self._jobs.get(request.job_id)
                if job is not None:
                    job.touched = time.monotonic()
                    if job.cursor > request.after:
                        lines = [line for cursor, line in job.lines if cursor > request.after]
                        return pb.LogLines(job_id=request.job_id, lines=lines, last=job.cursor)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not is_active():
                    return pb.LogLines(job_id=request.job_id, last=request.after)
                self._lock.wait(min(remaining, 1.0))
