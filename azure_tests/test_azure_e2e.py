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

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from azure_tests.conftest import safe_env
from azure_tests.fake_arm import SUBSCRIPTION
from azure_tests.test_azure_provider import VM, leftovers
from tests.harness.containers import containers, ssh_key  # noqa: F401
from tests.harness.instances import InstanceWatcher, wait_until

CLUSTER = str(Path(sys.executable).parent / "cluster")
CPU_DRIVER = """import runtime as ray, os
ray.init('auto')
cpu = ray.remote(num_cpus=1)(lambda: os.environ['CLUSTER_NODE_TYPE'])
print('cpu-on', sorted(set(ray.get([cpu.remote() for _ in range(2)]))))
"""
GPU_DRIVER = """import runtime as ray, os
ray.init('auto')
gpu = ray.remote(num_gpus=1)(lambda: os.environ['CLUSTER_NODE_TYPE'])
print('gpu-on', sorted(set(ray.get([gpu.remote() for _ in range(2)], timeout=240))))
"""


def _config(tmp_path, arm, key_path) -> Path:
    """cluster-configs/azure-gpu.yaml, pointed at the fake and at a 127.x virtual network."""
    config = yaml.safe_load((Path(__file__).parents[1] / "cluster-configs/azure-gpu.yaml").read_text())
    env = " ".join(f"{k}={v}" for k, v in safe_env(arm).items())
    config.update(
        cluster_name="azure-e2e", max_workers=2, idle_timeout_minutes=0.15,
        autoscaler_update_interval_s=1, auth={"ssh_user": "ubuntu", "ssh_private_key": str(key_path)},
        setup_commands=[],
        head_start_commands=[
            "cluster stop",
            f"{env} cluster start --head --port=6379 --autoscaling-config=~/cluster_bootstrap.yaml"])
    config["provider"].update(resource_manager_endpoint=arm.url, subscription_id=SUBSCRIPTION,
                              use_internal_ips=True, vnet_cidr="127.102.0.0/17", ssh_timeout_s=60)
    for node_type in config["available_node_types"].values():
        node_type.pop("min_workers", None)
    config["available_node_types"]["head"]["resources"] = {"CPU": 2}  # a 2-core test machine
    path = tmp_path / "azure-gpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _kinds(arm) -> list[tuple[str, str]]:
    return sorted((vm["tags"]["node-kind"], vm["tags"]["node-type"]) for vm in arm.of_type(VM))


@pytest.fixture
def cluster_cli(arm, tmp_path, ssh_key):  # noqa: F811
    """Runs `cluster VERB <the test config> ...` as a user would, with a private HOME."""
    path = _config(tmp_path, arm, ssh_key[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env.update(HOME=str(tmp_path / "home"),
               XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))

    def cli(*args, timeout=300):
        result = subprocess.run([CLUSTER, args[0], str(path), *args[1:]], env=env, text=True,
                                capture_output=True, timeout=timeout, cwd=tmp_path)
        print(result.stdout[-3000:], result.stderr[-3000:])
        return result

    yield cli
    if arm.of_type(VM):
        cli("down", "-y")


@pytest.fixture
def watcher(arm, containers):  # noqa: F811
    watcher = InstanceWatcher(arm.vm_ips, containers)
    watcher.start()
    yield watcher
    watcher.stop()


def test_cluster_up_gpu_demand_scales_gpu_workers_and_down_leaves_nothing(
        arm, cluster_cli, watcher, tmp_path):
    up = cluster_cli("up", "-y")
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr
    [head] = arm.of_type(VM)
    assert head["tags"]["node-kind"] == "head" and head["tags"]["node-status"] == "up-to-date"
    assert list(head["identity"]["userAssignedIdentities"])[0].endswith("cluster-launcher-azure-e2e-head")
    again = cluster_cli("up", "-y")  # bootstrap reuses group, network, identity: same launch hash
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr

    for name, driver in (("cpu.py", CPU_DRIVER), ("gpu.py", GPU_DRIVER)):
        (tmp_path / name).write_text(driver)
    run = cluster_cli("submit", str(tmp_path / "cpu.py"))
    assert run.returncode == 0 and "cpu-on ['head']" in run.stdout, run.stdout + run.stderr
    time.sleep(3)  # a few autoscaler ticks: CPU work launches no (GPU) worker
    assert _kinds(arm) == [("head", "head")]

    run = cluster_cli("submit", str(tmp_path / "gpu.py"))
    assert run.returncode == 0 and "gpu-on ['gpu']" in run.stdout, run.stdout + run.stderr
    workers = [vm for vm in arm.of_type(VM) if vm["tags"]["node-kind"] == "worker"]
    assert {w["properties"]["hardwareProfile"]["vmSize"] for w in workers} == {"Standard_NC4as_T4_v3"}
    assert {w["properties"]["priority"] for w in workers} == {"Spot"}  # the config's spot option

    wait_until(lambda: _kinds(arm) == [("head", "head")], 120, "idle GPU workers to be deleted")
    down = cluster_cli("down", "-y")
    assert down.returncode == 0, down.stderr
    assert leftovers(arm) == {}
