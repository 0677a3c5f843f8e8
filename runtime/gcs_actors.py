"""The GCS's actor table: each actor's record (state, hosting agent, restarts) and the names of
the live ones per namespace. Every change is written through to the GCS store before the call
returns, so a restarted GCS still finds actors by id and by name.

An actor whose node dies is restarted on another node while its max_restarts allows, as Ray's
GCS does: the table marks it RESTARTING (keeping its name) and `ActorRestarts` submits its
creation task, kept in its record, to a live node, which places it like any actor creation (here,
forwarded, or queued as demand). A restart on the same node, after its worker died, is the
hosting agent's (runtime.actor_host).

ActorTable is called with the GCS's lock held; ActorRestarts calls agents without it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Mapping

from runtime import rpc
from runtime.gcs_store import Store
from runtime.generated import runtime_pb2 as pb
from runtime.resources import fits

log = logging.getLogger("gcs")

TABLE = "actors"
RESTART_RETRY_S = 1.0  # a restart that found no live node is tried again this often


class ActorTable:
    def __init__(self, store: Store):
        self._store = store
        self._actors: dict[str, pb.ActorInfo] = {}
        self._names: dict[tuple, str] = {}  # (namespace, name) -> actor id, while not DEAD
        for _, value in store.scan(TABLE):
            info = pb.ActorInfo.FromString(value)
            self._actors[info.actor_id] = info
            if info.name and info.state != "DEAD":
                self._names[(info.namespace, info.name)] = info.actor_id

    def register(self, request: pb.ActorInfo) -> pb.ActorReply:
        key = (request.namespace, request.name)
        if request.name and key in self._names:
            existing = self._actors[self._names[key]]
            if existing.actor_id == request.actor_id:  # a retried call whose reply was lost
                return pb.ActorReply(found=True, info=existing)
            return pb.ActorReply(found=True, info=existing, error=(
                f"an actor named {request.name!r} already exists in namespace {request.namespace!r}"))
        info = pb.ActorInfo()
        info.CopyFrom(request)
        info.state = info.state or "PENDING"
        self._actors[info.actor_id] = info
        if info.name:
            self._names[key] = info.actor_id
        self._save(info)
        return pb.ActorReply(found=True, info=info)

    def update(self, request: pb.ActorInfo) -> pb.ActorReply:
        info = self._actors.get(request.actor_id)
        if info is None:
            return pb.ActorReply(found=False)
        if info.state == "DEAD":  # final
            return pb.ActorReply(found=True, info=info)
        if request.node_id:
            info.node_id, info.address = request.node_id, request.address
        if request.pid:
            info.pid = request.pid
        info.num_restarts = max(info.num_restarts, request.num_restarts)
        if request.state == "DEAD":
            self._set_dead(info, request.death_cause)
        else:
            info.state = request.state or info.state
            self._save(info)
        return pb.ActorReply(found=True, info=info)

    def get(self, request: pb.ActorRequest) -> pb.ActorReply:
        actor_id = request.actor_id or self._names.get((request.namespace, request.name))
        info = self._actors.get(actor_id or "")
        return pb.ActorReply(found=info is not None, info=info)

    def listing(self, state: str) -> list:
        return [a for a in self._actors.values() if not state or a.state == state]

    def node_died(self, node_id: str, why: str) -> list[pb.TaskSpec]:
        """The actors the node hosted die, or (restarts left) wait RESTARTING; returns the
        creation tasks to submit again elsewhere."""
        restarts = []
        for info in self._actors.values():
            if info.node_id != node_id or info.state == "DEAD":
                continue
            cause = f"its node {node_id} died ({why})"
            creation = pb.TaskSpec.FromString(info.creation_spec) if info.creation_spec else None
            if creation is None or not _restarts_left(creation, info.num_restarts):
                self._set_dead(info, cause)
                continue
            info.state, info.node_id, info.address, info.pid = "RESTARTING", "", "", 0
            info.num_restarts += 1
            info.death_cause = ""
            self._save(info)
            creation.attempt, creation.hops = info.num_restarts, 0
            restarts.append(creation)
            log.info("actor %s: %s; restarting it on another node (restart %d)",
                     creation.name, cause, info.num_restarts)
        return restarts

    def _set_dead(self, info: pb.ActorInfo, cause: str) -> None:
        info.state = "DEAD"
        info.death_cause = info.death_cause or cause
        key = (info.namespace, info.name)
        if info.name and self._names.get(key) == info.actor_id:
            del self._names[key]
        self._save(info)

    def _save(self, info: pb.ActorInfo) -> None:
        self._store.put(TABLE, info.actor_id, info.SerializeToString())


def _restarts_left(creation: pb.TaskSpec, num_restarts: int) -> bool:
    return creation.max_restarts < 0 or num_restarts < creation.max_restarts


class ActorRestarts:
    """Submits the creation tasks of actors whose node died to a live node: one whose last
    reported free resources fit the actor, else any (it queues there as demand, and the
    autoscaler launches a node for it). live_nodes() -> {node_id: (agent address, free
    resources)}, called with `lock` held."""

    def __init__(self, lock: threading.Condition, live_nodes: Callable[[], Mapping], token: str):
        self._lock = lock
        self._live_nodes = live_nodes
        self._agents = rpc.AgentStubs(token)
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="actor-restarts").start()

    def submit(self, creations: list) -> None:
        for creation in creations:
            self._queue.put(creation)

    def _loop(self) -> None:
        while True:
            creation = self._queue.get()
            while not self._place(creation):
                time.sleep(RESTART_RETRY_S)

    def _place(self, creation: pb.TaskSpec) -> bool:
        with self._lock:
            nodes = dict(self._live_nodes())
        if not nodes:
            return False
        need = dict(creation.resources)
        roomy = {n: v for n, v in nodes.items() if fits(need, v[1])} or nodes
        node_id = max(roomy, key=lambda n: (roomy[n][1].get("CPU", 0.0), n))  # most spare CPU
        address = roomy[node_id][0]
        try:
            self._agents.at(address).SubmitTasks(pb.SubmitTasksRequest(tasks=[creation]),
                                                 timeout=10)
        except Exception as exc:  # that node is going away too: try another
            log.warning("restarting actor %s on %s failed: %s", creation.name, node_id, exc)
            return False
        return True
