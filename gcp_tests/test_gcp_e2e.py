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

from pathlib import Path

import pytest

from gcp_tests.conftest import assert_loopback_url
from gcp_tests.fake_gce import PROJECT
from tests.harness import cloud_e2e
from tests.harness.containers import containers, ssh_key  # noqa: F401
from tests.harness.instances import wait_until, watching


def _config(tmp_path, fake, key_path) -> Path:
    """cluster-configs/gcp-gpu.yaml, pointed at the fake server and its project."""
    metadata = fake.url.removeprefix("http://")
    assert_loopback_url(metadata)
    return cloud_e2e.e2e_config(
        "gcp-gpu.yaml", tmp_path, "gce-e2e", key_path,
        f"GCE_METADATA_HOST={metadata} GCE_METADATA_IP={metadata}",
        {"project_id": PROJECT, "api_endpoint": fake.url}, keep_setup=True)


def _kinds(fake) -> list[tuple[str, str]]:
    with fake._lock:
        return sorted((i["labels"]["node-kind"], i["labels"]["node-type"])
                      for i in fake.instances.values())


@pytest.fixture
def cluster_cli(fake, tmp_path, ssh_key):  # noqa: F811
    cli = cloud_e2e.cluster_cli(_config(tmp_path, fake, ssh_key[0]), tmp_path)
    yield cli
    if fake.live_ips():
        cli("down", "-y")


@pytest.fixture
def watcher(fake, containers):  # noqa: F811
    with watching(fake.live_ips, containers) as watcher:
        yield watcher


def test_cluster_up_gpu_demand_scales_gpu_workers_and_down_leaves_nothing(
        fake, cluster_cli, watcher, tmp_path):
    cloud_e2e.up_twice(cluster_cli)
    [head] = fake.instances.values()
    assert head["labels"]["node-kind"] == "head" and head["labels"]["node-status"] == "running"
    [account] = head["serviceAccounts"]  # its autoscaler calls the API as this account
    assert account["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]

    cloud_e2e.run_cpu_then_gpu_work(cluster_cli, lambda: _kinds(fake), tmp_path)
    workers = [i for i in fake.instances.values() if i["labels"]["node-kind"] == "worker"]
    assert {w["machineType"].rsplit("/", 1)[-1] for w in workers} == {"g2-standard-8"}
    assert {w["scheduling"]["provisioningModel"] for w in workers} == {"SPOT"}  # the config's
    assert "serviceAccounts" not in workers[0]

    wait_until(lambda: _kinds(fake) == [("head", "head")], 120, "idle GPU workers to be deleted")
    down = cluster_cli("down", "-y")
    assert down.returncode == 0, down.stderr
    assert fake.instances == {}
