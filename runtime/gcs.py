"""The global control store: one process on the head that knows the cluster.

It holds live nodes (from registrations and heartbeats), the demand each node could not place,
object locations, actors (state, hosting agent, names per namespace), a key-value table
(functions, classes, autoscaler status), and what workers print, until their driver reads it.
`GetClusterState` is the one call the autoscaler reads; its cost grows with nodes and distinct
shapes, not queued tasks.

Surviving a restart (the head's supervisor restarts a GCS that exits): the node table, actors,
placement groups, the KV table and request_resources() are written through to a store
(runtime.gcs_store) before each call returns, and read back at start. Nodes read back get a node
timeout to speak again; their first heartbeat is answered `reregister`, and the agent registers
again and publishes every object it holds, which rebuilds the object directory. Task states and
worker output start empty: agents and workers send what happens next.
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
from runtime.exceptions import RuntimeClusterError
from runtime.generated import runtime_pb2 as pb
from runtime.gcs_actors import ActorRestarts, ActorTable
from runtime.gcs_logs import LogTable
from runtime.gcs_placement_groups import PlacementGroupTable
from runtime.gcs_store import MemoryStore, Store, default_url, open_store
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
    restored: bool = False  # read back from the store: not heard from since this GCS started


class GcsServicer(pb_grpc.GcsServicer):
    def __init__(self, token: str, node_timeout_s: float = NODE_TIMEOUT_S, store: Store = None):
        self._lock = threading.Condition()
        self._store = store or MemoryStore()
        now = time.monotonic()
        self._nodes: dict[str, _Node] = {
            key: _Node(_unheard(pb.NodeInfo.FromString(value)), now, restored=True)
            for key, value in self._store.scan("nodes")}
        self._kv: dict[str, bytes] = dict(self._store.scan("kv"))
        self._locations: dict[str, set[str]] = defaultdict(set)
        self._sizes: dict[str, int] = {}  # object id -> bytes, while it has a location
        self._node_timeout_s = node_timeout_s
        self._actors = ActorTable(self._store)
        self._actor_restarts = ActorRestarts(self._lock, self._free_resources, token)
        requested = self._store.get("meta", "requested")
        self._requested = list(pb.ResourceRequest.FromString(requested or b"").bundles)
        self._tasks: OrderedDict[str, pb.TaskEvent] = OrderedDict()  # latest event, oldest first
        self._dead: dict[str, float] = {}  # node id -> when it died
        self._lost: OrderedDict[str, None] = OrderedDict()  # objects whose every copy died
        self._groups = PlacementGroupTable(self._lock, self._free_resources, token, self._store)
        self._logs = LogTable()  # its own lock: reads wait long
        if self._nodes:
            log.info("read back %d nodes, %d actors, %d KV entries from the store; waiting %.0fs "
                     "for the nodes to speak", len(self._nodes), len(self._actors.listing("")),
                     len(self._kv), node_timeout_s)

    # -- nodes
    def RegisterNode(self, request, context):
        """A new node, an agent registering again after this GCS restarted (same instance), or a
        restarted agent (a new instance under a known node id: its predecessor's work is gone)."""
        with self._lock:
            known = self._nodes.get(request.node_id)
            if known is not None and known.info.instance_id != request.instance_id:
                self._drop_node(request.node_id, "its node agent restarted")
            info = pb.NodeInfo()
            info.CopyFrom(request)
            info.available.update(request.total)
            _unheard(info)
            info.draining = known is not None and known.info.draining
            self._nodes[request.node_id] = _Node(info, time.monotonic())
            self._save_node(info)
            log.info("node %s registered at %s (%s)", request.node_id, request.address, request.node_type)
        return pb.Empty()

    def _save_node(self, info: pb.NodeInfo) -> None:
        self._store.put("nodes", info.node_id, info.SerializeToString())

    def UnregisterNode(self, request, context):
        with self._lock:
            self._drop_node(request.node_id, "unregistered")
        return pb.Empty()

    def Heartbeat(self, request, context):
        with self._lock:
            node = self._nodes.get(request.node_id)
            if node is None or node.restored:
                return pb.HeartbeatReply(reregister=True)
            node.last_heartbeat = time.monotonic()
            node.info.available.clear()
            node.info.available.update(request.available)
            node.info.idle_seconds = request.idle_seconds
            node.demand = {shape_key(d.shape): d.count for d in request.demand}
            self._expire_nodes()
            # draining nodes are left out: no node forwards work to one that is about to go
            return pb.HeartbeatReply(nodes=[n.info for n in self._schedulable().values()],
                                     dead_nodes=self._recently_dead())

    def DrainNodes(self, request, context):
        """Before the autoscaler removes idle nodes: take them out of every node's view."""
        with self._lock:
            for node_id in request.node_ids:
                if node_id in self._nodes:
                    self._nodes[node_id].info.draining = not request.undrain
                    self._save_node(self._nodes[node_id].info)
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
            self._store.put("meta", "requested", request.SerializeToString())
        return pb.Empty()

    def _schedulable(self) -> dict:
        """The nodes work may go to: not draining, and heard from since this GCS started (a node
        read back from the store reports its free resources first)."""
        return {node_id: n for node_id, n in self._nodes.items()
                if not n.info.draining and not n.restored}

    def _free_resources(self) -> dict:
        """node id -> (agent address, free resources), for placing bundles."""
        self._expire_nodes()
        return {node_id: (n.info.address, n.info.available)
                for node_id, n in self._schedulable().items()}

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
            actors = self._actors.listing(request.state)
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
        self._store.delete("nodes", node_id)
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
        self._actor_restarts.submit(self._actors.node_died(node_id, why))
        self._groups.node_died(node_id)

    # -- actors (runtime.gcs_actors)
    def RegisterActor(self, request, context):
        with self._lock:
            return self._actors.register(request)

    def UpdateActor(self, request, context):
        with self._lock:
            return self._actors.update(request)

    def GetActor(self, request, context):
        with self._lock:
            return self._actors.get(request)

    # -- key-value table
    def KvPut(self, request, context):
        with self._lock:
            exists = request.key in self._kv
            if request.overwrite or not exists:
                self._kv[request.key] = request.value
                self._store.put("kv", request.key, request.value)
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


def _unheard(info: pb.NodeInfo) -> pb.NodeInfo:
    """A node not heard from since it (re)registered or since this GCS started counts as busy:
    an idleness read back from the store is stale, and the autoscaler would remove a node that
    took work since."""
    info.idle_seconds = -1.0
    return info


def serve(ip: str, port: int, token: str, node_timeout_s: float = NODE_TIMEOUT_S,
          store: Store = None) -> tuple:
    """Start a GCS server on ip:port; returns (server, bound port)."""
    server = rpc.make_server(token, max_workers=64)
    pb_grpc.add_GcsServicer_to_server(GcsServicer(token, node_timeout_s, store), server)
    try:
        bound = server.add_insecure_port(f"{ip}:{port}")
    except RuntimeError:  # gRPC's "Failed to bind"
        bound = 0
    if bound == 0:
        raise OSError(f"GCS cannot listen on {ip}:{port} (address in use?)")
    server.start()
    return server, bound


def main():
    parser = argparse.ArgumentParser(description="Run the cluster's GCS.")
    parser.add_argument("--ip", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--storage",
                        help="where the tables live: sqlite:///PATH (default: <runtime dir>/"
                             "gcs.sqlite3), redis://HOST:PORT[/DB] or memory://")
    args = parser.parse_args()
    from runtime.session import read_token, runtime_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    timeout = float(os.environ.get("CLUSTER_NODE_TIMEOUT_S") or NODE_TIMEOUT_S)
    url = args.storage or default_url(runtime_dir())
    try:
        store = open_store(url)
    except RuntimeClusterError as exc:
        raise SystemExit(f"GCS: {exc}") from None
    server, port = serve(args.ip, args.port, read_token(), timeout, store)
    log.info("GCS listening on %s:%d (tables in %s)", args.ip, port, url)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
