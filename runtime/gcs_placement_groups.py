"""The GCS's placement-group table and the loop that reserves bundles on node agents.

A group is PENDING until every bundle is reserved, then CREATED; REMOVED is final. Reserving is
two-sided: the GCS picks nodes from the free resources the nodes last reported (runtime.placement),
then asks each chosen agent to reserve its bundles; an agent that no longer has the room refuses,
the bundles already reserved elsewhere are given back, and the group waits for the next round.
A group whose node dies goes back to PENDING and is placed again. Pending groups are demand: the
autoscaler reads them from GetClusterState and launches nodes for their bundles. Every change of a
group is written through to the GCS store, so a restarted GCS knows the groups and where their
bundles are reserved (the agents keep their reservations meanwhile).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Mapping

from runtime import rpc
from runtime.gcs_store import Store
from runtime.generated import runtime_pb2 as pb
from runtime.placement import STRATEGIES, place
from runtime.resources import subtract

log = logging.getLogger("gcs")

RETRY_S = 0.5  # pending groups are tried again this often, and whenever a group or node changes
TABLE = "placement_groups"


class PlacementGroupTable:
    """live_nodes() -> {node_id: (agent address, free resources)}, called with `lock` held."""

    def __init__(self, lock: threading.Condition, live_nodes: Callable[[], Mapping], token: str,
                 store: Store):
        self._lock = lock
        self._live_nodes = live_nodes
        self._store = store
        self._groups: dict[str, pb.PlacementGroupInfo] = {}  # in creation order
        self._names: dict[str, str] = {}  # name -> pg id, while not REMOVED
        for _, value in store.scan(TABLE):
            info = pb.PlacementGroupInfo.FromString(value)
            self._groups[info.pg_id] = info
            if info.name and info.state != "REMOVED":
                self._names[info.name] = info.pg_id
        self._to_return: list = []  # (node id, reservation) to give back
        self._agents = rpc.AgentStubs(token)
        self._changed = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="placement-groups").start()

    # -- requests (called with the lock held)
    def create(self, request: pb.PlacementGroupInfo) -> pb.PlacementGroupReply:
        if request.strategy not in STRATEGIES:
            return pb.PlacementGroupReply(error=f"unknown strategy {request.strategy!r} "
                                                f"(expected one of {', '.join(STRATEGIES)})")
        if request.pg_id in self._groups:  # a retried call whose reply was lost
            return pb.PlacementGroupReply(found=True, info=self._groups[request.pg_id])
        if request.name and request.name in self._names:
            return pb.PlacementGroupReply(error=f"a placement group named {request.name!r} exists")
        info = pb.PlacementGroupInfo()
        info.CopyFrom(request)
        info.state = "PENDING"
        self._groups[info.pg_id] = info
        if info.name:
            self._names[info.name] = info.pg_id
        self._save(info)
        self._changed.set()
        return pb.PlacementGroupReply(found=True, info=info)

    def find(self, request: pb.PlacementGroupRequest):
        return self._groups.get(request.pg_id or self._names.get(request.name, ""))

    def remove(self, request: pb.PlacementGroupRequest) -> pb.PlacementGroupReply:
        info = self.find(request)
        if info is None:
            return pb.PlacementGroupReply(found=False)
        if info.state != "REMOVED":
            self._give_back(info)
            info.state = "REMOVED"
            self._names.pop(info.name, None)
            self._save(info)
            self._lock.notify_all()
        return pb.PlacementGroupReply(found=True, info=info)

    def pending(self) -> list:
        return [g for g in self._groups.values() if g.state == "PENDING"]

    def listing(self) -> list:
        return list(self._groups.values())

    def node_died(self, node_id: str) -> None:
        """Groups with a bundle there are placed again, from scratch."""
        for info in self._groups.values():
            if info.state == "CREATED" and any(b.node_id == node_id for b in info.bundles):
                log.info("placement group %s lost node %s: placing it again", info.pg_id, node_id)
                self._give_back(info, dead=node_id)
                info.state = "PENDING"
                self._save(info)

    def _give_back(self, info: pb.PlacementGroupInfo, dead: str = "") -> None:
        by_node: dict = {}
        for index, bundle in enumerate(info.bundles):
            if bundle.node_id and bundle.node_id != dead:
                by_node.setdefault(bundle.node_id, []).append(index)
            bundle.node_id = ""
        for node_id, indexes in by_node.items():
            self._to_return.append((node_id, _reservation(info, indexes)))
        self._changed.set()

    def _save(self, info: pb.PlacementGroupInfo) -> None:
        self._store.put(TABLE, info.pg_id, info.SerializeToString())

    # -- the loop
    def _loop(self) -> None:
        while True:
            self._changed.wait(RETRY_S)
            self._changed.clear()
            try:
                self._round()
            except Exception:  # a bug must not stop placement for good
                log.exception("placement round failed")

    def _round(self) -> None:
        with self._lock:
            returns, self._to_return = self._to_return, []
            nodes = dict(self._live_nodes())
            pending = [(g.pg_id, [dict(b.resources) for b in g.bundles], g.strategy)
                       for g in self.pending()]
        for node_id, reservation in returns:
            if node_id in nodes:
                self._call(nodes[node_id][0], "ReturnBundles", reservation)
        free = {node_id: dict(available) for node_id, (_, available) in nodes.items()}
        for pg_id, bundles, strategy in pending:
            placed = place(bundles, strategy, free)
            if placed is None:
                continue
            reserved = self._reserve(pg_id, bundles, placed, nodes)
            if reserved is None:
                continue
            for bundle, node_id in zip(bundles, placed):
                subtract(free[node_id], bundle)
            with self._lock:
                info = self._groups[pg_id]
                if info.state != "PENDING":  # removed meanwhile
                    self._to_return += reserved
                    self._changed.set()
                    continue
                for bundle, node_id in zip(info.bundles, placed):
                    bundle.node_id = node_id
                info.state = "CREATED"
                self._save(info)
                self._lock.notify_all()
            log.info("placement group %s created on %s", pg_id, ", ".join(sorted(set(placed))))

    def _reserve(self, pg_id: str, bundles: list, placed: list, nodes: Mapping):
        """Reserve every bundle on its node; on any refusal give back the rest and return None."""
        by_node: dict = {}
        for index, node_id in enumerate(placed):
            by_node.setdefault(node_id, []).append(index)
        info = pb.PlacementGroupInfo(pg_id=pg_id, bundles=[pb.Bundle(resources=b) for b in bundles])
        done = []
        for node_id, indexes in sorted(by_node.items()):
            reservation = _reservation(info, indexes)
            reply = self._call(nodes[node_id][0], "ReserveBundles", reservation)
            if reply is None or not reply.ok:
                for other_node, other in done:
                    self._call(nodes[other_node][0], "ReturnBundles", other)
                return None
            done.append((node_id, reservation))
        return done

    def _call(self, address: str, method: str, reservation: pb.BundleReservation):
        try:
            return getattr(self._agents.at(address), method)(reservation, timeout=10)
        except Exception as exc:  # the node is going away; the node table notices soon
            log.warning("%s at %s failed: %s", method, address, exc)
            return None


def _reservation(info: pb.PlacementGroupInfo, indexes: list) -> pb.BundleReservation:
    return pb.BundleReservation(pg_id=info.pg_id, indexes=indexes,
                                bundles=[pb.Bundle(resources=info.bundles[i].resources)
                                         for i in indexes])
