"""The reconciler against a real GCS (in-process gRPC) and a small in-memory provider.

The provider double implements the NodeProvider contract in memory so that launch failures and
broken nodes can be produced on demand; what the reconciler does with them is the subject here.
"""

from __future__ import annotations

import itertools
import time

import pytest

from autoscaler.reconciler import BACKOFF_S, Reconciler, node_states
from launcher import tags as T
from launcher.command_runner import CommandResult, CommandRunner
from launcher.config import config_from_dict
from launcher.errors import CapacityError
from launcher.providers.base import NodeProvider
from runtime import gcs, rpc
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc

TOKEN = "t" * 64
CONFIG = config_from_dict({
    "cluster_name": "rec", "max_workers": 4, "idle_timeout_minutes": 1,
    "provider": {"type": "local"}, "head_node_type": "head",
    "available_node_types": {"head": {"resources": {"CPU": 1}},
                             "cpu-2": {"resources": {"CPU": 2}, "max_workers": 4}},
})


class _Runner(CommandRunner):
    def __init__(self, commands: list):
        self.commands = commands

    def run(self, command, *, env=None, timeout=None, on_output=None):
        self.commands.append(command)
        return CommandResult(0, "")

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
        self.create_calls = 0
        self.commands: list[str] = []
        self._ids = itertools.count()

    def nodes(self, tag_filters):
        return [i for i, t in self.tags.items() if tag_filters.items() <= t.items()]

    def node_tags(self, node_id):
        return dict(self.tags[node_id])

    def create(self, node_type, node_config, tags, count):
        self.create_calls += 1
        if self.fail_creates:
            raise CapacityError(f"no capacity for {node_type}")
        ids = [f"n{next(self._ids)}" for _ in range(count)]
        for node_id in ids:
            self.tags[node_id] = {T.TAG_CLUSTER_NAME: "rec", **tags}
        return ids

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
        return _Runner(self.commands)


@pytest.fixture
def gcs_stub(runtime_home):  # runtime_home: node logs go to the test's own directory
    server, port = gcs.serve("127.0.0.1", 0, TOKEN)
    stub = pb_grpc.GcsStub(rpc.make_channel(f"127.0.0.1:{port}", TOKEN))
    stub.RegisterNode(pb.NodeInfo(node_id="head", address="127.0.0.1:1", ip="127.0.0.1",
                                  node_type="head", is_head=True, total={"CPU": 1}))
    yield stub
    server.stop(0)


def _queue_demand(stub, count: int):
    stub.Heartbeat(pb.HeartbeatRequest(node_id="head", available={"CPU": 1}, idle_seconds=-1,
                                       demand=[pb.ShapeCount(shape={"CPU": 2}, count=count)]))


def _reconciler(stub, provider, clock):
    provider.tags["head"] = {T.TAG_NODE_KIND: T.KIND_HEAD, T.TAG_NODE_TYPE: "head"}
    return Reconciler(CONFIG, provider, stub, head_ip="127.0.0.1", token=TOKEN, clock=lambda: clock[0])


def test_queued_demand_launches_workers_and_runs_their_start_commands(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    _queue_demand(gcs_stub, 3)
    plan = _reconciler(gcs_stub, provider, clock).tick()
    assert plan.launch == {"cpu-2": 3}
    workers = provider.nodes({T.TAG_NODE_KIND: T.KIND_WORKER})
    assert len(workers) == 3
    # setup runs in background threads; wait for the start commands to reach every node
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(provider.commands) < 6:
        time.sleep(0.01)
    assert provider.commands.count("cluster start --address=$CLUSTER_HEAD_IP:6379") == 3
    assert all(provider.tags[w][T.TAG_NODE_STATUS] == T.STATUS_UP_TO_DATE for w in workers)


def test_failed_launch_backs_the_type_off_then_retries(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    provider.fail_creates = True
    reconciler = _reconciler(gcs_stub, provider, clock)
    _queue_demand(gcs_stub, 2)
    reconciler.tick()
    assert provider.create_calls == 1
    assert "backing off" in reconciler.events[-1]["message"]
    clock[0] += BACKOFF_S / 2
    reconciler.tick()
    assert provider.create_calls == 1  # still backing off: the planner was told the type is capped
    clock[0] += BACKOFF_S
    provider.fail_creates = False
    _queue_demand(gcs_stub, 2)
    assert reconciler.tick().launch == {"cpu-2": 2}


def test_worker_whose_setup_failed_is_replaced(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    reconciler = _reconciler(gcs_stub, provider, clock)
    provider.tags["bad"] = {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: "cpu-2",
                            T.TAG_NODE_STATUS: T.STATUS_UPDATE_FAILED}
    reconciler.tick()
    assert "bad" not in provider.tags
    assert any("bad" in e["message"] and "setup failed" in e["message"] for e in reconciler.events)


def test_nodes_not_yet_in_the_runtime_count_as_launching_capacity():
    provider_nodes = {"w1": {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: "cpu-2"}}
    [state] = node_states(CONFIG, provider_nodes, {}, now=5.0)
    assert state.launching and state.total == {"CPU": 2.0} and state.available == {"CPU": 2.0}


def _register_idle_worker(stub, provider, node_id: str, idle_seconds: float):
    provider.tags[node_id] = {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: "cpu-2",
                              T.TAG_NODE_STATUS: T.STATUS_UP_TO_DATE}
    stub.RegisterNode(pb.NodeInfo(node_id=node_id, address="127.0.0.1:2", ip="127.0.0.1",
                                  node_type="cpu-2", total={"CPU": 2}))
    stub.Heartbeat(pb.HeartbeatRequest(node_id=node_id, available={"CPU": 2},
                                       idle_seconds=idle_seconds))


def test_idle_worker_is_drained_from_every_view_then_removed(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    reconciler = _reconciler(gcs_stub, provider, clock)
    _register_idle_worker(gcs_stub, provider, "w1", idle_seconds=120)
    views = []
    reconciler.sleep = lambda _: views.append(
        [n.node_id for n in gcs_stub.Heartbeat(pb.HeartbeatRequest(node_id="head")).nodes])
    plan = reconciler.tick()
    assert [node_id for node_id, _ in plan.terminate] == ["w1"]
    assert views == [["head"]]  # while draining, no node saw w1 to forward work to it
    assert "w1" not in provider.tags


def test_worker_that_gets_work_while_draining_is_kept(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    reconciler = _reconciler(gcs_stub, provider, clock)
    _register_idle_worker(gcs_stub, provider, "w1", idle_seconds=120)
    reconciler.sleep = lambda _: gcs_stub.Heartbeat(  # a task forwarded just before the drain
        pb.HeartbeatRequest(node_id="w1", available={"CPU": 0}, idle_seconds=-1))
    reconciler.tick()
    assert "w1" in provider.tags
    assert "kept w1: it got work while being drained" in reconciler.events[-1]["message"]
    view = gcs_stub.Heartbeat(pb.HeartbeatRequest(node_id="head")).nodes
    assert "w1" in [n.node_id for n in view]  # undrained: it may take work again


def test_pending_placement_group_and_requested_resources_launch_workers(gcs_stub):
    provider, clock = MemoryProvider(), [1000.0]
    # STRICT_SPREAD of two 2-CPU bundles: each needs its own cpu-2 worker
    gcs_stub.CreatePlacementGroup(pb.PlacementGroupInfo(
        pg_id="a" * 32, strategy="STRICT_SPREAD",
        bundles=[pb.Bundle(resources={"CPU": 2})] * 2))
    plan = _reconciler(gcs_stub, provider, clock).tick()
    assert plan.launch == {"cpu-2": 2}

    provider, clock = MemoryProvider(), [1000.0]
    gcs_stub.RemovePlacementGroup(pb.PlacementGroupRequest(pg_id="a" * 32))
    gcs_stub.RequestResources(pb.ResourceRequest(bundles=[pb.Bundle(resources={"CPU": 2})]))
    assert _reconciler(gcs_stub, provider, clock).tick().launch == {"cpu-2": 1}
