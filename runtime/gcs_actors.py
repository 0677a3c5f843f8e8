"""The GCS's actor table: each actor's record (state, hosting agent, restarts) and the names of
the live ones per namespace. Every change is written through to the GCS store before the call
returns, so a restarted GCS still finds actors by id and by name.

Called with the GCS's lock held.
"""

from __future__ import annotations

from runtime.gcs_store import Store
from runtime.generated import runtime_pb2 as pb

TABLE = "actors"


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

    def node_died(self, node_id: str, why: str) -> None:
        for info in self._actors.values():
            if info.node_id == node_id and info.state != "DEAD":
                self._set_dead(info, f"its node {node_id} died ({why})")

    def _set_dead(self, info: pb.ActorInfo, cause: str) -> None:
        info.state = "DEAD"
        info.death_cause = info.death_cause or cause
        key = (info.namespace, info.name)
        if info.name and self._names.get(key) == info.actor_id:
            del self._names[key]
        self._save(info)

    def _save(self, info: pb.ActorInfo) -> None:
        self._store.put(TABLE, info.actor_id, info.SerializeToString())
