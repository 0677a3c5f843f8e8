"""Ray's own cluster YAMLs (../shared/ray-configs) and Ray's keys load unchanged: Ray's names are
read as ours, Ray's defaults apply, and what has no counterpart is a no-op or one clear line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from launcher.config import bootstrap_yaml, config_from_dict
from launcher.errors import ConfigError
from tests.conftest import CLUSTER

RAY_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "ray-configs"
SUBSCRIPTION, PROJECT = "00000000-0000-0000-0000-00000000beef", "ray-user-project"


@pytest.fixture(autouse=True)
def cloud_cli_profiles(tmp_path, monkeypatch):
    """An Azure CLI profile and a gcloud configuration, as `az login` / `gcloud init` leave."""
    for key in ("AZURE_SUBSCRIPTION_ID", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    azure = tmp_path / "azure"
    azure.mkdir()
    (azure / "azureProfile.json").write_text(json.dumps({"subscriptions": [
        {"id": "other", "isDefault": False}, {"id": SUBSCRIPTION, "isDefault": True}]}),
        encoding="utf-8-sig")
    gcloud = tmp_path / "gcloud" / "configurations"
    gcloud.mkdir(parents=True)
    (gcloud / "config_default").write_text(f"[core]\nproject = {PROJECT}\n")
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(azure))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))


def ray_config(name: str) -> dict:
    return yaml.safe_load((RAY_CONFIGS / name).read_text())


def error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, "ray.yaml")
    return str(info.value)


@pytest.mark.parametrize("name", sorted(p.name for p in RAY_CONFIGS.glob("*.yaml")))
def test_each_of_rays_configs_loads(name):
    data = ray_config(name)
    data.setdefault("provider", {"type": "local"})  # Ray's local defaults come without one
    if name == "local-example-full.yaml":  # placeholders for the user's hosts and counts
        data.update(min_workers=2, max_workers=2, auth={"ssh_user": "me", "ssh_private_key": "k"})
        data["provider"].update(head_ip="10.0.0.1", worker_ips=["10.0.0.2", "10.0.0.3"])
        # containers on Ray's local provider with hosts (our ssh): one clear line
        assert error(data) == ("ray.yaml: docker.image: not supported with provider type 'ssh': "
                               "nodes run in containers on aws, gcp and azure "
                               "(see docs/config-reference.md#docker)")
        data["docker"].pop("image")
    config = config_from_dict(data, name)
    assert config.head_node_type in config.node_types
    if (data.get("docker") or {}).get("image"):  # on clouds, nodes run in Ray's containers
        assert dict(config.docker) | data["docker"] == dict(config.docker)
    if "head_start_ray_commands" in data:  # Ray's start commands run as written
        assert config.head_start_commands == tuple(data["head_start_ray_commands"])


def test_rays_start_command_keys_are_ours_and_both_names_at_once_is_an_error():
    data = ray_config("aws-example-minimal.yaml")
    data["head_start_ray_commands"] = ["ray start --head --port=6379"]
    assert config_from_dict(data).head_start_commands == ("ray start --head --port=6379",)
    data["head_start_commands"] = ["cluster start --head"]
    assert "give either head_start_ray_commands (Ray's name) or head_start_commands" in error(data)


def test_rays_defaults_fill_node_types_head_type_and_cloud_accounts():
    aws = config_from_dict({"cluster_name": "a", "provider": {"type": "aws", "region": "us-west-2"}})
    assert aws.head_node_type == "ray.head.default"
    assert aws.node_types["ray.worker.default"].node_config == {"InstanceType": "m5.large"}
    minimal = config_from_dict(ray_config("aws-example-minimal.yaml"))  # types, no head type
    assert minimal.head_node_type == "ray.head.default"
    assert dict(minimal.node_types["ray.worker.default"].resources) == {}  # {}: the cloud detects
    azure = config_from_dict(ray_config("azure-example-minimal.yaml"))
    assert azure.provider["subscription_id"] == SUBSCRIPTION  # the Azure CLI's default
    gcp = config_from_dict(ray_config("gcp-example-minimal.yaml"))
    assert gcp.provider["project_id"] == PROJECT  # gcloud's default project
    assert "project_id: " + PROJECT in bootstrap_yaml(gcp)  # the head has no gcloud profile


def test_keys_without_counterpart_are_no_ops_at_their_inert_value_and_errors_otherwise():
    base = ray_config("aws-example-minimal.yaml")
    quiet = config_from_dict({**base, "docker": {}, "cluster_synced_files": [],
                              "file_mounts_sync_continuously": False})
    assert quiet.notes == ()
    noted = config_from_dict({**base, "docker": {"container_name": "ray_container"}})
    assert len(noted.notes) == 1 and "no image" in noted.notes[0]
    for key, value in (("file_mounts_sync_continuously", True),
                       ("cluster_synced_files", ["/data"])):
        message = error({**base, key: value})
        assert f"ray.yaml: {key}: not supported" in message and "#coming-from-ray" in message
    per_type = {**base, "available_node_types": {
        **base["available_node_types"], "gpu": {"docker": {"worker_image": "rayproject/ray:gpu"}}}}
    assert config_from_dict(per_type).node_types["gpu"].docker == {"worker_image": "rayproject/ray:gpu"}


def test_top_level_min_workers_sets_the_default_worker_type_only():
    config = config_from_dict({"cluster_name": "a", "min_workers": 1,
                               "provider": {"type": "aws", "region": "us-west-2"}})
    assert config.node_types["ray.worker.default"].min_workers == 1
    with_types = ray_config("aws-example-minimal.yaml") | {"min_workers": 2}
    assert "min_workers: set min_workers per node type" in error(with_types)
    assert config_from_dict(with_types | {"min_workers": 0}).head_node_type == "ray.head.default"


def test_rays_local_provider_with_hosts_is_the_ssh_provider_with_one_node_type():
    config = config_from_dict({
        "cluster_name": "on_prem", "auth": {"ssh_user": "me", "ssh_private_key": "k"},
        "provider": {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2", "10.0.0.3"]}})
    assert config.provider["type"] == "ssh"
    node = config.node_types["local.cluster.node"]
    assert (config.head_node_type, node.min_workers, node.max_workers) == (
        "local.cluster.node", 2, 2)
    assert config.cluster_name == "on_prem"  # Ray's names may hold "_"


def test_validate_and_dry_run_print_the_resolved_config_and_create_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env["HOME"] = str(tmp_path / "home")  # nothing of a real user, no cloud credentials
    minimal = RAY_CONFIGS / "aws-example-minimal.yaml"
    valid = subprocess.run([CLUSTER, "validate", str(minimal)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert valid.returncode == 0 and "valid (aws provider; node types: ray.head.default, " \
        "ray.worker.default; head: ray.head.default)" in valid.stdout, valid.stderr
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # boto3 must not look for an instance role
    # the dry run reads the account (moto_tests/test_aws_dry_run.py shows it against moto): here,
    # without credentials, it stops at its first read, in one line, having written nothing
    dry = subprocess.run([CLUSTER, "up", "--dry-run", str(minimal)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 1 and dry.stderr.count("\n") == 1, dry.stderr
    assert "no AWS credentials found" in dry.stderr and dry.stdout == ""
    assert not (tmp_path / "home" / ".cluster-launcher").exists()  # no state, no keys written
    full = subprocess.run([CLUSTER, "validate", str(RAY_CONFIGS / "aws-example-full.yaml")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert full.returncode == 0, full.stderr  # its docker section: nodes in Ray's containers
