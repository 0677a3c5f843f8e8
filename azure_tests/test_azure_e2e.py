"""`cluster up` on the azure provider against the fake Resource Manager, with real SSH to container
nodes.

The fake listens on 127.0.0.1; the cluster's virtual network is 127.102.0.0/17 (the documented
provider.vnet_cidr), so every VM's private IP is a loopback address where a watcher boots a container
node (tests/harness/containers) as soon as the VM exists, and powers it off once it is deleted. The
config reaches the fake through the documented provider.resource_manager_endpoint, and credentials
through azure-identity's managed identity variables (IDENTITY_ENDPOINT/IDENTITY_HEADER), which the
head's start command exports too: its autoscaler runs inside the head container and reaches the
same fake (containers share the host's network).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from azure_tests.conftest import safe_env
from azure_tests.fake_arm import SUBSCRIPTION
from azure_tests.test_azure_provider import VM, leftovers
from tests.harness import cloud_e2e
from tests.harness.containers import containers, ssh_key  # noqa: F401
from tests.harness.instances import wait_until, watching
def _config(tmp_path, arm, key_path) -> Path:
    """cluster-configs/azure-gpu.yaml, pointed at the fake and at a 127.x virtual network."""
    env = " ".join(f"{k}={v}" for k, v in safe_env(arm).items())
    return cloud_e2e.e2e_config(
        "azure-gpu.yaml", tmp_path, "azure-e2e", key_path, env,
        {"resource_manager_endpoint": arm.url, "subscription_id": SUBSCRIPTION,
         "vnet_cidr": "127.102.0.0/17"})


def _kinds(arm) -> list[tuple[str, str]]:
    return sorted((vm["tags"]["node-kind"], vm["tags"]["node-type"]) for vm in arm.of_type(VM))


@pytest.fixture
def cluster_cli(arm, tmp_path, ssh_key):  # noqa: F811
    cli = cloud_e2e.cluster_cli(_config(tmp_path, arm, ssh_key[0]), tmp_path)
    yield cli
    if arm.of_type(VM):
        cli("down", "-y")


@pytest.fixture
def watcher(arm, containers):  # noqa: F811
    with watching(arm.vm_ips, containers) as watcher:
        yield watcher


def test_cluster_up_gpu_demand_scales_gpu_workers_and_down_leaves_nothing(
        arm, cluster_cli, watcher, tmp_path):
    cloud_e2e.up_twice(cluster_cli)
    [head] = arm.of_type(VM)
    assert head["tags"]["node-kind"] == "head" and head["tags"]["node-status"] == "running"
    assert list(head["identity"]["userAssignedIdentities"])[0].endswith("cluster-launcher-azure-e2e-head")

    cloud_e2e.run_cpu_then_gpu_work(cluster_cli, lambda: _kinds(arm), tmp_path)
    workers = [vm for vm in arm.of_type(VM) if vm["tags"]["node-kind"] == "worker"]
    assert {w["properties"]["hardwareProfile"]["vmSize"] for w in workers} == {"Standard_NC4as_T4_v3"}
    assert {w["properties"]["priority"] for w in workers} == {"Spot"}  # the config's spot option

    wait_until(lambda: _kinds(arm) == [("head", "head")], 120, "idle GPU workers to be deleted")
    down = cluster_cli("down", "-y")
    assert down.returncode == 0, down.stderr
    assert leftovers(arm) == {}
