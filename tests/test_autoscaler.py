"""The autoscaler loop against a real GCS (in-process gRPC) and a small in-memory provider.

The provider double implements the NodeProvider contract in memory so that launch failures and
broken nodes can be produced on demand. The rules themselves are tested on plain values in
test_reconciler.py; here the subject is the loop: actions carried out in the background, states
written to tags, the status published, and a restarted autoscaler resuming from them.
"""

from __future__ import annotations

import itertools
import json
import time

import pytest

from autoscaler import lifecycle as L
from autoscaler import reactions
from autoscaler.autoscaler import Autoscaler, policy_of
from launcher import tags as T
from launcher.command_runner import CommandResult, CommandRunner
from launcher.config import config_from_dict
from launcher.errors import CapacityError, ProviderError
from launcher.providers.base import NodeProvider
from runtime.generated import runtime_pb2 as pb
from runtime.session import AUTOSCALER_STATUS_KEY
from tests.harness.autoscaling import head_gcs, queue_demand

TOKEN = "t" * 64
CONFIG = config_from_dict({
    "cluster_name": "rec", "max_workers": 4, "idle_timeout_minutes": 1,
    "provider": {"type": "local"}, "head_node_type": "head",
    "available_node_types": {"head": {"resources": {"CPU": 1}},
                             "cpu-2": {"resources": {"CPU": 2}, "max_workers": 4,
                                       "node_config": {"market": "spot"},
                                       "fallback_to_on_demand_after": 1}},
})


class _Runner(CommandRunner):
    def __init__(self, provider):
        self.provider, self.commands = provider, provider.commands

    def run(self, command, *, env=None, timeout=None, on_output=None):
        self.commands.append(command)
        return CommandResult(0, "")

    def wait_ready(self, timeout):
        while self.provider.hold_setups:
            time.sleep(0.01)

    def put(self, local_path, remote_path, *, excludes=(), filters=()):
        pass

    def shell_argv(self, command=None, port_forwards=()):
        return ["true"]

    def get(self, remote_path, local_path):
        pass


class MemoryProvider(NodeProvider):
    """Nodes are dict entries; `fail_creates` makes create raise a capacity error."""

    installs_runtime = False

    def __init__(self):
        super().__init__({"type": "memory"}, "rec")
        self.tags: dict[str, dict] = {}
        self.fail_creates = False
        self.hold_setups = False  # a node's SSH does not answer while set: setups hang
        self.taken: dict[str, str] = {}  # node id -> why the cloud took it away
        self.markets: list = []  # node_config["market"] of each create
        self.create_calls = 0
        self.commands: list[str] = []
        self._ids = itertools.count()

    def nodes(self, tag_filters):
        return [i for i, t in self.tags.items() if tag_filters.items() <= t.items()]

    def node_tags(self, node_id):
        return dict(self.tags[node_id])

    def on_demand(self, node_config):
        return {**node_config, "market": "on-demand"} if node_config.get("market") == "spot" \
            else None

    def create(self, node_type, node_config, tags, count):
        self.create_calls += 1
        self.markets.append(node_config.get("market"))
        if self.fail_creates:
            raise CapacityError(f"no capacity for {node_type}")
        ids = [f"n{next(self._ids)}" for _ in range(count)]
        for node_id in ids:
            self.tags[node_id] = {T.TAG_CLUSTER_NAME: "rec", **tags}
        return ids

    def preempted(self, node_ids):
        return {i: why for i, why in self.taken.items() if i in node_ids}

    def terminate(self, node_ids):
        for node_id in node_ids:
            self.tags.pop(node_id, None)

    def set_tags(self, node_id, tags):
        self.tags[node_id].update(tags)

    def internal_ip(self, node_id):
        return "127.0.9.9"

    def external_ip(self, node_id):
        return None

    def command_runner(self, node_id):
        return _Runner(self)


@pytest.fixture
def gcs_stub(runtime_home):  # runtime_home: node logs go to the test's own directory
    with head_gcs(TOKEN) as stub:
        yield stub


def _queue_demand(stub, count: int):
    queue_demand(stub, {"CPU": 2}, count)


def _autoscaler(stub, provider, clock) -> Autoscaler:
    provider.tags.setdefault("head", {T.TAG_NODE_KIND: T.KIND_HEAD, T.TAG_NODE_TYPE: "head",
                                      T.TAG_NODE_STATUS: L.RUNNING})
    return Autoscaler(CONFIG, provider, stub, head_ip="127.0.0.1", token=TOKEN,
                      clock=lambda: clock[0])


def _settle(autoscaler: Autoscaler, done, ticks: int = 200):
    """Tick until `done()` holds (background actions take a moment); the last decision."""
    for _ in range(ticks):
        decision = autoscaler.tick()
        if done():
            return decision
        time.sleep(0.02)
    raise AssertionError("the autoscaler did not get there")


def _states(provider) -> dict:
    return {i: t.get(T.TAG_NODE_STATUS) for i, t in provider.tags.items() if i != "head"}


def _messages(autoscaler) -> str:
    return "\n".join(e["message"] for e in autoscaler.events)



def test_queued_demand_launches_workers_that_are_set_up_to_running(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    _queue_demand(gcs_stub, 3)
    autoscaler = _autoscaler(gcs_stub, provider, clock)
    assert autoscaler.tick().plan.launch == {"cpu-2": 3}
    _settle(autoscaler, lambda: list(_states(provider).values()) == [L.RUNNING] * 3)
    assert provider.commands.count("cluster start --address=$CLUSTER_HEAD_IP:6379") == 3
    assert provider.create_calls == 1  # the demand did not launch again while they came up
    history = [s.state for s in autoscaler.known["n0"].history]
    assert history == [L.REQUESTED, L.ALLOCATED, L.INSTALLING, L.RUNNING]


def test_failed_launch_backs_the_type_off_then_retries(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    provider.fail_creates = True
    autoscaler = _autoscaler(gcs_stub, provider, clock)
    _queue_demand(gcs_stub, 2)
    _settle(autoscaler, lambda: "failed (capacity)" in _messages(autoscaler))
    assert provider.create_calls == 1
    autoscaler.tick()
    assert provider.create_calls == 1  # backing off: the planner was told the type is capped
    clock[0] += reactions.CAPACITY_BASE_S + 1
    provider.fail_creates = False
    _settle(autoscaler, lambda: len(_states(provider)) == 2)
    assert provider.create_calls == 2


def test_worker_whose_setup_failed_is_replaced(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    autoscaler = _autoscaler(gcs_stub, provider, clock)
    provider.tags["bad"] = {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: "cpu-2",
                            T.TAG_NODE_STATUS: L.INSTALL_FAILED}
    _settle(autoscaler, lambda: "bad" not in provider.tags)
    assert "terminating bad (cpu-2): its setup failed" in _messages(autoscaler)


def _register_idle_worker(stub, autoscaler, node_id: str, idle_seconds: float, **tags):
    """A running cpu-2 worker, up to date unless `tags` say otherwise."""
    autoscaler.provider.tags[node_id] = {
        T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: "cpu-2", T.TAG_NODE_STATUS: L.RUNNING,
        **autoscaler.wanted["cpu-2"], **tags}
    stub.RegisterNode(pb.NodeInfo(node_id=node_id, address="127.0.0.1:2", ip="127.0.0.1",
                                  node_type="cpu-2", total={"CPU": 2}))
    stub.Heartbeat(pb.HeartbeatRequest(node_id=node_id, available={"CPU": 2},
                                       idle_seconds=idle_seconds))


def _view(stub) -> list:
    return [n.node_id for n in stub.Heartbeat(pb.HeartbeatRequest(node_id="head")).nodes]


def test_idle_worker_is_drained_from_every_view_then_removed(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    autoscaler = _autoscaler(gcs_stub, provider, clock)
    _register_idle_worker(gcs_stub, autoscaler, "w1", idle_seconds=120)
    _settle(autoscaler, lambda: _view(gcs_stub) == ["head"])
    assert _states(provider) == {"w1": L.DRAINING}  # out of every view, not gone yet
    clock[0] += 2
    _settle(autoscaler, lambda: "w1" not in provider.tags)


def test_worker_that_gets_work_while_draining_is_kept(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    autoscaler = _autoscaler(gcs_stub, provider, clock)
    _register_idle_worker(gcs_stub, autoscaler, "w1", idle_seconds=120)
    _settle(autoscaler, lambda: _view(gcs_stub) == ["head"])
    gcs_stub.Heartbeat(  # a task forwarded just before the drain
        pb.HeartbeatRequest(node_id="w1", available={"CPU": 0}, idle_seconds=-1))
    clock[0] += 2
    _settle(autoscaler, lambda: "w1" in _view(gcs_stub))  # undrained: it may take work again
    assert _states(provider) == {"w1": L.RUNNING}
    assert "kept w1: it got work while being drained" in _messages(autoscaler)


def test_pending_placement_group_and_requested_resources_launch_workers(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    # STRICT_SPREAD of two 2-CPU bundles: each needs its own cpu-2 worker
    gcs_stub.CreatePlacementGroup(pb.PlacementGroupInfo(
        pg_id="a" * 32, strategy="STRICT_SPREAD",
        bundles=[pb.Bundle(resources={"CPU": 2})] * 2))
    assert _autoscaler(gcs_stub, provider, clock).tick().plan.launch == {"cpu-2": 2}

    provider, clock = MemoryProvider(), [1000.0]
    gcs_stub.RemovePlacementGroup(pb.PlacementGroupRequest(pg_id="a" * 32))
    gcs_stub.RequestResources(pb.ResourceRequest(bundles=[pb.Bundle(resources={"CPU": 2})]))
    assert _autoscaler(gcs_stub, provider, clock).tick().plan.launch == {"cpu-2": 1}


def test_a_dead_worker_is_terminated_at_once_with_the_reason(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    autoscaler = _autoscaler(gcs_stub, provider, clock)
    _register_idle_worker(gcs_stub, autoscaler, "w1", idle_seconds=-1)
    gcs_stub.UnregisterNode(pb.NodeIdRequest(node_id="w1"))
    _settle(autoscaler, lambda: "w1" not in provider.tags)
    assert "terminating w1 (cpu-2): node died (heartbeats missed)" in _messages(autoscaler)


def test_a_restarted_autoscaler_resumes_from_the_tags_and_the_published_status(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    first = _autoscaler(gcs_stub, provider, clock)
    provider.hold_setups = True  # the first autoscaler dies while its installs run
    _queue_demand(gcs_stub, 2)
    first.tick()
    _settle(first, lambda: list(_states(provider).values()) == [L.INSTALLING] * 2)
    first.shutdown()
    provider.hold_setups = False
    second = _autoscaler(gcs_stub, provider, clock)
    _settle(second, lambda: list(_states(provider).values()) == [L.RUNNING] * 2)
    assert provider.create_calls == 1  # nothing launched twice
    assert "resuming the setup of n0 (cpu-2)" in _messages(second)
    history = [s.state for s in second.known["n0"].history]
    assert history == [L.REQUESTED, L.ALLOCATED, L.INSTALLING, L.RUNNING]  # read back from the GCS


def test_a_worker_made_from_an_old_node_config_is_drained_and_replaced(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    autoscaler = _autoscaler(gcs_stub, provider, clock)
    _register_idle_worker(gcs_stub, autoscaler, "old", idle_seconds=-1,
                          **{T.TAG_LAUNCH_HASH: "from-an-old-config"})
    _queue_demand(gcs_stub, 1)  # work waits: the replacement is launched for it
    _settle(autoscaler, lambda: provider.create_calls == 1)
    assert _states(provider)["old"] == L.DRAINING  # its running work goes on meanwhile
    gcs_stub.Heartbeat(pb.HeartbeatRequest(node_id="old", available={"CPU": 2}, idle_seconds=1))
    _settle(autoscaler, lambda: "old" not in provider.tags)
    assert "terminating old (cpu-2): replaced: its launch is outdated" in _messages(autoscaler)


def test_a_preempted_worker_is_recorded_with_the_clouds_reason_and_replaced(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    autoscaler = _autoscaler(gcs_stub, provider, clock)
    _register_idle_worker(gcs_stub, autoscaler, "w1", idle_seconds=-1)
    autoscaler.tick()
    del provider.tags["w1"]  # the cloud takes it away mid-task; its work is queued again
    provider.taken["w1"] = "Server.SpotInstanceTermination"
    gcs_stub.UnregisterNode(pb.NodeIdRequest(node_id="w1"))
    _queue_demand(gcs_stub, 1)
    _settle(autoscaler, lambda: provider.create_calls == 1)
    assert "w1 (cpu-2) was Server.SpotInstanceTermination; its work is retried" in \
        _messages(autoscaler)
    [gone] = [n for n in autoscaler.gone if n.node_id == "w1"]
    assert [s.state for s in gone.history[-2:]] == [L.PREEMPTED, L.TERMINATED]
    assert provider.markets == ["on-demand"]  # cpu-2 falls back after one spot failure


def test_the_lifecycle_timeouts_and_the_replacement_pace_come_from_the_config():
    assert (policy_of(CONFIG).install_s, policy_of(CONFIG).join_s) == (900.0, 300.0)
    config = config_from_dict({**CONFIG.raw, "join_timeout_minutes": 0.5,
                               "drain_timeout_minutes": 10, "replace_outdated_fraction": 0.5})
    policy = policy_of(config)
    assert (policy.join_s, policy.drain_s, policy.replace_fraction) == (30.0, 600.0, 0.5)


def test_a_node_gone_between_the_listing_and_the_status_does_not_fail_the_tick(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    autoscaler = _autoscaler(gcs_stub, provider, clock)
    _register_idle_worker(gcs_stub, autoscaler, "w1", idle_seconds=-1)

    def gone(node_id):  # the cloud took w1 away after it was listed
        if node_id == "w1":
            raise ProviderError("w1 is not an instance of cluster rec")
        return "127.0.9.9"

    provider.internal_ip = gone
    autoscaler.tick()
    status = json.loads(gcs_stub.KvGet(pb.KvRequest(key=AUTOSCALER_STATUS_KEY)).value)
    assert {row["node_id"]: row["ip"] for row in status["nodes"]}["w1"] == "?"
