"""Bad input fails in one line naming the key path or the GCP error, before anything is created
(bootstrap reads everything it checks before it creates anything)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gcp_tests.conftest import REGION
from gcp_tests.fake_gce import PROJECT
from gcp_tests.test_gcp_provider import L4, bootstrapped
from launcher.errors import AuthError, ConfigError, InvalidNodeConfig, LauncherError

CLUSTER = str(Path(sys.executable).parent / "cluster")


def _nothing_created(fake):
    assert fake.instances == {} and fake.firewalls == {}
    assert not [c for c in fake.calls if c[0] in ("POST", "DELETE")]


def _head(**node_config):
    return {"node_config": {"machineType": "n2-standard-4", **node_config}}


IMAGE = "projects/debian-cloud/global/images/family/debian-99"
CASES = {
    "unknown-region": ({"provider": {"region": "mars-north1"}}, ConfigError,
                       "provider.region 'mars-north1': notFound"),
    "unknown-zone": ({"provider": {"availability_zone": f"{REGION}-z"}}, ConfigError,
                     f"provider.availability_zone: '{REGION}-z' is not a zone of {REGION}"),
    "unknown-machine-type": ({"head": _head(machineType="n9-huge-1")}, InvalidNodeConfig,
                             "available_node_types.head.node_config.machineType: 'n9-huge-1' "
                             "is not offered"),
    "gpu-not-in-zone": ({"provider": {"availability_zone": f"{REGION}-f"},
                         "gpu": {"node_config": {"machineType": "n1-standard-8",
                                                 "guestAccelerators": [{
                                                     "acceleratorType": "nvidia-l4",
                                                     "acceleratorCount": 1}]}}},
                        InvalidNodeConfig, "available_node_types.gpu.node_config."
                        f"guestAccelerators[0].acceleratorType: 'nvidia-l4' is not offered in "
                        f"{REGION}-f"),
    "missing-image": ({"head": _head(disks=[{"boot": True, "initializeParams": {
        "sourceImage": IMAGE}}])}, InvalidNodeConfig,
        "available_node_types.head.node_config.disks[0].initializeParams.sourceImage: notFound"),
    "unknown-node-config-key": ({"head": _head(machineTyp="x")}, InvalidNodeConfig,
                                "available_node_types.head.node_config: "),
    "missing-machine-type": ({"head": {"node_config": {}}}, ConfigError,
                             "available_node_types.head.node_config.machineType: missing"),
    "tpu-vm": ({"head": {"node_config": {"acceleratorType": "v2-8",
                                         "runtimeVersion": "tpu-vm-base"}}}, ConfigError,
               "available_node_types.head.node_config.acceleratorType: TPU VMs are not supported"),
    "unknown-network": ({"provider": {"network": "nope"}}, InvalidNodeConfig,
                        "provider.network: notFound"),
    "plain-http-endpoint": ({"provider": {"api_endpoint": "http://compute.example.com"}},
                            ConfigError, "provider.api_endpoint: 'http://compute.example.com': "
                            "expected an https:// URL"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_creates_nothing(fake, case):
    kwargs, error, words = CASES[case]
    with pytest.raises(error) as raised:
        bootstrapped(fake, **kwargs)
    assert words in str(raised.value) and "\n" not in str(raised.value)
    _nothing_created(fake)


def test_missing_project_id_comes_from_gcloud_or_is_named():
    from launcher.config import config_from_dict

    config = {"cluster_name": "t", "provider": {"type": "gcp", "region": REGION},
              "available_node_types": {"head": _head()}, "head_node_type": "head"}
    with pytest.raises(ConfigError) as raised:  # no gcloud configuration here (gcp_env)
        config_from_dict(config)
    assert "provider.project_id: missing, and gcloud has no default project" in str(raised.value)
    gcloud = os.path.join(os.environ["CLOUDSDK_CONFIG"], "configurations")
    os.makedirs(gcloud)
    with open(os.path.join(gcloud, "config_default"), "w") as f:
        f.write(f"[core]\nproject = {PROJECT}\n")
    assert config_from_dict(config).provider["project_id"] == PROJECT  # as `gcloud config set`


def test_missing_credentials_is_one_auth_line(fake, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    with pytest.raises(AuthError) as raised:
        bootstrapped(fake)
    assert "no GCP credentials found" in str(raised.value) and "\n" not in str(raised.value)
    assert fake.calls == []


def test_refused_credentials_are_one_auth_line(fake, monkeypatch, tmp_path):
    import json

    key = json.loads(Path(os.environ["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**key, "client_email": "someone@else.internal"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(other))
    with pytest.raises(AuthError) as raised:
        bootstrapped(fake)
    assert "authError" in str(raised.value) and "\n" not in str(raised.value)


def test_a_failed_up_leaves_nothing_that_down_cannot_find(fake, tmp_path):
    """An insert refused by Compute Engine (here: an injected quota error) creates nothing;
    whatever `cluster up` did create carries the cluster label."""
    from launcher import cluster_ops

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "cluster_name": "bad", "provider": {"type": "gcp", "project_id": "test-project",
                                            "region": REGION, "api_endpoint": fake.url},
        "available_node_types": {"head": {"node_config": dict(L4)}}, "head_node_type": "head"}))
    fake.inject("QUOTA_EXCEEDED")
    with pytest.raises(LauncherError, match="QUOTA_EXCEEDED"):
        cluster_ops.up(str(path), echo=lambda _: None)
    assert fake.instances == {}
    with pytest.raises(LauncherError, match="not running"):
        cluster_ops.down(str(path), echo=lambda _: None)


def test_cli_without_credentials_prints_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "cluster_name": "nocreds",
        "provider": {"type": "gcp", "project_id": "p", "region": REGION,
                     "api_endpoint": "http://127.0.0.1:9"},  # were credentials found: loopback
        "available_node_types": {"head": _head()}, "head_node_type": "head"}))
    result = subprocess.run([CLUSTER, "up", str(path), "-y"], env=dict(os.environ),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no GCP credentials found" in result.stderr
