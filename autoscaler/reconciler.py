"""The autoscaler's decisions as one pure step: `reconcile(observations, now) -> Decision`.

Observations are what the provider lists (each instance with its lifecycle from its tags), what the
GCS reports (nodes alive and their use, nodes declared dead, queued demand) and what the actuators
reported since the last step (launches, installs, drains, terminations that ended, with classed
errors). The Decision is the lifecycle moves to record and the actions to start. Nothing here
reads a clock, a cloud or the GCS, so every rule is tested with plain values (tests/
test_reconciler.py); autoscaler.autoscaler gathers the observations and carries the decision out.

Per worker, by state (the head's lifecycle belongs to `cluster up`):
  requested     its launch ended unseen (the autoscaler restarted): allocated
  allocated     install it
  installing    no install running (restart): resume it; past the install timeout: failed
  install-failed  terminate it (it is replaced through the demand it leaves unmet)
  running       declared dead by the GCS: terminate ("node died"); not joined within the join
                timeout: terminate; its files, setup or start commands changed: install again
  draining      drained when idle: got work, running again; else after a short settle, or
                dead: terminate. Drained as outdated: terminate once idle or at the drain timeout
  terminating   still listed long after the terminate call: ask again
  preempted     terminate what is left
An instance that was known and is no longer listed is terminated (history only). Workers whose
machine (launch hash) or runtime is outdated are drained a few at a time (Policy.replace_fraction
of max_workers) and replaced through the demand they no longer take.
Then the planner decides launches and scale-down on the nodes that remain; a back-off (see
autoscaler.reactions) caps its type at the count it has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping, Optional

from autoscaler import lifecycle as L
from autoscaler import planner, reactions
from autoscaler.actions import Action, Drain, Install, Launch, Result, Terminate
from autoscaler.status import format_shape
from launcher import tags as T

REPLACE_HASHES = (T.TAG_LAUNCH_HASH, T.TAG_RUNTIME_HASH)  # differ: a new machine is needed
SETUP_HASHES = (T.TAG_FILES_HASH, T.TAG_SETUP_HASH, T.TAG_START_HASH)  # differ: set up again


@dataclass(frozen=True)
class Policy:
    """How long a node may stay in a state before it is moved on (`cluster status` shows ages),
    and how fast outdated workers are replaced. The config sets the first three and the
    fraction (install_timeout_minutes, join_timeout_minutes, drain_timeout_minutes,
    replace_outdated_fraction)."""

    install_s: float = 900.0  # installing -> install-failed
    join_s: float = 300.0  # running, never seen by the GCS -> terminating
    drain_s: float = 120.0  # draining while busy (a replaced outdated worker) -> terminating
    settle_s: float = 1.0  # draining: a few heartbeats for work forwarded before the drain to show
    terminate_retry_s: float = 60.0  # terminating, still listed -> ask the cloud again
    replace_fraction: float = 0.25  # of max_workers: outdated workers replaced at once (>= 1)


@dataclass(frozen=True)
class Instance:
    """One instance of the cluster as the provider lists it."""

    node_id: str
    node_type: str
    is_head: bool
    lifecycle: L.NodeLifecycle
    launch_request: str = ""  # the Launch that created it
    hashes: Mapping[str, str] = field(default_factory=dict)  # the updater's stage tags, launch hash


@dataclass(frozen=True)
class RuntimeNode:
    """A node alive in the GCS."""

    node_id: str
    total: Mapping[str, float]
    available: Mapping[str, float]
    idle_s: float  # seconds idle; negative: busy


@dataclass(frozen=True)
class Move:
    """A lifecycle step to record: `node` is the node after it (an instance's, or a refused
    launch request's, whose id is the request id)."""

    node: L.NodeLifecycle
    reason: str
    on_instance: bool = True  # False: a launch request; nothing to tag


@dataclass(frozen=True)
class Observations:
    config: planner.PlannerConfig
    instances: Mapping[str, Instance]
    runtime: Mapping[str, RuntimeNode]
    demand: planner.Demand
    dead: frozenset = frozenset()  # node ids the GCS declared dead
    preempted: Mapping[str, str] = field(default_factory=dict)  # taken by the cloud: id -> why
    known: Mapping[str, L.NodeLifecycle] = field(default_factory=dict)  # after the last step
    results: tuple[Result, ...] = ()
    in_flight: frozenset = frozenset()  # node ids an Install, Drain or Terminate still runs on
    launches: Mapping[str, Launch] = field(default_factory=dict)  # still running, by request id
    backoffs: reactions.Backoffs = field(default_factory=dict)
    id_prefix: str = "launch"  # new request ids start with it (unique per autoscaler process)
    policy: Policy = Policy()
    # node type -> the hash tags an up-to-date worker of it carries (launcher.tags): a worker
    # whose launch or runtime hash differs is replaced, one whose files, setup or start commands
    # differ is set up again in place. Empty: nothing is compared.
    wanted: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    node_types: Mapping[str, str] = field(default_factory=dict)  # of nodes seen, gone ones too
    spot_failures: reactions.SpotFailures = field(default_factory=dict)
    fallback_after: Mapping[str, int] = field(default_factory=dict)  # spot type -> failures


@dataclass(frozen=True)
class Decision:
    moves: tuple[Move, ...]
    actions: tuple[Action, ...]
    backoffs: reactions.Backoffs
    events: tuple[str, ...]
    plan: planner.Plan
    nodes: Mapping[str, L.NodeLifecycle]  # every listed instance after the moves
    spot_failures: reactions.SpotFailures = field(default_factory=dict)


def reconcile(observations: Observations, now: float) -> Decision:
    """See the module docstring."""
    step = _Step(observations, now)
    step.take_results()
    step.forget_vanished()
    for instance in sorted(observations.instances.values(), key=lambda i: i.node_id):
        if not instance.is_head:
            step.advance(instance)
    step.replace_outdated()
    plan = step.plan()
    return Decision(tuple(step.moves), tuple(step.actions), step.backoffs, tuple(step.events),
                    plan, {i: step.nodes[i] for i in observations.instances},
                    step.spot_failures)


class _Step:
    """The working state of one reconcile: the nodes as moved so far, what to do, what to say."""

    def __init__(self, obs: Observations, now: float):
        self.obs, self.now = obs, now
        self.nodes = {i: x.lifecycle for i, x in obs.instances.items()}
        self.moves: list[Move] = []
        self.actions: list[Action] = []
        self.events: list[str] = []
        self.backoffs = reactions.expired(obs.backoffs, now)
        self.spot_failures = dict(obs.spot_failures)
        self.terminating: list[str] = []

    # -- moves and actions ------------------------------------------------------------------

    def move(self, node_id: str, to: str, reason: str) -> None:
        self.nodes[node_id] = L.transition(self.nodes[node_id], to, reason, self.now)
        self.moves.append(Move(self.nodes[node_id], reason))

    def terminate(self, node_id: str, reason: str) -> None:
        self.move(node_id, L.TERMINATING, reason)
        self.terminating.append(node_id)
        self.events.append(f"terminating {node_id} ({self._type(node_id)}): {reason}")

    def install(self, node_id: str, resumed: bool) -> None:
        if self.nodes[node_id].state == L.ALLOCATED:
            self.move(node_id, L.INSTALLING, "setting it up")
        self.actions.append(Install(node_id, self._type(node_id)))
        if resumed:
            self.events.append(f"resuming the setup of {node_id} ({self._type(node_id)})")

    def _type(self, node_id: str) -> str:
        instance = self.obs.instances.get(node_id)
        return instance.node_type if instance else self.obs.node_types.get(node_id, "?")

    def _spot_failed(self, node_type: str) -> None:
        if node_type in self.obs.fallback_after:
            self.spot_failures = reactions.spot_failed(self.spot_failures, node_type, self.now)

    def _state(self, node_id: str) -> Optional[str]:
        node = self.nodes.get(node_id)
        return node.state if node else None

    # -- what the actuators reported --------------------------------------------------------

    def take_results(self) -> None:
        for result in self.obs.results:
            action = result.action
            if isinstance(action, Launch):
                self._launch_ended(action, result)
            elif isinstance(action, Install):
                self._install_ended(action, result)
            elif not result.ok:
                verb = "terminating" if isinstance(action, Terminate) else "draining"
                self.events.append(f"{verb} {', '.join(action.node_ids)} failed: {result.error}")

    def _launch_ended(self, launch: Launch, result: Result) -> None:
        what = f"{launch.count} x {launch.node_type}"
        if result.ok:
            self.backoffs = reactions.succeeded(self.backoffs, launch.node_type)
            for node_id in result.node_ids:
                if self._state(node_id) == L.REQUESTED:
                    self.move(node_id, L.ALLOCATED, f"created by {launch.request_id}")
            self.events.append(f"launched {what} ({', '.join(result.node_ids)}) for "
                               f"{launch.reason}")
            return
        self.backoffs = reactions.react(self.backoffs, launch.node_type, result.error_kind,
                                        result.error, self.now)
        if result.error_kind == reactions.CAPACITY and not launch.on_demand:
            self._spot_failed(launch.node_type)
        backoff = self.backoffs[reactions.ALL_TYPES if result.error_kind == reactions.AUTH
                                else launch.node_type]
        request = L.NodeLifecycle(launch.request_id, L.REQUESTED, launch.requested_at,
                                  (L.Step(L.REQUESTED, launch.requested_at, launch.reason),))
        failed = L.transition(request, L.ALLOCATION_FAILED, result.error, self.now)
        self.moves.append(Move(failed, result.error, on_instance=False))
        self.events.append(f"launching {what} failed ({result.error_kind}), no launches of "
                           f"{backoff.node_type} for {backoff.until - self.now:.0f}s: "
                           f"{backoff.message}")

    def _install_ended(self, install: Install, result: Result) -> None:
        if self._state(install.node_id) != L.INSTALLING:
            return  # terminated (or timed out) while it ran
        if result.ok:
            self.move(install.node_id, L.RUNNING, f"set up ({result.detail or 'nothing to do'})")
            self.events.append(f"{install.node_id} ({install.node_type}) is set up "
                               f"({result.detail or 'nothing to do'})")
        else:
            self.move(install.node_id, L.INSTALL_FAILED, result.error)
            self.events.append(f"setting up {install.node_id} ({install.node_type}) failed: "
                               f"{result.error}")

    def _preemption(self, node_id: str) -> str:
        """The cloud's reason the node was taken away, told once as an event."""
        why = self.obs.preempted[node_id]
        self.events.append(f"{node_id} ({self._type(node_id)}) was {why}; its work is retried "
                           "elsewhere and the demand it leaves launches a replacement")
        self._spot_failed(self._type(node_id))
        return why

    def forget_vanished(self) -> None:
        """Instances known at the last step that the provider no longer lists are gone."""
        for node_id, node in sorted(self.obs.known.items()):
            if node_id in self.obs.instances or node.state in L.FINAL or node.state is None:
                continue
            if node_id in self.obs.preempted and L.can_move(node.state, L.PREEMPTED):
                node = L.transition(node, L.PREEMPTED, self._preemption(node_id), self.now)
                self.moves.append(Move(node, node.history[-1].reason, on_instance=False))
                self.terminating.append(node_id)  # what the cloud may have left (a stopped VM)
            expected = node.state in (L.TERMINATING, L.PREEMPTED)
            reason = "terminated" if expected else "vanished from the provider's listing"
            self.moves.append(Move(L.transition(node, L.TERMINATED, reason, self.now), reason,
                                   on_instance=False))
            if not expected:
                self.events.append(f"{node_id} {reason}")

    # -- per node ---------------------------------------------------------------------------

    def advance(self, instance: Instance) -> None:
        node_id, policy = instance.node_id, self.obs.policy
        node, busy = self.nodes[node_id], node_id in self.obs.in_flight
        alive = self.obs.runtime.get(node_id)
        if node_id in self.obs.preempted and L.can_move(node.state, L.PREEMPTED):
            self.move(node_id, L.PREEMPTED, self._preemption(node_id))
            node = self.nodes[node_id]
        if node.state == L.REQUESTED and instance.launch_request not in self.obs.launches:
            self.move(node_id, L.ALLOCATED, "its launch ended while the autoscaler was away")
            node = self.nodes[node_id]
        if node.state == L.ALLOCATED and not busy:
            self.install(node_id, resumed=False)
        elif node.state == L.INSTALLING:
            if node.age(self.now) > policy.install_s:
                reason = f"still installing after {policy.install_s:.0f}s"
                self.move(node_id, L.INSTALL_FAILED, reason)
                self.terminate(node_id, reason)
            elif not busy:
                self.install(node_id, resumed=True)
        elif node.state in (L.INSTALL_FAILED, L.PREEMPTED):
            self.terminate(node_id, "its setup failed" if node.state == L.INSTALL_FAILED
                           else "preempted by the cloud")
        elif node.state == L.RUNNING:
            if node_id in self.obs.dead and alive is None:  # not back (its agent restarted)
                self.terminate(node_id, "node died (heartbeats missed)")
            elif alive is None and node.age(self.now) > policy.join_s:
                self.terminate(node_id, f"it did not join the cluster within "
                                        f"{policy.join_s:.0f}s")
            elif self._stale(instance, SETUP_HASHES) and not busy and not self._outdated(instance):
                self.move(node_id, L.INSTALLING, f"its {self._stale(instance, SETUP_HASHES)} "
                                                 "changed: set up again in place")
                self.install(node_id, resumed=False)
        elif node.state == L.DRAINING:
            self._drain_step(instance, node, alive)
        elif node.state == L.TERMINATING and not busy and \
                node.age(self.now) > policy.terminate_retry_s:
            self.terminating.append(node_id)  # still listed: ask again

    def _drain_step(self, instance: Instance, node: L.NodeLifecycle,
                    alive: Optional[RuntimeNode]):
        """An idle node drained for scale-down goes unless work reached it; an outdated one
        goes once its running work ended, or at its drain timeout."""
        node_id = instance.node_id
        if alive is None:
            self.terminate(node_id, "drained (it left the runtime)")
        elif self._outdated(instance):
            if alive.idle_s >= 0 or node.age(self.now) > self.obs.policy.drain_s:
                self.terminate(node_id, f"replaced: its {self._outdated(instance)} is outdated")
        elif alive.idle_s < 0:
            self.move(node_id, L.RUNNING, "it got work while being drained")
            self.actions.append(Drain((node_id,), undrain=True))
            self.events.append(f"kept {node_id}: it got work while being drained")
        elif node.age(self.now) >= self.obs.policy.settle_s:
            self.terminate(node_id, node.history[-1].reason if node.history else "drained")

    def _stale(self, instance: Instance, tags: tuple) -> str:
        """Which of the hash `tags` differ from what the config wants of its type ("" none)."""
        wanted = self.obs.wanted.get(instance.node_type, {})
        stale = [tag.removesuffix("-hash") for tag in tags
                 if tag in wanted and instance.hashes.get(tag) != wanted[tag]]
        return " and ".join(stale)

    def _outdated(self, instance: Instance) -> str:
        return self._stale(instance, REPLACE_HASHES)

    def replace_outdated(self) -> None:
        """Drain running workers whose machine or runtime is outdated, a few at a time: their
        queued work goes to the replacements the planner launches, their running work ends."""
        budget = max(1, int(self.obs.config.max_workers * self.obs.policy.replace_fraction))
        outdated = [i for i in self.obs.instances.values()
                    if not i.is_head and self._outdated(i) and self._state(i.node_id) in
                    (L.RUNNING, L.DRAINING) and i.node_id not in self.terminating]
        budget -= sum(self._state(i.node_id) == L.DRAINING for i in outdated)
        for instance in sorted(outdated, key=lambda i: i.node_id):
            if budget <= 0:
                break
            if self._state(instance.node_id) == L.RUNNING and \
                    instance.node_id in self.obs.runtime:
                self.move(instance.node_id, L.DRAINING,
                          f"its {self._outdated(instance)} is outdated: replacing it")
                self.actions.append(Drain((instance.node_id,)))
                self.events.append(f"replacing {instance.node_id} ({instance.node_type}): "
                                   f"its {self._outdated(instance)} is outdated")
                budget -= 1

    # -- planning ---------------------------------------------------------------------------

    def plan(self) -> planner.Plan:
        plan = planner.plan(self._capped_config(), self._planner_nodes(), self._pending(),
                            self.obs.demand, self.now)
        drain = []
        for node_id, reason in plan.terminate:
            state, alive = self._state(node_id), self.obs.runtime.get(node_id)
            if state == L.DRAINING or node_id in self.terminating:
                continue
            if state == L.RUNNING and alive is not None and alive.idle_s >= 0:
                self.move(node_id, L.DRAINING, reason)
                drain.append(node_id)
            else:
                self.terminate(node_id, reason)
        if drain:
            self.actions.append(Drain(tuple(drain)))
            self.events.append(f"draining {', '.join(drain)}: "
                               f"{self.nodes[drain[0]].history[-1].reason}")
        if self.terminating:
            self.actions.append(Terminate(tuple(sorted(set(self.terminating)))))
        for number, (node_type, count) in enumerate(sorted(plan.launch.items())):
            reason = _describe(self.obs.demand) or "min_workers"
            fallback = reactions.on_demand(self.spot_failures, node_type,
                                           self.obs.fallback_after.get(node_type), self.now)
            if fallback:
                reason += (f"; on demand: {len(self.spot_failures[node_type])} spot failures "
                           f"in {reactions.SPOT_WINDOW_S / 60:.0f} min")
            self.actions.append(Launch(f"{self.obs.id_prefix}-{self.now:.3f}-{number}", node_type,
                                       count, reason, self.now, fallback))
        return plan

    def _planner_nodes(self) -> list[planner.NodeState]:
        """The nodes that count: alive or coming, not on their way out."""
        nodes = []
        config = self.obs.config
        for node_id, instance in sorted(self.obs.instances.items()):
            state = self._state(node_id)
            alive = self.obs.runtime.get(node_id)
            if state not in L.COMING | {L.RUNNING, L.DRAINING} and not instance.is_head:
                continue
            if alive is not None:
                idle_since = self.now - alive.idle_s if alive.idle_s >= 0 else None
                leaving = state == L.DRAINING and self._outdated(instance)
                nodes.append(planner.NodeState(node_id, instance.node_type, instance.is_head,
                                               dict(alive.total),
                                               {} if leaving else dict(alive.available),
                                               idle_since))
            elif node_id not in self.obs.dead:
                spec = config.node_types.get(instance.node_type)
                capacity = dict(spec.resources) if spec else {}
                nodes.append(planner.NodeState(node_id, instance.node_type, instance.is_head,
                                               capacity, capacity, None, launching=True))
        return nodes

    def _pending(self) -> dict[str, int]:
        """Instances still to come from launches in flight (those listed already are nodes)."""
        listed = {}
        for instance in self.obs.instances.values():
            listed[instance.launch_request] = listed.get(instance.launch_request, 0) + 1
        pending: dict[str, int] = {}
        for request_id, launch in self.obs.launches.items():
            left = launch.count - listed.get(request_id, 0)
            if left > 0:
                pending[launch.node_type] = pending.get(launch.node_type, 0) + left
        return pending

    def _capped_config(self) -> planner.PlannerConfig:
        """A backed-off type may not grow beyond the workers it has now."""
        config = self.obs.config
        counts: dict[str, int] = {}
        for node_id, instance in self.obs.instances.items():
            if not instance.is_head and self._state(node_id) not in (L.TERMINATING, None):
                counts[instance.node_type] = counts.get(instance.node_type, 0) + 1
        for launch in self.obs.launches.values():
            counts[launch.node_type] = counts.get(launch.node_type, 0) + launch.count
        types = {}
        for name, spec in config.node_types.items():
            if reactions.blocked(self.backoffs, name, self.now) is not None:
                cap = min(spec.max_workers, counts.get(name, 0))
                spec = dataclasses.replace(spec, max_workers=cap,
                                           min_workers=min(spec.min_workers, cap))
            types[name] = spec
        return dataclasses.replace(config, node_types=types)


def _describe(demand: planner.Demand) -> str:
    return ", ".join(f"{format_shape(d.shape)} x {d.count}" for d in demand.tasks)
