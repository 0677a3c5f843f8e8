"""`cluster up` on the aws provider against moto in server mode, with real SSH to container nodes.

moto listens on 127.0.0.1; the cluster's VPC and subnet use 127.100.0.0/16, so every instance's
private IP is a loopback address where a watcher boots a container node (tests/harness/containers)
as soon as the instance runs, and powers it off once the instance is terminated. The head's
autoscaler runs inside the head container and reaches the same moto endpoint through the
AWS_ENDPOINT_URL its start command exports (containers share the host's network).
"""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
import yaml

from moto_tests.conftest import REGION, SAFE_ENV, instance_ips, live_tags, loopback_subnet
from tests.harness import cloud_e2e
from tests.harness.containers import containers, ssh_key  # noqa: F401
from tests.harness.instances import wait_until, watching


@pytest.fixture
def aws(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    client = boto3.client("ec2", region_name=REGION, endpoint_url=moto_server)
    subnet = loopback_subnet(client, f"{REGION}a")
    image = client.register_image(Name="dl-ami-stand-in", Architecture="x86_64")["ImageId"]
    return client, subnet, image


def _config(tmp_path, endpoint, subnet, image, key_path) -> Path:
    """cluster-configs/aws-gpu.yaml, pointed at moto and at the 127.x subnet."""
    aws_env = " ".join(f"{k}={v}" for k, v in {**SAFE_ENV, "AWS_ENDPOINT_URL": endpoint}.items()
                       if not k.startswith("MOTO_"))
    path = cloud_e2e.e2e_config("aws-gpu.yaml", tmp_path, "moto-e2e", key_path, aws_env,
                                 {"region": REGION})
    config = yaml.safe_load(path.read_text())
    config["provider"].pop("availability_zone", None)
    for node_type in config["available_node_types"].values():
        node_type["node_config"].update(ImageId=image, SubnetIds=[subnet])
    path.write_text(yaml.safe_dump(config))
    return path


def _kinds(client) -> list[tuple[str, str]]:
    return sorted((t["node-kind"], t["node-type"]) for t in live_tags(client).values())


@pytest.fixture
def cluster_cli(aws, tmp_path, ssh_key, moto_server):  # noqa: F811
    client, subnet, image = aws
    cli = cloud_e2e.cluster_cli(_config(tmp_path, moto_server, subnet, image, ssh_key[0]), tmp_path)
    yield cli
    if live_tags(client):
        cli("down", "-y")


@pytest.fixture
def watcher(aws, containers):  # noqa: F811
    with watching(lambda: instance_ips(aws[0]), containers) as watcher:
        yield watcher


def test_cluster_up_gpu_demand_scales_gpu_workers_and_down_leaves_nothing(
        aws, cluster_cli, watcher, tmp_path):
    client = aws[0]
    cloud_e2e.up_twice(cluster_cli)
    [(head, tags)] = live_tags(client).items()
    assert tags["node-kind"] == "head" and tags["node-status"] == "running"
    instance = client.describe_instances(InstanceIds=[head])["Reservations"][0]["Instances"][0]
    assert instance["IamInstanceProfile"]["Arn"].endswith("cluster-launcher-head-v1")

    cloud_e2e.run_cpu_then_gpu_work(cluster_cli, lambda: _kinds(client), tmp_path)
    reservations = client.describe_instances(Filters=[
        {"Name": "tag:node-kind", "Values": ["worker"]}])["Reservations"]
    workers = [i for r in reservations for i in r["Instances"]]
    assert {w["InstanceType"] for w in workers} == {"g5.xlarge"}
    assert {w.get("InstanceLifecycle") for w in workers} == {"spot"}  # the config's spot option

    wait_until(lambda: _kinds(client) == [("head", "head")], 120, "idle GPU workers to be terminated")
    down = cluster_cli("down", "-y")
    assert down.returncode == 0, down.stderr
    assert live_tags(client) == {}


def test_cluster_up_with_missing_ami_fails_in_one_line_and_creates_nothing(aws, cluster_cli, tmp_path):
    client = aws[0]
    path = tmp_path / "aws-gpu.yaml"
    config = yaml.safe_load(path.read_text())
    config["available_node_types"]["gpu"]["node_config"]["ImageId"] = "ami-0123456789abcdef0"
    path.write_text(yaml.safe_dump(config))
    up = cluster_cli("up", "-y")
    assert up.returncode != 0 and len(up.stderr.strip().splitlines()) == 1, up.stderr
    assert "available_node_types.gpu.node_config.ImageId (DescribeImages): " \
           "InvalidAMIID.NotFound" in up.stderr
    assert client.describe_instances()["Reservations"] == []
    assert all(g["GroupName"] == "default"
               for g in client.describe_security_groups()["SecurityGroups"])
