"""Bad input fails in one line naming the key path or the AWS error code, before anything is
created (bootstrap reads everything it checks before it creates anything)."""

from __future__ import annotations

import pytest

from launcher.errors import AuthError, ConfigError, InvalidNodeConfig
from moto_tests.test_aws_provider import bootstrapped


def _nothing_created(ec2):
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert all(g["GroupName"] == "default" for g in groups)
    assert ec2.describe_instances()["Reservations"] == []


def _node(ec2, **node_config):
    return {"node_config": {"InstanceType": "m5.large", "ImageId": ec2.image_id, **node_config}}


def _other_vpc_subnet(ec2):
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    return ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]


CASES = {
    "unknown-region": (lambda ec2: {"provider": {"region": "mars-north-1"}, "head": _node(ec2)},
                       ConfigError, "provider.region"),
    "unknown-instance-type": (lambda ec2: {"head": _node(ec2, InstanceType="zz.huge")},
                              InvalidNodeConfig, "InvalidInstanceType"),
    "missing-ami": (lambda ec2: {"head": _node(ec2, ImageId="ami-0123456789abcdef0")},
                    InvalidNodeConfig,
                    "available_node_types.head.node_config.ImageId (DescribeImages): InvalidAMIID"),
    "no-default-ami": (lambda ec2: {"head": {"node_config": {"InstanceType": "m5.large"}}},
                       InvalidNodeConfig, "ImageId: missing"),
    "subnets-in-two-vpcs": (lambda ec2: {"head": _node(ec2, SubnetIds=[
        _other_vpc_subnet(ec2), ec2.describe_subnets()["Subnets"][0]["SubnetId"]])},
        InvalidNodeConfig, "different VPCs"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_creates_nothing(ec2, case):
    make, error, words = CASES[case]
    kwargs = make(ec2)
    region = kwargs.pop("provider", {}).get("region")
    if region:
        kwargs["provider"] = {"region": region}
    with pytest.raises(error) as raised:
        bootstrapped(ec2, **kwargs)
    assert words in str(raised.value) and "\n" not in str(raised.value)
    _nothing_created(ec2)


def test_missing_credentials_is_one_auth_line(ec2, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthError) as raised:
        bootstrapped(ec2)
    assert "no AWS credentials" in str(raised.value) and "\n" not in str(raised.value)


def test_cli_without_credentials_prints_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "cluster_name": "nocreds", "provider": {"type": "aws", "region": "us-east-1"},
        "available_node_types": {"head": {"node_config": {"InstanceType": "m5.large"}}},
        "head_node_type": "head"}))
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID",
                                                            "AWS_SECRET_ACCESS_KEY")}
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # were credentials found, nothing leaves anyway
    cli = str(Path(sys.executable).parent / "cluster")
    result = subprocess.run([cli, "up", str(path), "-y"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "no AWS credentials" in result.stderr
