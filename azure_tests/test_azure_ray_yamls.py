"""Ray's own Azure cluster YAMLs (../shared/ray-configs/azure-example-{minimal,full}.yaml) through a
real `cluster up` against the fake Resource Manager, with real SSH to container nodes, to a working
cluster, as test_azure_e2e.py runs cluster-configs/azure-gpu.yaml.

Each file is used as Ray ships it, except for the overrides in `_overrides`, each commented with why
a test needs it. Ray's location (westus2), resource group, VM sizes, image, spot worker option,
initialization commands and start commands are kept. Ray leaves subscription_id out: the loader
takes the Azure CLI's default subscription, which the test writes in its own AZURE_CONFIG_DIR
(the CLI's azureProfile.json), not in the YAML.

What a run proves, for each file: `cluster up` bootstraps (resource group, network, identity, SSH
key) and brings the head up (the full file's head runs Ray's initialization commands and starts
with Ray's `ray stop; ray start --head ... --autoscaling-config=~/ray_bootstrap_config.yaml`); a
driver sent with `cluster submit` runs a task on the head; `cluster down` leaves no VM, NIC, IP or
disk. Both files ask for no worker (`min_workers` 0), so none is launched.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from azure_tests.conftest import safe_env
from azure_tests.fake_arm import SUBSCRIPTION
from azure_tests.test_azure_provider import VM, leftovers
from tests.harness import cloud_e2e
from tests.harness.cloud_e2e import DROP
from tests.harness.containers import containers, ssh_key  # noqa: F401
from tests.harness.instances import wait_until, watching

HEAD = "ray.head.default"


@pytest.fixture
def az_subscription(arm, tmp_path, monkeypatch):
    """The Azure CLI's default subscription (`az account set`) in this test's AZURE_CONFIG_DIR;
    the CLI writes azureProfile.json with a byte-order mark."""
    directory = tmp_path / "azure-cli"
    directory.mkdir()
    profile = {"installationId": "test", "subscriptions": [
        {"id": "00000000-0000-0000-0000-00000000dead", "name": "other", "isDefault": False},
        {"id": SUBSCRIPTION, "name": "fake", "isDefault": True, "state": "Enabled"}]}
    (directory / "azureProfile.json").write_text(json.dumps(profile), encoding="utf-8-sig")
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(directory))
    return SUBSCRIPTION


@pytest.fixture
def watcher(arm, containers):  # noqa: F811
    with watching(arm.vm_ips, containers) as watcher:
        yield watcher


def _overrides(name: str, arm, key_path: Path) -> dict:
    """What the test changes in Ray's file to reach the fake and the container nodes, and why."""
    # The head's autoscaler calls the fake with a token: on Azure, its VM's managed identity
    # through the instance metadata service; here, the fake's managed-identity endpoint, which
    # azure-identity finds through these variables. Ray's start commands run in the head's login
    # shell, so they go into its ~/.profile.
    exports = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in safe_env(arm).items())
    overrides = {
        "provider": {
            # The fake, not management.azure.com (this key is ours: Ray has no endpoint key).
            "resource_manager_endpoint": arm.url,
            # The cluster's virtual network in 127.102.0.0/17, so each VM's private IP is a
            # loopback address a container node can serve (ours; default 10.0.0.0/16).
            "vnet_cidr": "127.102.0.0/17",
            # The container node serving a VM listens on its private IP; the fake's public IPs
            # lead nowhere (a Ray provider key).
            "use_internal_ips": True,
        },
        # Container nodes accept only the harness's key; bootstrap installs its public half on
        # the VMs, as it would the generated key's (Ray's auth keys, named in its comments).
        "auth": {"ssh_private_key": str(key_path)},
        "head_setup_commands": [f"echo {shlex.quote(exports)} >> ~/.profile"],
    }
    if name == "azure-example-full.yaml":
        # Running nodes in containers is refused by design (docs/config-reference.md, "Coming
        # from Ray"); the rest of the docker section (no image) is then a no-op, as in Ray.
        overrides["docker"] = {"image": DROP}
        # Ray's head_setup_commands `pip install -U azure-cli-core==2.29.1 azure-identity...`
        # are replaced by the line above: there is no network here, and the runtime install
        # ships the head's Azure SDKs with it.
    return overrides


@pytest.mark.parametrize("name", ["azure-example-minimal.yaml", "azure-example-full.yaml"])
def test_rays_azure_example_comes_up_runs_work_and_goes_down(
        name, arm, az_subscription, watcher, tmp_path, ssh_key):  # noqa: F811
    path = cloud_e2e.ray_yaml(name, tmp_path, _overrides(name, arm, ssh_key[0]))
    assert "subscription_id" not in yaml.safe_load(path.read_text())["provider"]  # as Ray's
    cli = cloud_e2e.cluster_cli(path, tmp_path)
    try:
        up = cli("up", "-y")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr
        [head] = arm.of_type(VM)
        tags = head["tags"]
        assert (tags["node-kind"], tags["node-type"], tags["node-status"]) == \
            ("head", HEAD, "running")
        assert head["location"] == "westus2"
        assert f"/subscriptions/{az_subscription}/resourceGroups/ray-cluster/" in head["id"]
        assert head["properties"]["hardwareProfile"]["vmSize"] == "Standard_D2s_v3"
        node = watcher.nodes[head["name"]]
        copied = yaml.safe_load((node.root / "home/ubuntu/ray_bootstrap_config.yaml").read_text())
        assert copied["provider"]["subscription_id"] == az_subscription  # from the CLI profile
        if name == "azure-example-full.yaml":
            image = head["properties"]["storageProfile"]["imageReference"]
            assert (image["publisher"], image["offer"], image["sku"]) == \
                ("microsoft-dsvm", "ubuntu-1804", "1804-gen2")
            assert (node.root / "home/ubuntu/.sudo_as_admin_successful").exists()  # Ray's init
            assert "ray start: ignoring options this runtime has no counterpart for: " \
                   "--object-manager-port" in up.stdout  # Ray's head_start_ray_commands
        assert cloud_e2e.run_on_every_node(cli, tmp_path) == [HEAD]
        cloud_e2e.wait_for_autoscaler_tick(cli)  # it reached the fake with the head's credentials

        down = cli("down", "-y")
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr
        assert leftovers(arm) == {}
        wait_until(lambda: not watcher.nodes, 10, "the container nodes to power off")
    finally:
        if arm.of_type(VM):
            cli("down", "-y")
