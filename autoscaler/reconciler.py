"""The autoscaler's loop body: read the provider and the GCS, ask the planner, act, publish status.

All policy lives in autoscaler.planner (pure); this module only gathers the inputs and carries out
the plan: creating nodes and setting them up in the background, terminating nodes, backing off node
types whose launches fail.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from autoscaler import planner
from autoscaler.status import format_shape
from launcher import tags as T
from launcher.errors import LauncherError
from launcher.runtime_install import RuntimeInstaller
from launcher.updater import NodeUpdater, launch_hash, node_env
from runtime.session import AUTOSCALER_STATUS_KEY, logs_dir

log = logging.getLogger("autoscaler")

JOIN_TIMEOUT_S = 300.0  # a launched node that has not joined the runtime by then is replaced
BACKOFF_S = 60.0  # a node type whose launch failed is not launched again for this long
MAX_EVENTS = 30
MAX_PARALLEL_SETUPS = 16  # nodes set up at once; more wait their turn
DRAIN_SETTLE_S = 1.0  # a few heartbeats: work forwarded before a drain has shown up by then


def planner_config(config, capped: Optional[Mapping[str, int]] = None) -> planner.PlannerConfig:
    """The planner's view of the config; a type in `capped` may not grow beyond the count given."""
    capped = capped or {}
    types = {}
    for name, t in config.node_types.items():
        max_workers = min(t.max_workers, capped[name]) if name in capped else t.max_workers
        types[name] = planner.NodeTypeSpec(
            name, dict(t.resources), min(t.min_workers, max_workers), max_workers
        )
    return planner.PlannerConfig(
        types, config.head_node_type, config.max_workers, config.upscaling_speed, config.idle_timeout_s
    )


def node_states(config, provider_nodes: dict, gcs_nodes: dict, now: float) -> list:
    """Join what the provider has with what the runtime reports, into the planner's node view.

    provider_nodes: node id -> tags; gcs_nodes: node id -> NodeInfo (GCS node ids are provider ids).
    A provider node the runtime does not know yet is "launching": its type's full capacity is on
    the way.
    """
    states = []
    for node_id, tags in sorted(provider_nodes.items()):
        node_type = tags.get(T.TAG_NODE_TYPE, "")
        is_head = tags.get(T.TAG_NODE_KIND) == T.KIND_HEAD
        info = gcs_nodes.get(node_id)
        if info is not None:
            idle_since = now - info.idle_seconds if info.idle_seconds >= 0 else None
            states.append(
                planner.NodeState(
                    node_id, node_type, is_head, dict(info.total), dict(info.available), idle_since
                )
            )
        else:
            capacity = (
                dict(config.node_types[node_type].resources)
                if node_type in config.node_types
                else {}
            )
            states.append(
                planner.NodeState(
                    node_id, node_type, is_head, capacity, capacity, None, launching=True
                )
            )
    return states


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


@dataclass
class Reconciler:
    config: object  # ClusterConfig
    provider: object  # NodeProvider
    gcs: object  # GcsStub
    head_ip: str
    token: str
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    _backoff_until: dict = field(default_factory=dict)
    _launched_at: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self._installer = (RuntimeInstaller(log.info, self.provider.runtime_extras)
                           if self.provider.installs_runtime else None)
        self._setups = ThreadPoolExecutor(MAX_PARALLEL_SETUPS, thread_name_prefix="setup")

    def tick(self) -> planner.Plan:
        from runtime.generated import runtime_pb2 as pb

        now = self.clock()
        provider_nodes = {i: self.provider.node_tags(i) for i in self.provider.nodes({})}
        state = self.gcs.GetClusterState(pb.Empty(), timeout=10)
        gcs_nodes = {n.node_id: n for n in state.nodes}
        self._replace_broken(provider_nodes, gcs_nodes, now)
        nodes = node_states(self.config, provider_nodes, gcs_nodes, now)
        config = planner_config(self.config, self._backed_off_caps(provider_nodes, now))
        plan = planner.plan(config, nodes, {}, demand_from(state), now)
        self._terminate(self._drained(plan.terminate, nodes), provider_nodes)
        for node_type, count in sorted(plan.launch.items()):
            self._launch(node_type, count, state)
        self._publish(provider_nodes, gcs_nodes, state, plan, now)
        return plan

    def _drained(self, terminations, nodes: list) -> list:
        """Idle nodes about to be removed are drained first: taken out of every node's view, so no
        work is forwarded there, then checked again a few heartbeats later. One that got work in
        the meantime stays; the rest may go."""
        from runtime.generated import runtime_pb2 as pb

        idle = {n.node_id for n in nodes if n.idle_since is not None and not n.launching}
        draining = [node_id for node_id, _ in terminations if node_id in idle]
        if not draining:
            return list(terminations)
        self.gcs.DrainNodes(pb.DrainRequest(node_ids=draining), timeout=10)
        self.sleep(DRAIN_SETTLE_S)
        state = self.gcs.GetClusterState(pb.Empty(), timeout=10)
        busy = sorted(n.node_id for n in state.nodes if n.node_id in draining and n.idle_seconds < 0)
        if busy:
            self.gcs.DrainNodes(pb.DrainRequest(node_ids=busy, undrain=True), timeout=10)
            for node_id in busy:
                self._event(f"kept {node_id}: it got work while being drained")
        return [(node_id, reason) for node_id, reason in terminations if node_id not in busy]

    def _backed_off_caps(self, provider_nodes: dict, now: float) -> dict:
        """Node types whose launches failed recently, capped at the count they have now."""
        caps = {t: 0 for t, until in self._backoff_until.items() if until > now}
        for tags in provider_nodes.values():
            node_type = tags.get(T.TAG_NODE_TYPE)
            if node_type in caps and tags.get(T.TAG_NODE_KIND) == T.KIND_WORKER:
                caps[node_type] += 1
        return caps

    def _replace_broken(self, provider_nodes: dict, gcs_nodes: dict, now: float) -> None:
        """Terminate workers whose setup failed or that never joined the runtime."""
        broken = []
        for node_id, tags in provider_nodes.items():
            if tags.get(T.TAG_NODE_KIND) != T.KIND_WORKER or node_id in gcs_nodes:
                continue
            if tags.get(T.TAG_NODE_STATUS) == T.STATUS_UPDATE_FAILED:
                broken.append((node_id, "its setup failed"))
            elif now - self._launched_at.setdefault(node_id, now) > JOIN_TIMEOUT_S:
                broken.append(
                    (node_id, f"it did not join the cluster within {JOIN_TIMEOUT_S:.0f}s")
                )
        self._terminate(broken, provider_nodes)

    def _terminate(self, terminations, provider_nodes: dict) -> None:
        ids = [node_id for node_id, _ in terminations]
        if not ids:
            return
        self.provider.terminate(ids)
        for node_id, reason in terminations:
            node_type = provider_nodes.pop(node_id, {}).get(T.TAG_NODE_TYPE, "?")
            self._event(f"terminated {node_id} ({node_type}): {reason}")
            self._launched_at.pop(node_id, None)

    def _launch(self, node_type: str, count: int, state) -> None:
        spec = self.config.node_types[node_type]
        tags = {
            T.TAG_NODE_KIND: T.KIND_WORKER,
            T.TAG_NODE_TYPE: node_type,
            T.TAG_NODE_STATUS: T.STATUS_PENDING,
            T.TAG_LAUNCH_HASH: launch_hash(spec.node_config, self.config.auth),
        }
        try:
            node_ids = self.provider.create(node_type, spec.node_config, tags, count)
        except LauncherError as exc:
            self._backoff_until[node_type] = self.clock() + BACKOFF_S
            self._event(
                f"launching {count} x {node_type} failed, backing off {BACKOFF_S:.0f}s: {exc}"
            )
            return
        self._event(
            f"launched {count} x {node_type} ({', '.join(node_ids)}) for "
            f"{_describe_demand(state.demand) or 'min_workers'}"
        )
        for node_id in node_ids:
            self._launched_at[node_id] = self.clock()
            self._setups.submit(self._set_up, node_id, node_type)

    def _set_up(self, node_id: str, node_type: str) -> None:
        """Run the node's updater, its output and stages going to the node's own log file."""
        env = node_env(self.config, node_type, node_id, self.provider.internal_ip(node_id),
                       self.head_ip, self.token)
        log_dir = logs_dir() / "nodes"
        log_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(log_dir / f"{node_id}.log", "a") as node_log:
            def write(text: str) -> None:
                node_log.write(text if text.endswith("\n") else text + "\n")
                node_log.flush()

            updater = NodeUpdater(self.provider, node_id, self.config, T.KIND_WORKER, node_type,
                                  env=env, installer=self._installer, on_output=write,
                                  on_stage=lambda stage: write(f"==> {stage}"))
            try:
                ran = updater.run()
            except LauncherError as exc:
                write(f"==> failed: {exc}")
                self._event(f"setting up {node_id} ({node_type}) failed: {exc}")
                return
            except Exception as exc:  # the node vanished mid-setup, or the provider failed
                self._event(f"setting up {node_id} ({node_type}) failed: {type(exc).__name__}: {exc}")
                return
        self._event(f"{node_id} ({node_type}) is set up in {time.monotonic() - started:.1f}s "
                    f"({', '.join(ran)})")

    def _event(self, message: str) -> None:
        log.info(message)
        with self._lock:
            self.events.append({"time": self.clock(), "message": message})

    def _publish(self, provider_nodes, gcs_nodes, state, plan, now) -> None:
        from runtime.generated import runtime_pb2 as pb

        nodes = []
        for node_id, tags in sorted(provider_nodes.items()):
            info = gcs_nodes.get(node_id)
            nodes.append(
                {
                    "node_id": node_id,
                    "node_type": tags.get(T.TAG_NODE_TYPE, ""),
                    "kind": tags.get(T.TAG_NODE_KIND, ""),
                    "ip": self.provider.internal_ip(node_id),
                    "status": tags.get(T.TAG_NODE_STATUS, "") if info is None else "running",
                    "total": dict(info.total) if info else {},
                    "available": dict(info.available) if info else {},
                    "idle_s": info.idle_seconds if info else -1,
                }
            )
        with self._lock:
            events = list(self.events)
        status = {
            "time": now,
            "cluster_name": self.config.cluster_name,
            "nodes": nodes,
            "demand": [{"shape": dict(d.shape), "count": d.count} for d in state.demand],
            "infeasible": [dict(s) for s in plan.infeasible],
            "launching": dict(plan.launch),
            "events": events,
        }
        self.gcs.KvPut(
            pb.KvRequest(key=AUTOSCALER_STATUS_KEY, value=json.dumps(status).encode(), overwrite=True),
            timeout=10,
        )


def _describe_demand(demand) -> str:
    return ", ".join(f"{format_shape(d.shape)} x {d.count}" for d in demand)
