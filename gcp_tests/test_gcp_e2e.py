"""`cluster up` on the gcp provider against the fake Compute Engine server, with real SSH to
container nodes.

The fake listens on 127.0.0.1 and hands out internal IPs in 127.101.0.0/17, so a watcher boots a
container node (tests/harness/containers) on each instance's IP as soon as it exists, and powers
it off once the instance is gone. The laptop side authenticates with a service-account key file;
the head's autoscaler, inside the head container, as on a real VM: through the metadata server
(the fake again) that its start command names in GCE_METADATA_HOST. Both reach the API through
provider.api_endpoint, which travels to the head in the bootstrap config.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gcp_tests.conftest import assert_loopback_url
from gcp_tests.fake_gce import PROJECT
from tests.harness.containers import containers, ssh_key  # noqa: F401
from tests.harness.instances import InstanceWatcher, wait_until

CLUSTER = str(Path(sys.executable).parent / "cluster")


def _config(tmp_path, fake, key_path) -> Path:
    """cluster-configs/gcp-gpu.yaml, pointed at the fake server and its project."""
    example = Path(__file__).parents[1] / "cluster-configs/gcp-gpu.yaml"
    config = yaml.safe_load(example.read_text())
    metadata = fake.url.removeprefix("http://")
    assert_loopback_url(metadata)
    config.update(
        cluster_name="gce-e2e", max_workers=2, idle_timeout_minutes=0.15,
        autoscaler_update_interval_s=1,
        auth={"ssh_user": "ubuntu", "ssh_private_key": str(key_path)},
        head_start_commands=[
            "cluster stop",
            f"GCE_METADATA_HOST={metadata} GCE_METADATA_IP={metadata} "
            "cluster start --head --port=6379 --autoscaling-config=~/cluster_bootstrap.yaml"])
    config["provider"].update(project_id=PROJECT, api_endpoint=fake.url, use_internal_ips=True,
                              ssh_timeout_s=60)
    for node_type in config["available_node_types"].values():
        node_type.pop("min_workers", None)
    config["available_node_types"]["head"]["resources"] = {"CPU": 2}  # a 2-core test machine
    path = tmp_path / "gcp-gpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


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


def _kinds(fake) -> list[tuple[str, str]]:
    with fake._lock:
        return sorted((i["labels"]["node-kind"], i["labels"]["node-type"])
                      for i in fake.instances.values())


@pytest.fixture
def cluster_cli(fake, tmp_path, ssh_key):  # noqa: F811
    """Runs `cluster VERB <the test config> ...` as a user would, with a private HOME."""
    path = _config(tmp_path, fake, ssh_key[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env.update(HOME=str(tmp_path / "home"),
               XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))

    def cli(*args, timeout=300):
        result = subprocess.run([CLUSTER, args[0], str(path), *args[1:]], env=env, text=True,
                                capture_output=True, timeout=timeout, cwd=tmp_path)
        print(result.stdout[-3000:], result.stderr[-3000:])
        return result

    yield cli
    if fake.live_ips():
        cli("down", "-y")


@pytest.fixture
def watcher(fake, containers):  # noqa: F811
    watcher = InstanceWatcher(fake.live_ips, containers)
    watcher.start()
    yield watcher
    watcher.stop()


def test_cluster_up_gpu_demand_scales_gpu_workers_and_down_leaves_nothing(
        fake, cluster_cli, watcher, tmp_path):
    up = cluster_cli("up", "-y")
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr
    [head] = fake.instances.values()
    assert head["labels"]["node-kind"] == "head" and head["labels"]["node-status"] == "up-to-date"
    [account] = head["serviceAccounts"]  # its autoscaler calls the API as this account
    assert account["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]
    again = cluster_cli("up", "-y")  # bootstrap reuses key and firewall: same launch hash
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr

    for name, driver in (("cpu.py", CPU_DRIVER), ("gpu.py", GPU_DRIVER)):
        (tmp_path / name).write_text(driver)
    run = cluster_cli("submit", str(tmp_path / "cpu.py"))
    assert run.returncode == 0 and "cpu-on ['head']" in run.stdout, run.stdout + run.stderr
    time.sleep(3)  # a few autoscaler ticks: CPU work launches no (GPU) worker
    assert _kinds(fake) == [("head", "head")]

    run = cluster_cli("submit", str(tmp_path / "gpu.py"))
    assert run.returncode == 0 and "gpu-on ['gpu']" in run.stdout, run.stdout + run.stderr
    workers = [i for i in fake.instances.values() if i["labels"]["node-kind"] == "worker"]
    assert {w["machineType"].rsplit("/", 1)[-1] for w in workers} == {"g2-standard-8"}
    assert {w["scheduling"]["provisioningModel"] for w in workers} == {"SPOT"}  # the config's
    assert "serviceAccounts" not in workers[0]

    wait_until(lambda: _kinds(fake) == [("head", "head")], 120, "idle GPU workers to be deleted")
    down = cluster_cli("down", "-y")
    assert down.returncode == 0, down.stderr
    assert fake.instances == {}
