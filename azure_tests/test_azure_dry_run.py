"""`cluster up --dry-run` on Azure against the fake Resource Manager: the bootstrap runs read-only
(VM size catalog, resource group, virtual network, identity lookups), prints the resolved config
and what it would create, and creates nothing, in the subscription or in ~/.cluster-launcher.
Also Ray's Azure provider keys with a counterpart: msi_name, msi_resource_group, tags,
subnet_mask, use_external_head_ip, availability_zone: auto."""

from __future__ import annotations

import os

import pytest
import yaml
from click.testing import CliRunner

from azure_tests.conftest import GROUP, LOCATION, provider_section
from azure_tests.test_azure_provider import bootstrapped, node, worker_tags
from launcher import tags as T
from launcher.cli import cli
from launcher.errors import ConfigError

IDENTITY = "Microsoft.ManagedIdentity/userAssignedIdentities"


def dry_run(arm, tmp_path, head_size="Standard_D4s_v5", **provider):
    config = {"cluster_name": "dry", "max_workers": 2,
              "provider": provider_section(arm, **provider),
              "available_node_types": {"head": node(head_size),
                                       "gpu": {**node("Standard_NC4as_T4_v3"), "min_workers": 1}},
              "head_node_type": "head"}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return CliRunner().invoke(cli, ["up", "--dry-run", str(path)])


def created_nothing(arm):
    assert arm.resources == {}
    assert [method for method, _ in arm.requests if method not in ("GET", "HEAD")] == []
    assert not os.path.exists(os.path.expanduser("~/.cluster-launcher"))


def test_dry_run_prints_what_it_would_create_and_creates_nothing(arm, tmp_path):
    result = dry_run(arm, tmp_path)
    assert result.exit_code == 0, result.output
    plan = [line[4:] for line in result.stdout.splitlines() if line.startswith("#   ")]
    key = os.path.expanduser("~/.cluster-launcher/keys/cluster-launcher_azure.pem")
    assert plan[:5] == [
        f"would create SSH key pair {key}",
        f"would create resource group {GROUP} in {LOCATION}",
        "would create network security group cluster-launcher-dry-nsg and virtual network "
        "cluster-launcher-dry-vnet",
        "would create managed identity cluster-launcher-dry-head for the head's autoscaler",
        f"would create role assignment: cluster-launcher-dry-head is Contributor on resource "
        f"group {GROUP}"]
    resolved = yaml.safe_load(result.stdout)
    head = resolved["available_node_types"]["head"]
    gpu = resolved["available_node_types"]["gpu"]
    assert head["node_config"]["subnet_id"] == \
        "<to be created: subnet of cluster-launcher-dry-vnet>"
    assert head["node_config"]["identity_id"].endswith(f"{IDENTITY}/cluster-launcher-dry-head")
    assert gpu["resources"]["GPU"] == 1 and head["resources"]["CPU"] == 4
    created_nothing(arm)


def test_dry_run_with_a_bad_vm_size_fails_in_the_same_one_line(arm, tmp_path):
    result = dry_run(arm, tmp_path, head_size="Standard_Z99_v9")
    assert result.exit_code != 0 and result.stdout == ""
    assert result.stderr == ("Error: available_node_types.head.node_config.azure_arm_parameters."
                             f"vmSize: unknown VM size 'Standard_Z99_v9' in {LOCATION}\n")
    created_nothing(arm)


def test_dry_run_without_credentials_is_the_usual_one_line(arm, tmp_path, monkeypatch):
    monkeypatch.delenv("IDENTITY_ENDPOINT")
    monkeypatch.delenv("IDENTITY_HEADER")
    result = dry_run(arm, tmp_path)
    assert result.exit_code != 0 and result.stderr.count("\n") == 1
    assert "no Azure credentials found" in result.stderr
    created_nothing(arm)


def test_msi_name_names_the_head_identity_and_with_its_group_is_the_users_own(arm, tmp_path):
    config, _ = bootstrapped(arm, provider={"msi_name": "team-identity"})
    [identity] = arm.of_type(IDENTITY)
    assert identity["name"] == "team-identity"
    assert config.node_types["head"].node_config["identity_id"] == identity["id"]
    shared = {"msi_name": "team-identity", "msi_resource_group": GROUP}
    result = dry_run(arm, tmp_path, **shared)  # another cluster, the same identity: not created
    assert result.exit_code == 0, result.output
    assert "would create managed identity" not in result.stdout
    assert len(arm.of_type(IDENTITY)) == 1
    with pytest.raises(ConfigError) as raised:
        bootstrapped(arm, provider={**shared, "msi_name": "nobody"})
    assert str(raised.value) == f"provider.msi_name: no managed identity 'nobody' in resource " \
                                f"group '{GROUP}'"
    with pytest.raises(ConfigError, match="provider.msi_resource_group: resource group 'nope'"):
        bootstrapped(arm, provider={"msi_resource_group": "nope"})


def test_tags_subnet_mask_and_zone_auto_as_ray_reads_them(arm):
    config, _ = bootstrapped(arm, provider={"tags": {"team": "ml"}, "subnet_mask": "10.7.0.0/16",
                                            "availability_zone": "auto"})
    [group] = arm.of_type("Microsoft.Resources/resourceGroups")
    assert group["tags"] == {"team": "ml", "cluster-name": "t"}
    [vnet] = arm.of_type("Microsoft.Network/virtualNetworks")
    assert vnet["properties"]["addressSpace"]["addressPrefixes"] == ["10.7.0.0/16"]
    assert config.provider["vnet_cidr"] == "10.7.0.0/16"


def test_use_external_head_ip_gives_the_head_alone_a_public_ip(arm):
    config, provider = bootstrapped(arm, provider={"use_internal_ips": True,
                                                   "use_external_head_ip": True})
    [head] = provider.create("head", config.node_types["head"].node_config,
                             worker_tags(T.KIND_HEAD), 1)
    [worker] = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(), 1)
    [address] = arm.of_type("Microsoft.Network/publicIPAddresses")
    assert address["name"] == f"{head}-ip"
    assert provider.external_ip(head) == address["properties"]["ipAddress"]
    assert provider.external_ip(worker) is None
    assert provider.command_runner(head).target.host == provider.external_ip(head)
    assert provider.command_runner(worker).target.host == provider.internal_ip(worker)
