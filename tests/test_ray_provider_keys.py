"""Ray's `provider:` keys, per provider type: those with a counterpart load with Ray's meaning,
those without one load at the value that changes nothing and are otherwise one "not supported"
line; any other key is one line naming provider.KEY, with a hint only of similar meaning."""

from __future__ import annotations

import pytest

from launcher.config import config_from_dict
from launcher.errors import ConfigError
from launcher.providers import make_provider

DOCS = "see docs/config-reference.md#coming-from-ray"
PROVIDERS = {
    "aws": {"type": "aws", "region": "us-west-2"},
    "gcp": {"type": "gcp", "region": "us-west1", "project_id": "p"},
    "azure": {"type": "azure", "location": "westus2", "resource_group": "rg",
              "subscription_id": "s"},
    "ssh": {"type": "ssh", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2"]},
    "local": {"type": "local"},
}
AUTH = {"ssh_user": "me", "ssh_private_key": "~/key.pem"}


def load(kind: str, **keys):
    return config_from_dict({"cluster_name": "c", "provider": {**PROVIDERS[kind], **keys},
                             "auth": AUTH, "available_node_types": {"n": {}},
                             "head_node_type": "n"}, "ray.yaml")


def error(kind: str, **keys) -> str:
    with pytest.raises(ConfigError) as raised:
        load(kind, **keys)
    assert "\n" not in str(raised.value)
    return str(raised.value)


@pytest.mark.parametrize("kind,keys", [
    ("aws", {"availability_zone": "us-west-2a,us-west-2b", "cache_stopped_nodes": True,
             "use_internal_ips": True, "security_group": {
                 "GroupName": "ray-sg", "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 80,
                                                           "ToPort": 80}]}}),
    ("gcp", {"availability_zone": "us-west1-a", "cache_stopped_nodes": True,
             "use_internal_ips": True, "gcp_credentials": {"type": "credentials_token",
                                                           "credentials": "ya29.token"}}),
    ("azure", {"availability_zone": "auto", "use_internal_ips": True,
               "use_external_head_ip": True, "msi_name": "id", "msi_resource_group": "ids",
               "tags": {"team": "ml"}}),
    ("ssh", {"external_head_ip": "203.0.113.1"}),
], ids=["aws", "gcp", "azure", "ssh"])
def test_ray_keys_with_a_counterpart_load_as_given(kind, keys):
    assert load(kind, **keys).provider == {**PROVIDERS[kind], **keys}


def test_ray_keys_under_other_names_here_are_renamed():
    assert load("aws", key_pair={"key_name": "mine"}).provider["key_pair_name"] == "mine"
    assert load("azure", subnet_mask="10.1.0.0/16").provider["vnet_cidr"] == "10.1.0.0/16"
    assert error("azure", subnet_mask="10.1.0.0/16", vnet_cidr="10.2.0.0/16") == (
        "ray.yaml: provider.subnet_mask: give either subnet_mask (Ray's name) or vnet_cidr, "
        "not both")
    assert error("aws", key_pair={"key_nam": "x"}) == (
        "ray.yaml: provider.key_pair: expected {key_name: NAME}, got {'key_nam': 'x'}")


@pytest.mark.parametrize("kind", list(PROVIDERS))
def test_autoscaler_switches_load_at_rays_defaults_and_are_refused_otherwise(kind):
    defaults = {"disable_node_updaters": False, "disable_launch_config_check": False,
                "foreground_node_launch": False, "worker_liveness_check": True,
                "worker_rpc_drain": True}
    assert load(kind, **defaults).provider == PROVIDERS[kind]
    assert error(kind, foreground_node_launch=True) == (
        f"ray.yaml: provider.foreground_node_launch: not supported (only False); {DOCS}")


@pytest.mark.parametrize("kind,key,inert,real", [
    ("aws", "cloudwatch", {}, {"agent": {"config": "cw.json"}}),
    ("azure", "unique_id", None, "RAY1"),
    ("azure", "msi_identity_id", None, "/subscriptions/s/x"),
    ("ssh", "coordinator_address", None, "10.0.0.9:1234"),
])
def test_ray_keys_without_counterpart(kind, key, inert, real):
    if inert is not None:
        assert load(kind, **{key: inert}).provider == PROVIDERS[kind]
    assert error(kind, **{key: real}).startswith(f"ray.yaml: provider.{key}: not supported")
    assert error(kind, **{key: real}).endswith(DOCS)


def test_unknown_keys_are_one_line_per_provider_type():
    assert error("aws", regoin="x") == (
        "ray.yaml: provider.regoin: unknown key for provider type 'aws'; did you mean 'region'?")
    assert error("aws", project_id="p") == (
        "ray.yaml: provider.project_id: unknown key for provider type 'aws'; a key of provider "
        "type 'gcp'")
    assert error("local", region="r").endswith("a key of provider types 'aws' and 'gcp'")
    assert error("gcp", future_key=1).startswith(
        "ray.yaml: provider.future_key: unknown key for provider type 'gcp'; expected one of: "
        "type, project_id, region")
    assert error("aws", security_group={"GroupNam": "x"}) == (
        "ray.yaml: provider.security_group.GroupNam: unknown key; did you mean 'GroupName'?")
    assert error("gcp", gcp_credentials={"type": "oauth", "credentials": "t"}).startswith(
        "ray.yaml: provider.gcp_credentials.type: expected one of 'service_account'")


def test_no_hint_of_opposite_meaning():
    message = error("aws", use_external_head_ip=True)  # Azure's, not use_internal_ips
    assert "did you mean" not in message and message.endswith("a key of provider type 'azure'")


def test_external_head_ip_is_where_this_machine_reaches_the_head(monkeypatch):
    monkeypatch.delenv("CLUSTER_NODE_ID", raising=False)
    config = load("ssh", external_head_ip="203.0.113.1")
    provider = make_provider(config.provider, config.cluster_name, config.auth)
    assert provider.command_runner("10.0.0.1").target.host == "203.0.113.1"
    assert provider.command_runner("10.0.0.2").target.host == "10.0.0.2"
    assert provider.external_ip("10.0.0.1") == "203.0.113.1"
    monkeypatch.setenv("CLUSTER_NODE_ID", "10.0.0.1")  # on the head itself: its own address
    on_head = make_provider(config.provider, config.cluster_name, config.auth)
    assert on_head.command_runner("10.0.0.1").target.host == "10.0.0.1"
