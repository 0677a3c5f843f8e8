"""The node agent's heartbeat: what this node has free, how long it has been idle, and the work
it could not place (demand, by shape) go to the GCS every HEARTBEAT_S, or at once when the agent
asks (`report_now`: e.g. work just left for another node, so the GCS must not count it twice).
The reply (the cluster view, nodes that died) goes back to the agent.

A node is idle when nothing runs, waits or is reserved on it and nothing started since the last
heartbeat; the autoscaler removes nodes idle long enough.

Lock discipline: the reporter has no lock of its own; `snapshot` takes the agent's lock briefly
to read its state, and the GCS is called without it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from runtime.generated import runtime_pb2 as pb
from runtime.placement import is_group_resource
from runtime.resources import shape_key

log = logging.getLogger("node_agent")

HEARTBEAT_S = 0.3


def demand(queued: Iterable[tuple]) -> list:
    """(task, count) of the queued scheduling classes -> the shapes to report as demand. Work
    waiting for a placement group is not (the pending group is demand of its own), nor work tied
    to one node (another node would not help it)."""
    counts: dict[tuple, int] = {}
    for task, count in queued:
        if any(is_group_resource(k) for k in task.need):
            continue
        if task.spec.node_affinity and not task.spec.node_affinity_soft:
            continue
        key = shape_key(task.need)
        counts[key] = counts.get(key, 0) + count
    return [pb.ShapeCount(shape=dict(k), count=c) for k, c in counts.items()]


class Reporter:
    def __init__(self, node_id: str, gcs, snapshot: Callable[[], tuple],
                 heard: Callable[[pb.HeartbeatReply], None], register: Callable[[], None],
                 stopping: threading.Event):
        self._node_id = node_id
        self._gcs = gcs
        self._snapshot = snapshot  # () -> (free resources, busy now, started count, demand)
        self._heard = heard
        self._register = register
        self._stopping = stopping
        self._wake = threading.Event()
        self._idle_since = time.monotonic()
        self._started = 0  # the agent's count of placements at the last heartbeat

    def report_now(self) -> None:
        self._wake.set()

    def loop(self) -> None:
        while True:
            self._wake.wait(HEARTBEAT_S)
            self._wake.clear()
            if self._stopping.is_set():
                return
            available, busy, started, queued = self._snapshot()
            if busy or started != self._started:
                self._idle_since = None
            elif self._idle_since is None:
                self._idle_since = time.monotonic()
            self._started = started
            idle = -1.0 if self._idle_since is None else time.monotonic() - self._idle_since
            request = pb.HeartbeatRequest(node_id=self._node_id, idle_seconds=idle, demand=queued,
                                          available={k: max(v, 0.0) for k, v in available.items()})
            try:
                reply = self._gcs.Heartbeat(request, timeout=5)
            except Exception as exc:
                log.warning("heartbeat to GCS failed: %s", exc)
                continue
            if reply.reregister:
                self._register()
                continue
            self._heard(reply)
