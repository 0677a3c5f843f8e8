"""The global control store: one process on the head that knows the cluster.

It holds live nodes (from registrations and heartbeats), the demand each node could not place,
object locations, actors (state, hosting agent, names per namespace), a key-value table
(functions, classes, autoscaler status), and what workers print, until their driver reads it. `GetClusterState` is the
one call the autoscaler reads; its cost grows with nodes and distinct shapes, not queued tasks.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

from runtime import rpc
from runtime.generated import runtime_pb2 as pb
from runtime.gcs_logs import LogTable
from runtime.gcs_placement_groups import PlacementGroupTable
from runtime.generated import runtime_pb2_grpc as pb_grpc
from runtime.resources import shape_key

log = logging.getLogger("gcs")

NODE_TIMEOUT_S = 10.0  # a node silent this long is dead ($CLUSTER_NODE_TIMEOUT_S overrides)
MAX_TASK_RECORDS = 10_000  # the task table keeps the latest state of this many tasks
DEAD_NODES_KEPT_S = 60.0  # heartbeats name nodes that died this recently
MAX_LOST_OBJECTS = 100_000  # lost object ids remembered (for lineage reconstruction)


@dataclass
class _Node:
    info: pb.NodeInfo
    last_heartbeat: float
    demand: dict = field(default_factory=dict)  # shape key -> count


class GcsServicer(pb_grpc.GcsServicer):
    def __init__(self, token: str, node_timeout_s: float = NODE_TIMEOUT_S):
        self._lock = threading.Condition()
        self._nodes: dict[str, _Node] = {}
        self._kv: dict[str, bytes] = {}
        self._locations: dict[str, set[str]] = defaultdict(set)
        self._sizes: dict[str, int] = {}  # object id -> bytes, while it has a location
        self._node_timeout_s = node_timeout_s
        self._actors: dict[str, pb.ActorInfo] = {}
        self._actor_names: dict[tuple, str] = {}  # (namespace, name) -> actor id, while not DEAD
        self._requested: list = []  # request_resources() bundles
        self._tasks: OrderedDict[str, pb.TaskEvent] = OrderedDict()  # latest event, oldest first
        self._dead: dict[str, float] = {}  # node id -> when it died
        self._lost: OrderedDict[str, None] = OrderedDict()  # objects whose every copy died
        self._groups = PlacementGroupTable(self._lock, self._free_resources, token)
        self._logs = LogTable()  # its own lock: reads wait long

    # -- nodes
    def RegisterNode(self, request, context):
        with self._lock:
            info = pb.NodeInfo()
            info.CopyFrom(request)
            info.available.update(request.total)
            self._nodes[request.node_id] = _Node(info, time.monotonic())
            log.info("node %s registered at %s (%s)", request.node_id, request.address, request.node_type)
        return pb.Empty()

    def UnregisterNode(self, request, context):
        with self._lock:
            self._drop_node(request.node_id, "unregistered")
        return pb.Empty()

    def Heartbeat(self, request, context):
        with self._lock:
            node = self._nodes.get(request.node_id)
            if node is None:
                return pb.HeartbeatReply(reregister=True)
            node.last_heartbeat = time.monotonic()
            node.info.available.clear()
            node.info.available.update(request.available)
            node.info.idle_seconds = request.idle_seconds
            node.demand = {shape_key(d.shape): d.count for d in request.demand}
            self._expire_nodes()
            # draining nodes are left out: no node forwards work to one that is about to go
            return pb.HeartbeatReply(
                nodes=[n.info for n in self._nodes.values() if not n.info.draining],
                dead_nodes=self._recently_dead())

    def DrainNodes(self, request, context):
        """Before the autoscaler removes idle nodes: take them out of every node's view."""
        with self._lock:
            for node_id in request.node_ids:
                if node_id in self._nodes:
                    self._nodes[node_id].info.draining = not request.undrain
        return pb.Empty()

    def GetClusterState(self, request, context):
        with self._lock:
            self._expire_nodes()
            totals: dict[tuple, int] = defaultdict(int)
            for node in self._nodes.values():
                for key, count in node.demand.items():
                    totals[key] += count
            demand = [pb.ShapeCount(shape=dict(key), count=c) for key, c in sorted(totals.items())]
            return pb.ClusterState(nodes=[n.info for n in self._nodes.values()], demand=demand,
                                   timestamp=time.time(),
                                   pending_placement_groups=self._groups.pending(),
                                   requested=self._requested, dead_nodes=self._recently_dead())

    def RequestResources(self, request, context):
        with self._lock:
            self._requested = list(request.bundles)
        return pb.Empty()

    def _free_resources(self) -> dict:
        """node id -> (agent address, free resources), for placing bundles: draining nodes left out."""
        self._expire_nodes()
        return {node_id: (n.info.address, n.info.available)
                for node_id, n in self._nodes.items() if not n.info.draining}

    # -- task table: each task's latest state, for `cluster list tasks`
    def AddTaskEvents(self, request, context):
        with self._lock:
            for event in request.events:
                record = self._tasks.pop(event.task_id, None)
                if record is None:
                    record = pb.TaskEvent()
                    record.CopyFrom(event)
                elif event.time >= record.time:  # fields the newer event leaves empty are kept
                    record.MergeFrom(event)
                self._tasks[event.task_id] = record
            while len(self._tasks) > MAX_TASK_RECORDS:
                self._tasks.popitem(last=False)
        return pb.Empty()

    def ListTasks(self, request, context):
        with self._lock:
            records = [t for t in reversed(self._tasks.values())
                       if not request.state or t.state == request.state]
        return pb.TaskEvents(events=records[:request.limit or None])

    def ListActors(self, request, context):
        with self._lock:
            actors = [a for a in self._actors.values()
                      if not request.state or a.state == request.state]
        return pb.ActorList(actors=actors[:request.limit or None])

    # -- what workers print, for their drivers (runtime.gcs_logs)
    def AppendLogs(self, request, context):
        self._logs.append(request)
        return pb.Empty()

    def ReadLogs(self, request, context):
        return self._logs.read(request, context.is_active)

    # -- placement groups (runtime.gcs_placement_groups)
    def CreatePlacementGroup(self, request, context):
        with self._lock:
            return self._groups.create(request)

    def RemovePlacementGroup(self, request, context):
        with self._lock:
            return self._groups.remove(request)

    def GetPlacementGroup(self, request, context):
        with self._lock:
            info = self._groups.find(request)
            return pb.PlacementGroupReply(found=info is not None, info=info)

    def WaitPlacementGroup(self, request, context):
        deadline = time.monotonic() + max(0.0, request.timeout)
        with self._lock:
            while True:
                info = self._groups.find(request)
                remaining = deadline - time.monotonic()
                if info is None or info.state != "PENDING" or remaining <= 0 or not context.is_active():
                    return pb.PlacementGroupReply(found=info is not None, info=info)
                self._lock.wait(min(remaining, 1.0))

    def ListPlacementGroups(self, request, context):
        with self._lock:
            return pb.PlacementGroupList(groups=self._groups.listing())

    def _expire_nodes(self):
        deadline = time.monotonic() - self._node_timeout_s
        for node_id in [i for i, n in self._nodes.items() if n.last_heartbeat < deadline]:
            self._drop_node(node_id, f"no heartbeat for {self._node_timeout_s:.0f}s")

    def _recently_dead(self) -> list[str]:
        recent = time.monotonic() - DEAD_NODES_KEPT_S
        return [node_id for node_id, when in self._dead.items() if when > recent]

    def _drop_node(self, node_id: str, why: str):
        if self._nodes.pop(node_id, None) is None:
            return
        log.info("node %s removed: %s", node_id, why)
        now = time.monotonic()
        self._dead = {n: t for n, t in self._dead.items() if t > now - DEAD_NODES_KEPT_S}
        self._dead[node_id] = now
        for object_id in [i for i, holders in self._locations.items() if node_id in holders]:
            holders = self._locations[object_id]
            holders.discard(node_id)
            if not holders:
                del self._locations[object_id]
                self._sizes.pop(object_id, None)
                self._lost[object_id] = None
        while len(self._lost) > MAX_LOST_OBJECTS:
            self._lost.popitem(last=False)
        for info in self._actors.values():
            if info.node_id == node_id and info.state != "DEAD":
                self._set_dead(info, f"its node {node_id} died ({why})")
        self._groups.node_died(node_id)

    # -- actors
    def _set_dead(self, info, cause: str):
        info.state = "DEAD"
        info.death_cause = info.death_cause or cause
        key = (info.namespace, info.name)
        if info.name and self._actor_names.get(key) == info.actor_id:
            del self._actor_names[key]

    def RegisterActor(self, request, context):
        with self._lock:
            key = (request.namespace, request.name)
            if request.name and key in self._actor_names:
                existing = self._actors[self._actor_names[key]]
                return pb.ActorReply(found=True, info=existing, error=(
                    f"an actor named {request.name!r} already exists "
                    f"in namespace {request.namespace!r}"))
            info = pb.ActorInfo()
            info.CopyFrom(request)
            info.state = info.state or "PENDING"
            self._actors[info.actor_id] = info
            if info.name:
                self._actor_names[key] = info.actor_id
            return pb.ActorReply(found=True, info=info)

    def UpdateActor(self, request, context):
        with self._lock:
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
            elif request.state:
                info.state = request.state
            return pb.ActorReply(found=True, info=info)

    def GetActor(self, request, context):
        with self._lock:
            actor_id = request.actor_id or self._actor_names.get((request.namespace, request.name))
            info = self._actors.get(actor_id or "")
            if info is None:
                return pb.ActorReply(found=False)
            return pb.ActorReply(found=True, info=info)

    # -- key-value table
    def KvPut(self, request, context):
        with self._lock:
            exists = request.key in self._kv
            if request.overwrite or not exists:
                self._kv[request.key] = request.value
            return pb.KvReply(found=exists)

    def KvGet(self, request, context):
        with self._lock:
            value = self._kv.get(request.key)
        return pb.KvReply(found=value is not None, value=value or b"")

    # -- object directory
    def AddObjectLocations(self, request, context):
        with self._lock:
            for object_id, size in zip(request.object_ids, request.sizes):
                self._locations[object_id].add(request.node_id)
                self._sizes[object_id] = size
                self._lost.pop(object_id, None)
            self._lock.notify_all()
        return pb.Empty()

    def WaitObjectLocations(self, request, context):
        deadline = time.monotonic() + max(0.0, request.timeout)
        with self._lock:
            while True:
                found = self._known_locations(request.object_ids)
                lost = [i for i in request.object_ids if i in self._lost]
                remaining = deadline - time.monotonic()
                if found or lost or remaining <= 0 or not context.is_active():
                    return pb.WaitLocationsReply(locations=found, lost=lost)
                self._lock.wait(min(remaining, 1.0))

    def _known_locations(self, object_ids):
        found = []
        for object_id in object_ids:
            for node_id in sorted(self._locations.get(object_id, ())):
                node = self._nodes.get(node_id)
                if node is not None:
                    found.append(pb.ObjectLocation(object_id=object_id, node_id=node_id,
                                                   address=node.info.address,
                                                   size=self._sizes.get(object_id, 0)))
                    break
        return found


def serve(ip: str, port: int, token: str, node_timeout_s: float = NODE_TIMEOUT_S) -> tuple:
    """Start a GCS server on ip:port; returns (server, bound port)."""
    server = rpc.make_server(token, max_workers=64)
    pb_grpc.add_GcsServicer_to_server(GcsServicer(token, node_timeout_s), server)
    bound = server.add_insecure_port(f"{ip}:{port}")
    if bound == 0:
        raise OSError(f"GCS cannot listen on {ip}:{port} (address in use?)")
    server.start()
    return server, bound


def main():
    parser = argparse.ArgumentParser(description="Run the cluster's GCS.")
    parser.add_argument("--ip", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    from runtime.session import read_token

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    timeout = float(os.environ.get("CLUSTER_NODE_TIMEOUT_S") or NODE_TIMEOUT_S)
    server, port = serve(args.ip, args.port, read_token(), timeout)
    log.info("GCS listening on %s:%d", args.ip, port)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
