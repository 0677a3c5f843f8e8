"""Ray's own AWS cluster YAMLs (../shared/ray-configs/aws-example-{minimal,full}.yaml) through a
real `cluster up` against moto in server mode, with real SSH to container nodes, to a working
cluster.

Each file is used as Ray ships it, except for the overrides in `_overrides`, each commented with why
a test needs it (all but one are keys of Ray's own schema; none touches a command). Ray's region
(us-west-2), zones, instance types, spot option, disk mappings, `cache_stopped_nodes` and start
commands are kept. The harness is test_aws_e2e.py's: the cluster's subnet is 127.100.0.0/24, so
every instance's private IP is a loopback address where the watcher boots a container node.

What a run proves, for each file: `cluster up` brings the head up (the full file's head starts with
Ray's `ray stop; ray start --head ... --autoscaling-config=~/ray_bootstrap_config.yaml`, through the
`ray` command the runtime install puts on nodes); the head's autoscaler launches the worker
`min_workers` asks for, which joins with Ray's own worker start commands; a driver sent with
`cluster submit` runs a task on each node; `cluster down` leaves no instance and no node.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest

from moto_tests.conftest import (DLAMI, amazon_image, assert_loopback_url, instance_ips, live_tags,
                                 loopback_subnet)
from tests.harness import cloud_e2e
from tests.harness.cloud_e2e import DROP
from tests.harness.containers import containers, ssh_key  # noqa: F401
from tests.harness.instances import wait_until, watching

RAY_REGION = "us-west-2"  # the region of both of Ray's AWS examples, kept
HEAD, WORKER = "ray.head.default", "ray.worker.default"
# Ray's flags the `ray` command of a node accepts without a counterpart, and says so in one line.
IGNORED_HEAD = "ignoring options this runtime has no counterpart for: --object-manager-port, " \
               "--dashboard-host"


@pytest.fixture
def aws(moto_server, monkeypatch):
    """moto's us-west-2 with a 127.100.0.0/24 subnet in us-west-2a (the first zone of Ray's full
    example), and the region's newest Amazon Deep Learning AMI: a node type without ImageId gets
    it, as in Ray. moto publishes none named like today's (see conftest.amazon_image)."""
    assert_loopback_url(moto_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    client = boto3.client("ec2", region_name=RAY_REGION, endpoint_url=moto_server)
    subnet = loopback_subnet(client, f"{RAY_REGION}a")
    dlami = amazon_image(client, DLAMI.format("20250301"),
                         datetime(2025, 3, 1, tzinfo=timezone.utc), region=RAY_REGION)
    return client, subnet, dlami


@pytest.fixture
def watcher(aws, containers):  # noqa: F811
    with watching(lambda: instance_ips(aws[0]), containers) as watcher:
        yield watcher


def _head_aws_files(tmp_path: Path, endpoint: str) -> Path:
    """~/.aws for the head: boto3's own config files naming moto and moto's fake keys."""
    directory = tmp_path / "head-aws"
    directory.mkdir()
    (directory / "config").write_text(f"[default]\nregion = {RAY_REGION}\n"
                                      f"endpoint_url = {endpoint}\n")
    (directory / "credentials").write_text("[default]\naws_access_key_id = testing\n"
                                           "aws_secret_access_key = testing\n")
    return directory


def _overrides(name: str, subnet: str, image: str, key_path: Path, head_aws: Path) -> dict:
    """What the test changes in Ray's file to reach moto and the container nodes, and why."""
    overrides = {
        "provider": {
            # moto's public IPs lead nowhere; the container node serving an instance listens on
            # its private IP (127.100.0.x), which the launcher then uses (a Ray provider key).
            "use_internal_ips": True,
        },
        # Container nodes accept only the harness's key (on EC2 the key pair's public key is put
        # on the instance at boot); the launcher imports its public half as the key pair. Ray's
        # full example names this key in a comment.
        "auth": {"ssh_private_key": str(key_path)},
        # The head's autoscaler calls moto, not AWS: on EC2 it would use the instance profile
        # bootstrap attaches and the public endpoint; moto serves no instance metadata, so
        # boto3's own config files on the head give it the endpoint and moto's fake keys.
        "file_mounts": {"~/.aws": str(head_aws)},
        "available_node_types": {
            # Ray's default is the default VPC's subnets (172.31.x in moto): the 127.100 subnet
            # is where container nodes can answer (SubnetIds is Ray's node_config key).
            HEAD: {"node_config": {"SubnetIds": [subnet]}},
            WORKER: {"node_config": {"SubnetIds": [subnet]}},
        },
    }
    if name == "aws-example-minimal.yaml":
        # min_workers 3 (= max_workers 3) in Ray's file; one worker shows the same thing faster.
        overrides["available_node_types"][WORKER].update(min_workers=1, max_workers=1)
    else:
        # Running nodes in containers is refused by design (docs/config-reference.md, "Coming
        # from Ray"); the rest of the docker section (no image) is then a no-op, as in Ray.
        overrides["docker"] = {"image": DROP}
        for node_type in (HEAD, WORKER):
            # Ray's ami-0387d929287ab193e (an Ubuntu AMI of us-west-2) does not exist in moto.
            overrides["available_node_types"][node_type]["node_config"]["ImageId"] = image
    return overrides


def _instances(client) -> list[dict]:
    return [i for r in client.describe_instances()["Reservations"] for i in r["Instances"]]


def _statuses(client) -> list[tuple[str, str, str]]:
    return sorted((t["node-kind"], t["node-type"], t.get("node-status", ""))
                  for t in live_tags(client).values())


@pytest.mark.parametrize("name", ["aws-example-minimal.yaml", "aws-example-full.yaml"])
def test_rays_aws_example_comes_up_runs_work_on_every_node_and_goes_down(
        name, aws, watcher, tmp_path, ssh_key, moto_server):  # noqa: F811
    client, subnet, image = aws
    path = cloud_e2e.ray_yaml(name, tmp_path, _overrides(
        name, subnet, image, ssh_key[0], _head_aws_files(tmp_path, moto_server)))
    cli = cloud_e2e.cluster_cli(path, tmp_path)
    try:
        up = cli("up", "-y")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr
        [(head_id, tags)] = live_tags(client).items()
        assert (tags["node-kind"], tags["node-type"], tags["node-status"]) == \
            ("head", HEAD, "running")
        head = watcher.nodes[head_id]
        assert (head.root / "home/ubuntu/ray_bootstrap_config.yaml").is_file()
        if name == "aws-example-full.yaml":  # Ray's head_start_ray_commands ran, as written
            assert f"ray start: {IGNORED_HEAD}" in up.stdout + up.stderr

        wait_until(lambda: _statuses(client) == [("head", HEAD, "running"),
                                                 ("worker", WORKER, "running")],
                   120, "the worker min_workers asks for to be up")
        assert cloud_e2e.run_on_every_node(cli, tmp_path) == [HEAD, WORKER]
        [worker] = [i for i in _instances(client) if i["InstanceId"] != head_id]
        worker_log = head.root / f"home/ubuntu/.cluster/logs/nodes/{worker['InstanceId']}.log"
        if name == "aws-example-full.yaml":
            # Ray's worker_start_ray_commands ran on it, and its node_config reached EC2
            assert "ray start: ignoring options this runtime has no counterpart for: " \
                   "--object-manager-port" in worker_log.read_text()
            assert worker.get("InstanceLifecycle") == "spot"
            assert worker["ImageId"] == image
        else:
            assert worker["ImageId"] == image  # the region's newest Deep Learning AMI
        assert worker["InstanceType"] == "m5.large"
        assert worker["SubnetId"] == subnet

        down = cli("down", "-y")
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr
        assert {i["State"]["Name"] for i in _instances(client)} == {"terminated"}
        wait_until(lambda: not watcher.nodes, 10, "the container nodes to power off")
    finally:
        if live_tags(client):
            cli("down", "-y")
