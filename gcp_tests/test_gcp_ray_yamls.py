"""Ray's own GCP cluster YAMLs (../shared/ray-configs/gcp-example-{minimal,full}.yaml) through a
real `cluster up` against the fake Compute Engine server, with real SSH to container nodes, to a
working cluster, as test_gcp_e2e.py runs cluster-configs/gcp-gpu.yaml.

Each file is used as Ray ships it, except for the overrides in `_overrides`, each commented with why
a test needs it. Ray's region and zone (us-west1, us-west1-a), machine types, boot disk image,
`scheduling` list and start commands are kept: the fake's catalog has them. Ray leaves
`project_id: null`: the loader fills it from gcloud's default project, which the test writes in
its own CLOUDSDK_CONFIG (gcloud's `configurations/config_default`), not in the YAML.

What a run proves, for each file: `cluster up` bootstraps (zones, image, firewall, SSH key) and
brings the head up (the full file's head starts with Ray's `ray stop; ray start --head ...
--autoscaling-config=~/ray_bootstrap_config.yaml`); the head's autoscaler launches the worker the
full file's `min_workers: 1` asks for, which joins with Ray's own worker start commands; a driver
sent with `cluster submit` runs a task on each node; `cluster down` leaves no instance.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from gcp_tests.conftest import assert_loopback_url
from gcp_tests.fake_gce import PROJECT
from launcher.providers.gcp import decode_label
from tests.harness import cloud_e2e
from tests.harness.cloud_e2e import DROP
from tests.harness.containers import containers, ssh_key  # noqa: F401
from tests.harness.instances import wait_until, watching

HEAD, WORKER = "ray_head_default", "ray_worker_small"  # Ray's GCP node type names
RAY_IMAGE = "projects/deeplearning-platform-release/global/images/common-cpu-v20240922"


@pytest.fixture
def gcloud_project(tmp_path, monkeypatch):
    """gcloud's default project (`gcloud config set project`) in this test's CLOUDSDK_CONFIG."""
    config_dir = tmp_path / "gcloud"
    (config_dir / "configurations").mkdir(parents=True)
    (config_dir / "active_config").write_text("default")
    (config_dir / "configurations" / "config_default").write_text(
        f"[core]\nproject = {PROJECT}\n")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(config_dir))
    return PROJECT


@pytest.fixture
def watcher(fake, containers):  # noqa: F811
    with watching(fake.live_ips, containers) as watcher:
        yield watcher


def _overrides(name: str, fake, key_path: Path) -> dict:
    """What the test changes in Ray's file to reach the fake and the container nodes, and why."""
    assert_loopback_url(fake.url)
    overrides = {
        "provider": {
            # The fake, not compute.googleapis.com (this key is ours: Ray has no endpoint key).
            "api_endpoint": fake.url,
            # The container node serving an instance listens on its internal IP (127.101.x);
            # the fake's external IPs lead nowhere (a Ray provider key).
            "use_internal_ips": True,
        },
        # Container nodes accept only the harness's key; bootstrap puts its public half in the
        # instances' ssh-keys metadata, as it would the generated key's.
        "auth": {"ssh_private_key": str(key_path)},
        # The head's autoscaler calls the fake: on GCE it would get tokens from its VM's
        # metadata server, which Ray's start commands cannot point at the fake (that takes
        # GCE_METADATA_HOST in their environment). google-auth's Application Default
        # Credentials read this file, where `gcloud auth application-default login` leaves it;
        # here it holds a service-account key of the fake.
        "file_mounts": {"~/.config/gcloud/application_default_credentials.json":
                        os.environ["GOOGLE_APPLICATION_CREDENTIALS"]},
    }
    if name == "gcp-example-full.yaml":
        # Running nodes in containers is refused by design (docs/config-reference.md, "Coming
        # from Ray"); the rest of the docker section (no image) is then a no-op, as in Ray.
        overrides["docker"] = {"image": DROP}
        # Ray's `pip install google-api-python-client==1.7.8`: there is no network here, and the
        # runtime install ships the head's Compute Engine SDK with it.
        overrides["head_setup_commands"] = []
    return overrides


def _labels(instance: dict) -> dict:
    return {decode_label(k): decode_label(v) for k, v in instance["labels"].items()}


def _statuses(fake) -> list[tuple[str, str, str]]:
    with fake._lock:
        labels = [_labels(i) for i in fake.instances.values()]
    return sorted((t["node-kind"], t["node-type"], t.get("node-status", "")) for t in labels)


@pytest.mark.parametrize("name", ["gcp-example-minimal.yaml", "gcp-example-full.yaml"])
def test_rays_gcp_example_comes_up_runs_work_on_every_node_and_goes_down(
        name, fake, gcloud_project, watcher, tmp_path, ssh_key):  # noqa: F811
    path = cloud_e2e.ray_yaml(name, tmp_path, _overrides(name, fake, ssh_key[0]))
    assert yaml.safe_load(path.read_text())["provider"]["project_id"] is None  # Ray's null, kept
    cli = cloud_e2e.cluster_cli(path, tmp_path)
    try:
        up = cli("up", "-y")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr
        [(head_name, head)] = fake.instances.items()
        tags = _labels(head)
        assert (tags["node-kind"], tags["node-type"], tags["node-status"]) == \
            ("head", HEAD, "running")
        assert head["zone"].endswith(f"/{gcloud_project}/zones/us-west1-a")  # Ray's zone
        node = watcher.nodes[head_name]
        copied = (node.root / "home/ubuntu/ray_bootstrap_config.yaml").read_text()
        assert yaml.safe_load(copied)["provider"]["project_id"] == gcloud_project  # from gcloud
        expected = [HEAD]
        if name == "gcp-example-full.yaml":
            assert "ray start: ignoring options this runtime has no counterpart for: " \
                   "--object-manager-port" in up.stdout
            assert head["disks"][0]["initializeParams"]["sourceImage"] == RAY_IMAGE
            # min_workers: 1 of Ray's ray_worker_small
            wait_until(lambda: _statuses(fake) == [("head", HEAD, "running"),
                                                   ("worker", WORKER, "running")],
                       120, "the worker min_workers asks for to be up")
            [(worker_name, worker)] = [(n, i) for n, i in fake.instances.items()
                                       if n != head_name]
            assert worker["scheduling"].get("preemptible") is True  # Ray's scheduling list
            assert worker["machineType"].endswith("/machineTypes/n1-standard-2")
            log = node.root / f"home/ubuntu/.cluster/logs/nodes/{worker_name}.log"
            assert "ray start: ignoring options this runtime has no counterpart for: " \
                   "--object-manager-port" in log.read_text()  # Ray's worker start commands
            expected = [HEAD, WORKER]
        assert cloud_e2e.run_on_every_node(cli, tmp_path) == expected
        cloud_e2e.wait_for_autoscaler_tick(cli)  # it reached the fake with the head's credentials

        down = cli("down", "-y")
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr
        assert fake.instances == {}
        wait_until(lambda: not watcher.nodes, 10, "the container nodes to power off")
    finally:
        if fake.live_ips():
            cli("down", "-y")
