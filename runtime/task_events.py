"""Task state changes on their way to the GCS task table (`cluster list tasks`).

A change is noted at once and without the agent's lock (a bounded deque: appends and pops are
atomic), then sent in batches once a second by one thread, so scheduling never waits for the GCS.
While the GCS is unreachable the newest MAX_EVENTS are kept and older ones dropped: the table is
informational, and a later state of a task replaces an earlier one there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from runtime.generated import runtime_pb2 as pb

log = logging.getLogger("node_agent")

SEND_EVERY_S = 1.0
MAX_EVENTS = 100_000
MAX_BATCH = 10_000
KINDS = {pb.TaskSpec.TASK: "NORMAL_TASK", pb.TaskSpec.ACTOR_CREATION: "ACTOR_CREATION_TASK",
         pb.TaskSpec.ACTOR_METHOD: "ACTOR_TASK"}


class TaskEvents:
    def __init__(self, node_id: str, gcs):
        self._node_id = node_id
        self._gcs = gcs
        self._pending: deque = deque(maxlen=MAX_EVENTS)

    def note(self, spec: pb.TaskSpec, state: str, pid: int = 0, error_type: str = "") -> None:
        """The task is in `state` now (e.g. RUNNING on worker `pid`, FAILED with `error_type`)."""
        needs = dict(spec.resources) if state.startswith("PENDING") else None
        self._pending.append((spec.task_id, spec.name, state, spec.kind, spec.actor_id, pid,
                              error_type, time.time(), needs))

    def send_loop(self, stopping: threading.Event) -> None:
        while not stopping.wait(SEND_EVERY_S):
            batch = []
            while self._pending and len(batch) < MAX_BATCH:
                batch.append(self._pending.popleft())
            if not batch:
                continue
            events = [pb.TaskEvent(task_id=t, name=name, state=state, node_id=self._node_id,
                                   worker_pid=pid, error_type=error, kind=KINDS[kind],
                                   actor_id=actor, time=when, required_resources=needs)
                      for t, name, state, kind, actor, pid, error, when, needs in batch]
            try:
                self._gcs.AddTaskEvents(pb.TaskEvents(events=events), timeout=10)
            except Exception as exc:  # informational: what a later batch brings is enough
                log.warning("sending %d task events failed: %s", len(events), exc)
