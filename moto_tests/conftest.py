"""Shared fixtures: moto in-process, fake credentials, and nothing that can leave this machine.

botocore's credential chain would ask the instance metadata service (169.254.169.254) when no
credentials are set: it is switched off here, and the shared config files point nowhere.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from datetime import datetime
from typing import Optional
from urllib.parse import urlparse

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

REGION = "us-east-1"
SAFE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/creds",
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
}
DLAMI = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) {}"


def assert_loopback_url(url: str) -> None:
    """Every endpoint a test points boto3 at must be on this machine."""
    host = urlparse(url).hostname
    assert host and ipaddress.ip_address(host).is_loopback, f"not a loopback endpoint: {url}"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith(("AWS_", "CLUSTER_"))]:
        monkeypatch.delenv(key)
    for key, value in SAFE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # keys and known_hosts of this test only
    os.makedirs(tmp_path / "home", exist_ok=True)


@pytest.fixture
def ec2(aws_env):
    """moto in-process (no sockets), with one registered AMI to launch."""
    with moto.mock_aws():
        client = boto3.client("ec2", region_name=REGION)
        client.image_id = client.register_image(Name="test-ami", Architecture="x86_64")["ImageId"]
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_server():
    """moto in server mode on 127.0.0.1, for processes (the `cluster` CLI, a head) to reach."""
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    url = f"http://127.0.0.1:{server._port}"
    assert_loopback_url(url)
    # moto's state lives in this process, shared with earlier servers and mocks: start empty
    requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
    yield url
    server.stop()


def loopback_subnet(client, zone: str) -> str:
    """A VPC 127.100.0.0/16 with one subnet 127.100.0.0/24 in `zone`: moto gives its instances
    private IPs there, loopback addresses that container nodes can serve (instance watcher)."""
    vpc = client.create_vpc(CidrBlock="127.100.0.0/16")["Vpc"]["VpcId"]
    return client.create_subnet(VpcId=vpc, CidrBlock="127.100.0.0/24",
                                AvailabilityZone=zone)["Subnet"]["SubnetId"]


def amazon_image(ec2, name: str, created: datetime, region: str = REGION) -> str:
    """An image as AWS publishes it. moto's own catalogue has nothing named like today's DLAMI
    (its two "Deep Learning AMI ..." images are from 2017, and these tests load none), and
    register_image makes the test account the owner: owner and date are set on moto's record
    (moto's state lives in this process, in server mode too)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    image_id = ec2.register_image(Name=name, Architecture="x86_64")["ImageId"]
    image = ec2_backends[DEFAULT_ACCOUNT_ID][region].amis[image_id]
    image.owner_alias, image.creation_date = "amazon", created
    return image_id


def instance_ips(client) -> dict[str, Optional[str]]:
    """Instance id -> private IP of every pending or running instance (for InstanceWatcher)."""
    return {i["InstanceId"]: i.get("PrivateIpAddress")
            for r in client.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] in ("pending", "running")}


def live_tags(client) -> dict[str, dict]:
    """Instance id -> tags of every pending or running instance."""
    return {i["InstanceId"]: {t["Key"]: t["Value"] for t in i.get("Tags", [])}
            for r in client.describe_instances(Filters=[{"Name": "instance-state-name",
                                                         "Values": ["pending", "running"]}])
            ["Reservations"] for i in r["Instances"]}
