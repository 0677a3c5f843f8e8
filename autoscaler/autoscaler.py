"""The autoscaler's loop body: observe, reconcile, record, act, publish.

Each `tick` lists the provider's instances (their lifecycle states from their tags), reads the
GCS's cluster state, takes what the actuators finished, hands all of it to the pure
`reconciler.reconcile`, writes the lifecycle moves it returns to the instances' tags, starts its
actions in the background (autoscaler.actuators) and publishes the status (`cluster status`)
to the GCS's KV. The published status carries each node's history and the back-offs, and a
restarted autoscaler reads them back first: with the states in the tags, it resumes where its
predecessor stopped (an install in flight is resumed, a launch that ended unseen is adopted).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from typing import Callable, Mapping, Optional

from autoscaler import lifecycle as L
from autoscaler import planner, reactions
from autoscaler.actuators import Actuators
from autoscaler.reconciler import (REPLACE_HASHES, SETUP_HASHES, Decision, Instance, Observations,
                                   Policy, RuntimeNode, reconcile)
from launcher import tags as T
from launcher.errors import LauncherError
from launcher.runtime_install import RuntimeInstaller
from launcher.updater import NodeUpdater, launch_hash
from runtime.session import AUTOSCALER_STATUS_KEY

log = logging.getLogger("autoscaler")

MAX_EVENTS = 30
HISTORY_KEPT = 12  # steps of each node's history in the published status


def planner_config(config) -> planner.PlannerConfig:
    """The planner's view of the cluster config."""
    types = {name: planner.NodeTypeSpec(name, dict(t.resources), t.min_workers, t.max_workers)
             for name, t in config.node_types.items()}
    return planner.PlannerConfig(types, config.head_node_type, config.max_workers,
                                 config.upscaling_speed, config.idle_timeout_s)


def policy_of(config) -> Policy:
    """The config's lifecycle timeouts and replacement pace."""
    return Policy(install_s=config.install_timeout_minutes * 60,
                  join_s=config.join_timeout_minutes * 60,
                  drain_s=config.drain_timeout_minutes * 60,
                  replace_fraction=config.replace_outdated_fraction)


def demand_from(cluster_state) -> planner.Demand:
    """The GCS's view of what waits: queued work by shape, placement groups not placed yet, and
    the bundles request_resources() asked room for."""
    return planner.Demand(
        tasks=tuple(planner.ResourceDemand(dict(d.shape), d.count) for d in cluster_state.demand),
        placement_groups=tuple(
            planner.PlacementGroupDemand(tuple(dict(b.resources) for b in g.bundles), g.strategy)
            for g in cluster_state.pending_placement_groups),
        requested=tuple(dict(b.resources) for b in cluster_state.requested),
    )


def instances_from(node_tags: Mapping[str, Mapping[str, str]],
                   known: Mapping[str, L.NodeLifecycle]) -> dict[str, Instance]:
    """The provider's listing (node id -> tags) as Instances; histories from `known` when the
    state in the tags is the one known (else the tags win: another process moved the node)."""
    instances = {}
    for node_id, tags in node_tags.items():
        node = L.from_tags(node_id, tags)
        previous = known.get(node_id)
        if previous is not None and previous.state == node.state:
            node = previous
        elif not node.history:
            node = L.NodeLifecycle(node_id, node.state, node.since,
                                   (L.Step(node.state, node.since, "as its tags say"),))
        instances[node_id] = Instance(node_id, tags.get(T.TAG_NODE_TYPE, ""),
                                      tags.get(T.TAG_NODE_KIND) == T.KIND_HEAD, node,
                                      tags.get(T.TAG_LAUNCH_REQUEST, ""),
                                      {k: tags[k] for k in REPLACE_HASHES + SETUP_HASHES
                                       if k in tags})
    return instances


def wanted_hashes(config, provider, installer) -> dict[str, dict[str, str]]:
    """Per worker type, the hash tags an up-to-date worker carries (what its updater would
    write now). Read once: the config and the head's file mounts do not change while this
    autoscaler runs (`cluster up` restarts it when they do)."""
    wanted = {}
    for name, spec in config.worker_types().items():
        updater = NodeUpdater(provider, "", config, T.KIND_WORKER, name, installer=installer)
        wanted[name] = {**updater.wanted_hashes(),
                        T.TAG_LAUNCH_HASH: launch_hash(spec.node_config, config.auth)}
    return wanted


class Autoscaler:
    def __init__(self, config, provider, gcs, head_ip: str, token: str,
                 clock: Callable[[], float] = time.time):
        self.config, self.provider, self.gcs, self.clock = config, provider, gcs, clock
        self.policy = policy_of(config)
        installer = (RuntimeInstaller(log.info, provider.runtime_extras)
                     if provider.installs_runtime else None)
        self.wanted = wanted_hashes(config, provider, installer)
        self.actuators = Actuators(config, provider, gcs, head_ip, token, installer)
        self.events: deque = deque(maxlen=MAX_EVENTS)
        self.known: dict[str, L.NodeLifecycle] = {}
        self.gone: deque = deque(maxlen=MAX_EVENTS)  # nodes terminated, launches refused
        self.backoffs: reactions.Backoffs = {}
        self.spot_failures: reactions.SpotFailures = {}
        self.fallback_after = {name: t.fallback_to_on_demand_after
                               for name, t in config.worker_types().items()
                               if t.fallback_to_on_demand_after is not None}
        self._types: dict[str, str] = {}
        self._id_prefix = uuid.uuid4().hex[:6]
        self._lock = threading.Lock()
        self._restore()

    def tick(self) -> Decision:
        from runtime.generated import runtime_pb2 as pb

        done = self.actuators.snapshot()  # before listing: a launch ending after is in flight
        now = self.clock()
        listing = {node_id: self.provider.node_tags(node_id) for node_id in self.provider.nodes({})}
        state = self.gcs.GetClusterState(pb.Empty(), timeout=10)
        runtime = {n.node_id: RuntimeNode(n.node_id, dict(n.total), dict(n.available),
                                          n.idle_seconds) for n in state.nodes}
        dead = frozenset(state.dead_nodes)
        observations = Observations(
            planner_config(self.config), instances_from(listing, self.known), runtime,
            demand_from(state), dead, self._preempted(listing, dead), dict(self.known),
            done.results, done.busy_nodes, done.launches, self.backoffs, self._id_prefix,
            self.policy, self.wanted, self._node_types(listing), self.spot_failures,
            self.fallback_after)
        decision = reconcile(observations, now)
        self._record(decision, listing)
        self._publish(decision, listing, runtime, state, now)  # before a termination starts
        for action in decision.actions:
            self.actuators.start(action)
        return decision

    def _node_types(self, listing: Mapping) -> dict[str, str]:
        """Node id -> type of the nodes listed now and at the last tick (a node that vanished
        since is still told by its type)."""
        self._types = {node_id: self._types[node_id] for node_id in self.known
                       if node_id in self._types}
        self._types.update({node_id: tags.get(T.TAG_NODE_TYPE, "")
                            for node_id, tags in listing.items()})
        return dict(self._types)

    def _preempted(self, listing: Mapping, dead: frozenset) -> dict[str, str]:
        """Which nodes that vanished unasked, or died, the cloud took away (and why)."""
        vanished = [node_id for node_id, node in self.known.items() if node_id not in listing
                    and node.state not in L.FINAL | {L.TERMINATING}]
        candidates = sorted(set(vanished) | (dead & set(listing)))
        if not candidates:
            return {}
        try:
            return self.provider.preempted(candidates)
        except LauncherError as exc:  # then they count as vanished or dead, as before
            log.warning("asking the provider about %s failed: %s", ", ".join(candidates), exc)
            return {}

    def _record(self, decision: Decision, listing: Mapping) -> None:
        """Write the moves to the instances' tags (the last one per node is enough: the tags
        hold the current state) and keep the histories for the next tick."""
        last = {move.node.node_id: move.node for move in decision.moves
                if move.on_instance and move.node.state not in L.FINAL}
        for node_id, node in last.items():
            if node_id in listing:
                try:
                    self.provider.set_tags(node_id, L.tags_of(node))
                except LauncherError as exc:  # gone meanwhile: the next listing shows it
                    log.warning("recording %s -> %s failed: %s", node_id, node.state, exc)
        with self._lock:
            gone = {move.node.node_id: move.node for move in decision.moves
                    if not move.on_instance}  # its last step holds the whole history
            self.gone.extend(gone.values())
            for message in decision.events:
                log.info(message)
                self.events.append({"time": self.clock(), "message": message})
        self.known = dict(decision.nodes)
        self.backoffs = decision.backoffs
        self.spot_failures = decision.spot_failures

    def _restore(self) -> None:
        """Histories, back-offs and events a predecessor published, if the GCS has them."""
        from runtime.generated import runtime_pb2 as pb

        try:
            reply = self.gcs.KvGet(pb.KvRequest(key=AUTOSCALER_STATUS_KEY), timeout=10)
        except Exception as exc:  # no GCS yet: start from the tags alone
            log.warning("no previous autoscaler status to resume from: %s", exc)
            return
        if not reply.found:
            return
        status = json.loads(reply.value)
        for row in status.get("nodes", []):
            steps = tuple(L.Step(*step) for step in row.get("history", []))
            if steps:
                self.known[row["node_id"]] = L.NodeLifecycle(row["node_id"], steps[-1].state,
                                                             steps[-1].time, steps)
        self.backoffs = {b["node_type"]: reactions.Backoff(**b) for b in status.get("backoffs", [])}
        self.events.extend(status.get("events", []))
        log.info("resumed: %d node histories, %d back-offs", len(self.known), len(self.backoffs))

    def _publish(self, decision: Decision, listing, runtime, state, now: float) -> None:
        from runtime.generated import runtime_pb2 as pb

        status = status_document(self.config, decision, listing, runtime, state, now,
                                 ip=self._ip)
        with self._lock:
            status["events"] = list(self.events)
            status["gone"] = [_node_row(n) for n in self.gone]
        self.gcs.KvPut(pb.KvRequest(key=AUTOSCALER_STATUS_KEY, value=json.dumps(status).encode(),
                                    overwrite=True), timeout=10)

    def _ip(self, node_id: str) -> str:
        """The node's address for the status; "?" when the cloud took it away since the listing
        (a status line is not worth failing the tick for)."""
        try:
            return self.provider.internal_ip(node_id)
        except LauncherError:
            return "?"

    def shutdown(self) -> None:
        self.actuators.shutdown()


def status_document(config, decision: Decision, listing: Mapping, runtime: Mapping, state,
                    now: float, ip: Callable[[str], str]) -> dict:
    """What `cluster status` and `cluster why` show, as one JSON document."""
    nodes = []
    for node_id, tags in sorted(listing.items()):
        node = decision.nodes.get(node_id) or L.from_tags(node_id, tags)
        alive: Optional[RuntimeNode] = runtime.get(node_id)
        nodes.append({
            **_node_row(node),
            "node_type": tags.get(T.TAG_NODE_TYPE, ""),
            "kind": tags.get(T.TAG_NODE_KIND, ""),
            "ip": ip(node_id),
            "stage": tags.get(T.TAG_INSTALL_STAGE, ""),
            "total": dict(alive.total) if alive else {},
            "available": dict(alive.available) if alive else {},
            "idle_s": alive.idle_s if alive else -1,
        })
    plan = decision.plan
    return {
        "time": now,
        "cluster_name": config.cluster_name,
        "max_workers": config.max_workers,
        "node_types": {name: {"resources": dict(t.resources), "min_workers": t.min_workers,
                              "max_workers": t.max_workers}
                       for name, t in config.worker_types().items()},
        "nodes": nodes,
        "demand": [{"shape": dict(d.shape), "count": d.count} for d in state.demand],
        "infeasible": [dict(s) for s in plan.infeasible],
        "unfulfilled": dict(plan.unfulfilled),
        "launching": dict(plan.launch),
        "backoffs": [vars(b) for b in decision.backoffs.values() if b.active(now)],
    }


def _node_row(node: L.NodeLifecycle) -> dict:
    return {"node_id": node.node_id, "state": node.state, "since": node.since,
            "history": [[s.state, s.time, s.reason] for s in node.history[-HISTORY_KEPT:]]}
