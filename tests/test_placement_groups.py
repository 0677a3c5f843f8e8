"""Placement groups: where bundles go (pure), and the runtime reserving them on real node agents."""

from __future__ import annotations

import os

import pytest

import runtime as ray
from runtime import client
from runtime.generated import runtime_pb2 as pb
from runtime.placement import place
from runtime.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tests.conftest import two_node_cluster, wait_for

HEAD_IP, WORKER_IP = "127.0.5.1", "127.0.5.2"
FREE = {"head": {"CPU": 1.0}, "worker": {"CPU": 2.0, "special": 1.0}}


@pytest.mark.parametrize("strategy, bundles, expected", [
    ("STRICT_PACK", [{"CPU": 1}, {"CPU": 1}], ["worker", "worker"]),  # only the worker holds both
    ("STRICT_PACK", [{"CPU": 2}, {"CPU": 1}], None),
    ("PACK", [{"CPU": 2}, {"CPU": 1}], ["worker", "head"]),  # does not fit one node: spills over
    ("STRICT_SPREAD", [{"CPU": 1}, {"CPU": 1}], ["worker", "head"]),
    ("STRICT_SPREAD", [{"CPU": 1}] * 3, None),  # two nodes cannot hold three spread bundles
    ("SPREAD", [{"CPU": 1}] * 3, ["worker", "head", "worker"]),  # distinct first, then reuse
    ("SPREAD", [{"special": 1}, {"CPU": 1}], ["worker", "head"]),
])
def test_bundles_are_placed_as_the_strategy_demands(strategy, bundles, expected):
    assert place(bundles, strategy, FREE) == expected


@pytest.fixture
def cluster(runtime_home, monkeypatch):
    """A head with 1 CPU and a worker with 2 CPUs, on two loopback addresses."""
    with two_node_cluster(monkeypatch, runtime_home, HEAD_IP, WORKER_IP, {"CPU": 1}) as c:
        wait_for(lambda: len(ray.nodes()) == 2, 10, "both nodes")
        yield c


@ray.remote(num_cpus=1)
def where() -> str:
    return os.environ["CLUSTER_AGENT_ADDRESS"].split(":")[0]


@ray.remote
class Host:
    def ip(self) -> str:
        return os.environ["CLUSTER_AGENT_ADDRESS"].split(":")[0]


def _cluster_state() -> pb.ClusterState:
    return client.connected().gcs.GetClusterState(pb.Empty(), timeout=10)


def test_strict_spread_puts_each_bundle_and_its_work_on_its_own_node(cluster):
    pg = ray.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD", name="spread")
    assert ray.get(pg.ready(), timeout=30) == pg
    nodes = ray.placement_group_table(pg)["bundles_to_node_id"]
    assert sorted(nodes.values()) == ["head", "worker"]
    ips = {i: ray.get(where.options(placement_group=pg, placement_group_bundle_index=i).remote(),
                      timeout=30) for i in (0, 1)}
    assert ips == {i: HEAD_IP if nodes[i] == "head" else WORKER_IP for i in (0, 1)}
    # the same through a scheduling strategy, and for an actor
    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1)
    host = Host.options(scheduling_strategy=strategy).remote()
    assert ray.get(host.ip.remote(), timeout=30) == ips[1]
    assert ray.util.get_placement_group("spread") == pg


def test_strict_pack_reserves_its_node_and_other_work_goes_elsewhere(cluster):
    pg = ray.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert pg.wait(30)
    assert set(ray.placement_group_table(pg)["bundles_to_node_id"].values()) == {"worker"}
    assert ray.get([where.options(placement_group=pg).remote() for _ in range(4)],
                   timeout=30) == [WORKER_IP] * 4
    # the worker's 2 CPUs are the group's now: plain work runs on the head
    assert ray.get(where.remote(), timeout=30) == HEAD_IP
    ray.remove_placement_group(pg)
    wait_for(lambda: ray.available_resources().get("CPU") == 3.0, 10, "the CPUs to come back")


def test_a_group_that_fits_nowhere_waits_as_demand_and_its_work_waits_with_it(cluster):
    pg = ray.placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    queued = where.options(placement_group=pg, placement_group_bundle_index=2).remote()
    assert not pg.wait(1)
    state = wait_for(lambda: _cluster_state() if _cluster_state().pending_placement_groups else None,
                     10, "the pending group in the cluster state")
    [pending] = state.pending_placement_groups
    assert pending.strategy == "STRICT_SPREAD" and len(pending.bundles) == 3
    # work waiting for the group is not demand of its own (the group is)
    assert not any("_group_" in key for d in state.demand for key in d.shape)
    ready, _ = ray.wait([queued], timeout=1)
    assert ready == []
    ray.remove_placement_group(pg)
    assert ray.placement_group_table(pg)["state"] == "REMOVED"
    assert not _cluster_state().pending_placement_groups


def test_removing_a_group_kills_the_actors_living_in_it(cluster):
    pg = ray.placement_group([{"CPU": 1}], strategy="PACK")
    host = Host.options(placement_group=pg, num_cpus=1).remote()
    ray.get(host.ip.remote(), timeout=30)
    ray.remove_placement_group(pg)
    with pytest.raises(ray.ActorDiedError):
        wait_for(lambda: ray.get(host.ip.remote(), timeout=30) and False, 15, "the actor to die")


def test_bad_placement_group_requests_are_clear_errors(cluster):
    with pytest.raises(ValueError, match="strategy must be one of"):
        ray.placement_group([{"CPU": 1}], strategy="TIGHT")
    with pytest.raises(ValueError, match="bundle 0 must map"):
        ray.placement_group([{"CPU": -1}])
    pg = ray.placement_group([{"CPU": 1}])
    with pytest.raises(ValueError, match="out of range"):
        where.options(placement_group=pg, placement_group_bundle_index=3).remote()


def test_request_resources_reaches_the_autoscaler_view(cluster):
    ray.request_resources(num_cpus=2, bundles=[{"GPU": 1}])
    requested = [dict(b.resources) for b in _cluster_state().requested]
    assert requested == [{"CPU": 1.0}, {"CPU": 1.0}, {"GPU": 1.0}]
    ray.request_resources()
    assert not _cluster_state().requested
