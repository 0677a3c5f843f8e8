"""`cluster up --dry-run` on AWS against moto in-process: the bootstrap runs read-only (every
lookup, so bad input fails in the same one line), prints the resolved config and what it would
create, and the account (and ~/.cluster-launcher) is left exactly as it was. Also Ray's
provider.security_group (GroupName, IpPermissions) and key_pair.key_name in a real bootstrap."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import boto3
import pytest
import yaml
from click.testing import CliRunner

from launcher.cli import cli
from launcher.errors import ConfigError
from moto_tests.conftest import DLAMI, REGION, amazon_image
from moto_tests.test_aws_provider import bootstrapped

DASHBOARD = {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
             "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}


def dry_run(tmp_path, head_type="m5.large", **provider):
    config = {"cluster_name": "dry", "max_workers": 2,
              "provider": {"type": "aws", "region": REGION, **provider},
              "available_node_types": {
                  "ray.head.default": {"node_config": {"InstanceType": head_type,
                                                       "ImageId": "latest_dlami"}},
                  "ray.worker.default": {"node_config": {"InstanceType": "g5.xlarge"},
                                         "min_workers": 1}},
              "head_node_type": "ray.head.default"}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return CliRunner().invoke(cli, ["up", "--dry-run", str(path)])


def account(ec2) -> dict:
    """Everything a bootstrap could have made, and the instances."""
    iam = boto3.client("iam", region_name=REGION)
    groups = ec2.describe_security_groups()["SecurityGroups"]
    return {"groups": sorted(g["GroupName"] for g in groups),
            "keys": ec2.describe_key_pairs()["KeyPairs"],
            "roles": iam.list_roles()["Roles"],
            "profiles": iam.list_instance_profiles()["InstanceProfiles"],
            "instances": ec2.describe_instances()["Reservations"]}


def test_dry_run_prints_what_it_would_create_and_creates_nothing(ec2, tmp_path):
    ami = amazon_image(ec2, DLAMI.format("20250301"), datetime(2025, 3, 1, tzinfo=timezone.utc))
    before = account(ec2)
    result = dry_run(tmp_path,
                     security_group={"GroupName": "ray-dry", "IpPermissions": [DASHBOARD]})
    assert result.exit_code == 0, result.output
    plan = [line[4:] for line in result.stdout.splitlines() if line.startswith("#   ")]
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    assert f"would create security group ray-dry in {vpc}" in plan
    assert any(line.startswith("would create key pair cluster-launcher_us-east-1") for line in plan)
    assert "would create IAM role and instance profile cluster-launcher-head-v1 for the head's " \
           "autoscaler" in plan
    assert any(line.startswith(f"Using AMI {ami}") for line in plan)
    assert "workers of type ray.worker.default: 1 at once, up to 2 on demand" in plan
    resolved = yaml.safe_load(result.stdout)  # the plan follows as YAML comments
    head = resolved["available_node_types"]["ray.head.default"]
    worker = resolved["available_node_types"]["ray.worker.default"]
    assert head["node_config"]["ImageId"] == worker["node_config"]["ImageId"] == ami
    assert head["node_config"]["SecurityGroupIds"] == ["<to be created: security group ray-dry>"]
    assert len(head["node_config"]["SubnetIds"]) == 6  # the default VPC's, looked up
    assert head["node_config"]["IamInstanceProfile"]["Arn"].startswith("<to be created: ")
    assert worker["resources"]["GPU"] == 1 and head["resources"]["CPU"] == 2  # from the catalog
    assert account(ec2) == before
    assert not os.path.exists(os.path.expanduser("~/.cluster-launcher"))


def test_dry_run_reuses_what_exists_and_lists_only_the_rest(ec2, tmp_path):
    amazon_image(ec2, DLAMI.format("20250301"), datetime(2025, 3, 1, tzinfo=timezone.utc))
    ec2.create_security_group(GroupName="cluster-launcher-dry", Description="made before",
                              VpcId=ec2.describe_vpcs()["Vpcs"][0]["VpcId"])
    result = dry_run(tmp_path)
    assert result.exit_code == 0, result.output
    assert "would create security group" not in result.stdout
    assert "would create key pair" in result.stdout


def test_dry_run_with_a_bad_instance_type_fails_in_the_same_one_line(ec2, tmp_path):
    amazon_image(ec2, DLAMI.format("20250301"), datetime(2025, 3, 1, tzinfo=timezone.utc))
    before = account(ec2)
    result = dry_run(tmp_path, head_type="zz.huge")
    assert result.exit_code != 0 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "InvalidInstanceType" in result.stderr
    assert result.stderr.startswith("Error: available_node_types.")
    assert account(ec2) == before


def test_dry_run_without_credentials_is_the_usual_one_line(ec2, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = dry_run(tmp_path)
    assert result.exit_code != 0 and result.stderr.count("\n") == 1
    assert "no AWS credentials found" in result.stderr


def test_security_group_name_and_extra_ingress_rules_as_ray_reads_them(ec2):
    group = {"GroupName": "ray-sg", "IpPermissions": [DASHBOARD]}
    config, _ = bootstrapped(ec2, provider={"security_group": group})
    [group_id] = config.node_types["head"].node_config["SecurityGroupIds"]
    [found] = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    assert found["GroupName"] == "ray-sg"
    ports = sorted((r["IpProtocol"], r.get("FromPort", 0)) for r in found["IpPermissions"])
    assert ports == [("-1", 0), ("tcp", 22), ("tcp", 8265)]  # the cluster, SSH, Ray's rule
    again, _ = bootstrapped(ec2, provider={"security_group": group})  # found by name: reused
    assert again.node_types["head"].node_config["SecurityGroupIds"] == [group_id]


def test_malformed_ip_permissions_are_one_line_before_anything_is_created(ec2):
    bad = {"IpPermissions": [{"IpProtocol": "tcp", "FromPort": "eight"}]}
    with pytest.raises(ConfigError) as raised:
        bootstrapped(ec2, provider={"security_group": bad})
    assert str(raised.value).startswith("provider.security_group.IpPermissions: ")
    assert "FromPort" in str(raised.value) and "\n" not in str(raised.value)
    assert [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]] == ["default"]
    assert ec2.describe_key_pairs()["KeyPairs"] == []


def test_rays_key_pair_key_name_names_the_key_pair(ec2):
    config, _ = bootstrapped(ec2, provider={"key_pair": {"key_name": "my-ray-key"}})
    assert config.node_types["head"].node_config["KeyName"] == "my-ray-key"
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == ["my-ray-key"]
