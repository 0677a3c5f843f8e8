"""A restarted autoscaler against EC2 (moto in-process): what it finds on the instances' tags is all
it needs to carry on. Each test leaves the cloud as a predecessor killed at one stage would have
(mid-launch, mid-install, mid-drain) and runs one tick of a fresh autoscaler with a real GCS.

Installs are recorded, not run: they would reach the instances over SSH, and moto's instances have
no address on this machine (the e2e tests set nodes up on container nodes).
"""

from __future__ import annotations

import time

import pytest

from autoscaler import lifecycle as L
from autoscaler.actions import Install, Launch, Terminate
from autoscaler.autoscaler import Autoscaler
from launcher import tags as T
from moto_tests.test_aws_provider import bootstrapped
from runtime.generated import runtime_pb2 as pb
from tests.harness.autoscaling import head_gcs, queue_demand

TOKEN = "t" * 64
NOW = 1_000_000.0


@pytest.fixture
def cloud(ec2):
    config, provider = bootstrapped(ec2)
    [head] = provider.create("head", config.node_types["head"].node_config, {
        T.TAG_NODE_KIND: T.KIND_HEAD, T.TAG_NODE_TYPE: "head", T.TAG_NODE_STATUS: L.RUNNING}, 1)
    with head_gcs(TOKEN) as gcs:
        gcs.RegisterNode(pb.NodeInfo(node_id=head, address="127.0.0.1:1", ip="127.0.0.1",
                                     node_type="head", is_head=True, total={"CPU": 2}))
        yield config, provider, gcs


def _successor(config, provider, gcs) -> tuple[Autoscaler, list]:
    """A fresh autoscaler whose installs are only recorded; the rest it carries out."""
    autoscaler = Autoscaler(config, provider, gcs, head_ip="127.0.0.1", token=TOKEN,
                            clock=lambda: NOW)
    started, start = [], autoscaler.actuators.start
    autoscaler.actuators.start = lambda action: started.append(action) or (
        None if isinstance(action, Install) else start(action))
    return autoscaler, started


def _left_behind(config, provider, state: str, count: int, age: float = 30.0) -> list[str]:
    """Workers as a killed autoscaler left them: in `state` since `age` seconds."""
    spec = config.node_types["gpu"]
    node = L.NodeLifecycle("", state, NOW - age)
    return provider.create("gpu", spec.node_config, {
        T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: "gpu",
        T.TAG_LAUNCH_REQUEST: "launch-of-the-dead-one", **L.tags_of(node)}, count)


def _states(provider) -> dict:
    return {i: provider.node_tags(i)[T.TAG_NODE_STATUS]
            for i in provider.nodes({T.TAG_NODE_KIND: T.KIND_WORKER})}


def test_killed_mid_launch_its_instances_are_adopted_not_launched_again(cloud):
    config, provider, gcs = cloud
    workers = _left_behind(config, provider, L.REQUESTED, 2)
    queue_demand(gcs, {"GPU": 1}, 2)  # the work they were launched for still waits
    autoscaler, started = _successor(config, provider, gcs)
    autoscaler.tick()
    assert not [a for a in started if isinstance(a, Launch)]
    assert sorted(a.node_id for a in started if isinstance(a, Install)) == sorted(workers)
    fresh = type(provider)(provider.provider_config, config.cluster_name, config.auth)
    assert _states(fresh) == {w: L.INSTALLING for w in workers}  # written to EC2's tags


def test_killed_mid_install_the_install_is_resumed(cloud):
    config, provider, gcs = cloud
    [worker] = _left_behind(config, provider, L.INSTALLING, 1)
    autoscaler, started = _successor(config, provider, gcs)
    decision = autoscaler.tick()
    assert [a for a in started if isinstance(a, Install)] == [Install(worker, "gpu")]
    assert decision.moves == () and _states(provider) == {worker: L.INSTALLING}


def test_killed_mid_drain_the_drained_worker_is_terminated(cloud):
    config, provider, gcs = cloud
    [worker] = _left_behind(config, provider, L.DRAINING, 1, age=5)
    gcs.RegisterNode(pb.NodeInfo(node_id=worker, address="127.0.0.1:2", ip="127.0.0.1",
                                 node_type="gpu", total={"GPU": 1}))
    gcs.Heartbeat(pb.HeartbeatRequest(node_id=worker, available={"GPU": 1}, idle_seconds=400))
    autoscaler, started = _successor(config, provider, gcs)
    autoscaler.tick()
    assert [a for a in started if isinstance(a, Terminate)] == [Terminate((worker,))]
    for _ in range(100):  # the termination runs in the background
        if not provider.nodes({T.TAG_NODE_KIND: T.KIND_WORKER}):
            break
        time.sleep(0.05)
    assert provider.nodes({T.TAG_NODE_KIND: T.KIND_WORKER}) == []
