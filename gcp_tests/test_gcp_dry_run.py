"""`cluster up --dry-run` on GCP against the fake Compute Engine: the bootstrap runs read-only
(zones, machine types, images, network, firewall lookups), prints the resolved config and what it
would create (SSH key, firewall rules), and creates nothing, in the project or in
~/.cluster-launcher. Also Ray's provider.gcp_credentials, in place of Application Default
Credentials."""

from __future__ import annotations

import json
import os

import yaml
from click.testing import CliRunner

from gcp_tests.conftest import REGION
from gcp_tests.fake_gce import PROJECT
from launcher.cli import cli


def dry_run(fake, tmp_path, head_type="n2-standard-4", **provider):
    config = {"cluster_name": "dry", "max_workers": 2,
              "provider": {"type": "gcp", "project_id": PROJECT, "region": REGION,
                           "availability_zone": f"{REGION}-a", "api_endpoint": fake.url,
                           **provider},
              "available_node_types": {
                  "head": {"node_config": {"machineType": head_type}},
                  "gpu": {"node_config": {"machineType": "g2-standard-8"}, "min_workers": 1}},
              "head_node_type": "head"}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return CliRunner().invoke(cli, ["up", "--dry-run", str(path)])


def created_nothing(fake):
    assert fake.instances == {} and fake.firewalls == {}
    assert not [call for call in fake.calls if call[0] in ("POST", "DELETE")]
    assert not os.path.exists(os.path.expanduser("~/.cluster-launcher"))


def test_dry_run_prints_what_it_would_create_and_creates_nothing(fake, tmp_path):
    result = dry_run(fake, tmp_path)
    assert result.exit_code == 0, result.output
    plan = [line[4:] for line in result.stdout.splitlines() if line.startswith("#   ")]
    key = os.path.expanduser(f"~/.cluster-launcher/keys/cluster-launcher_gcp_{PROJECT}.pem")
    assert plan[:3] == [f"would create SSH key {key}",
                        "would create firewall rule cluster-launcher-dry-ssh on default",
                        "would create firewall rule cluster-launcher-dry-internal on default"]
    resolved = yaml.safe_load(result.stdout)
    head = resolved["available_node_types"]["head"]
    gpu = resolved["available_node_types"]["gpu"]
    assert head["node_config"]["zones"] == [f"{REGION}-a"]
    assert head["node_config"]["networkInterfaces"][0]["network"].endswith("/networks/default")
    [ssh_keys] = head["node_config"]["metadata"]["items"]
    assert ssh_keys["value"] == f"ubuntu:<to be created: public key of {key}>"
    assert gpu["resources"]["GPU"] == 1 and head["resources"]["CPU"] == 4
    assert [call for call in fake.calls if call[0] == "GET"]  # it did look
    created_nothing(fake)


def test_dry_run_with_a_bad_machine_type_fails_in_the_same_one_line(fake, tmp_path):
    result = dry_run(fake, tmp_path, head_type="n9-huge-1")
    assert result.exit_code != 0 and result.stdout == ""
    assert result.stderr == ("Error: available_node_types.head.node_config.machineType: "
                             f"'n9-huge-1' is not offered in {REGION}-a (notFound)\n")
    created_nothing(fake)


def test_dry_run_without_credentials_is_the_usual_one_line(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    result = dry_run(fake, tmp_path)
    assert result.exit_code != 0 and result.stderr.count("\n") == 1
    assert "no GCP credentials found" in result.stderr
    assert fake.calls == []


def test_rays_gcp_credentials_replace_application_default_credentials(fake, tmp_path,
                                                                     monkeypatch):
    key = open(os.environ["GOOGLE_APPLICATION_CREDENTIALS"]).read()
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    account = dry_run(fake, tmp_path, gcp_credentials={"type": "service_account",
                                                       "credentials": key})
    assert account.exit_code == 0, account.output
    token = dry_run(fake, tmp_path, gcp_credentials={
        "type": "credentials_token", "credentials": fake.issue_token()["access_token"]})
    assert token.exit_code == 0, token.output
    broken = dry_run(fake, tmp_path, gcp_credentials={"type": "service_account",
                                                      "credentials": json.dumps({"a": 1})})
    assert broken.exit_code != 0 and broken.stderr.count("\n") == 1
    assert "provider.gcp_credentials.credentials: not a service account's JSON key" in \
        broken.stderr
    created_nothing(fake)
