"""The aws provider against moto in-process: tags, batching, spot, the stopped-node cache,
bootstrap (key pair, security group, IAM, subnets, AMI check, GPU resources) and error classes
injected through botocore's before-call hook (moto never runs out of capacity)."""

from __future__ import annotations

import os
import stat

import pytest
from botocore.awsrequest import AWSResponse

from launcher import tags as T
from tests.harness.autoscaling import launch_and_react
from launcher.config import config_from_dict
from launcher.errors import (AuthError, CapacityError, InvalidNodeConfig, QuotaError,
                             TransientError)
from launcher.providers import make_provider
from moto_tests.conftest import REGION

GIB = 1024 ** 3


def make_config(ec2, *, provider=None, auth=None, **types):
    types = types or {"head": {"node_config": {"InstanceType": "m5.large", "ImageId": ec2.image_id}},
                      "gpu": {"node_config": {"InstanceType": "g5.xlarge", "ImageId": ec2.image_id},
                              "max_workers": 4}}
    return config_from_dict({"cluster_name": "t", "provider": {"type": "aws", "region": REGION,
                                                             **(provider or {})},
                             "auth": auth or {}, "available_node_types": types,
                             "head_node_type": "head", "max_workers": 4})


def bootstrapped(ec2, **kwargs):
    config = make_config(ec2, **kwargs)
    provider = make_provider(config.provider, config.cluster_name, config.auth)
    provider.sleep = lambda s: None
    return provider.bootstrap(config), provider


def inject(provider, operation, *codes):
    """The next calls of `operation` fail with these AWS error codes, in order."""
    pending = list(codes)

    def hook(**_):
        if pending:
            code = pending.pop(0)
            return AWSResponse("http://127.0.0.1/", 400, {}, None), \
                {"Error": {"Code": code, "Message": f"injected {code}"}}
        return None

    provider.ec2.meta.events.register(f"before-call.ec2.{operation}", hook)
    return pending


def worker_tags(config):
    return {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_STATUS: "requested",
            T.TAG_LAUNCH_HASH: "h1"}


def _interrupt(instance_id: str) -> None:
    """EC2 reclaims a spot instance, as moto cannot: terminated, with the interruption's reason."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    instance = ec2_backends[DEFAULT_ACCOUNT_ID][REGION].get_instance(instance_id)
    instance._state.name, instance._state.code = "terminated", 48
    instance.state_reason = StateReason("Server.SpotInstanceTermination: Spot instance termination",
                                        "Server.SpotInstanceTermination")


def test_an_interrupted_spot_instance_is_reported_preempted_and_a_terminated_one_is_not(ec2):
    spot = {"InstanceMarketOptions": {"MarketType": "spot"}}
    config, provider = bootstrapped(ec2, head={"node_config": {
        "InstanceType": "m5.large", "ImageId": ec2.image_id}}, gpu={"node_config": {
            "InstanceType": "g5.xlarge", "ImageId": ec2.image_id, **spot}})
    gpu = config.node_types["gpu"].node_config
    taken, ended = provider.create("gpu", gpu, worker_tags(config), 2)
    assert provider.preempted([taken, ended]) == {}
    _interrupt(taken)
    provider.terminate([ended])  # by us: not a preemption
    assert provider.nodes({}) == []
    assert provider.preempted([taken, ended]) == {
        taken: "Server.SpotInstanceTermination: Spot instance termination"}
    fallback = provider.on_demand(gpu)  # after enough of that: on-demand instances of the type
    assert "InstanceMarketOptions" not in fallback and provider.on_demand(fallback) is None
    [steady] = provider.create("gpu", fallback, worker_tags(config), 1)
    assert provider.ec2.describe_instances(InstanceIds=[steady])["Reservations"][0]["Instances"][0] \
        .get("InstanceLifecycle") != "spot"


def test_bootstrap_creates_key_group_profile_and_detects_resources(ec2):
    config, provider = bootstrapped(ec2)
    key_path = config.auth["ssh_private_key"]
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert open(key_path).read().startswith("-----BEGIN")
    head, gpu = config.node_types["head"], config.node_types["gpu"]
    assert gpu.resources["GPU"] == 1 and gpu.resources["accelerator_type:A10G"] == 1
    assert gpu.resources["CPU"] == 4 and gpu.resources["memory"] == int(16 * GIB * 0.7)
    assert head.resources["CPU"] == 2 and "GPU" not in head.resources
    assert head.node_config["IamInstanceProfile"]["Arn"].endswith("cluster-launcher-head-v1")
    assert "IamInstanceProfile" not in gpu.node_config
    group = ec2.describe_security_groups(GroupIds=head.node_config["SecurityGroupIds"])
    rules = group["SecurityGroups"][0]["IpPermissions"]
    assert any(r.get("FromPort") == 22 and r["IpRanges"][0]["CidrIp"] == "0.0.0.0/0" for r in rules)
    assert any(r["IpProtocol"] == "-1" and r["UserIdGroupPairs"] for r in rules)
    assert len(head.node_config["SubnetIds"]) == 6  # every zone of the default VPC
    again, _ = bootstrapped(ec2)  # reused, not created twice
    assert again.node_types["head"].node_config == head.node_config
    assert len(ec2.describe_key_pairs()["KeyPairs"]) == 1


@pytest.mark.parametrize("instance_type,gpus,accelerator", [
    ("g5.xlarge", 1, "A10G"), ("g5.12xlarge", 4, "A10G"), ("p4d.24xlarge", 8, "A100"),
    ("p5.48xlarge", 8, "H100")], ids=["g5", "g5-4gpu", "p4d", "p5"])
def test_gpu_resources_detected(ec2, instance_type, gpus, accelerator):
    node = {"node_config": {"InstanceType": instance_type, "ImageId": ec2.image_id}}
    config, _ = bootstrapped(ec2, head=node)
    resources = config.node_types["head"].resources
    assert resources["GPU"] == gpus and resources[f"accelerator_type:{accelerator}"] == 1


def test_yaml_resources_override_detected(ec2):
    node = {"node_config": {"InstanceType": "g5.xlarge", "ImageId": ec2.image_id},
            "resources": {"GPU": 0, "custom": 2}}
    config, _ = bootstrapped(ec2, head=node)
    resources = config.node_types["head"].resources
    assert resources["GPU"] == 0 and resources["custom"] == 2 and resources["CPU"] == 4


def test_zones_pick_subnets_and_user_key_is_imported(ec2, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = tmp_path / "id_ed25519"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    config, _ = bootstrapped(ec2, provider={"availability_zone": "us-east-1c,us-east-1a"},
                             auth={"ssh_private_key": str(key)})
    subnets = config.node_types["gpu"].node_config["SubnetIds"]
    zones = [s["AvailabilityZone"] for s in ec2.describe_subnets(SubnetIds=subnets)["Subnets"]]
    assert sorted(zones) == ["us-east-1a", "us-east-1c"]
    assert config.auth["ssh_private_key"] == str(key)
    name = config.node_types["gpu"].node_config["KeyName"]
    assert ec2.describe_key_pairs(KeyNames=[name])["KeyPairs"]


def test_create_batches_tags_and_lists_by_cluster(ec2):
    config, provider = bootstrapped(ec2)
    gpu = config.node_types["gpu"]
    calls = []
    provider.ec2.meta.events.register("provide-client-params.ec2.RunInstances",
                                      lambda params, **_: calls.append(params))
    ids = provider.create("gpu", gpu.node_config, worker_tags(config), 3)
    assert len(ids) == 3 and len(calls) == 1
    assert calls[0]["MinCount"] == calls[0]["MaxCount"] == 3
    assert provider.nodes({}) == sorted(ids)
    assert provider.nodes({T.TAG_NODE_KIND: T.KIND_HEAD}) == []
    tags = provider.node_tags(ids[0])
    assert tags[T.TAG_CLUSTER_NAME] == "t" and tags[T.TAG_NODE_TYPE] == "gpu"
    provider.set_tags(ids[0], {T.TAG_NODE_STATUS: "running"})
    fresh = make_provider(config.provider, "t", config.auth)  # state lives in EC2 tags
    assert fresh.node_tags(ids[0])[T.TAG_NODE_STATUS] == "running"
    assert make_provider(config.provider, "other", {}).nodes({}) == []
    instance = ec2.describe_instances(InstanceIds=ids[:1])["Reservations"][0]["Instances"][0]
    assert instance["InstanceType"] == "g5.xlarge" and instance["KeyName"]
    assert fresh.internal_ip(ids[0]) == instance["PrivateIpAddress"]
    assert fresh.external_ip(ids[0]) == instance.get("PublicIpAddress")
    provider.terminate(ids + ["i-00000000000000000"])  # unknown ids are ignored
    assert provider.nodes({}) == []


def test_terminate_is_chunked(ec2, monkeypatch):
    import launcher.providers.aws as aws

    monkeypatch.setattr(aws, "TERMINATE_CHUNK", 2)
    config, provider = bootstrapped(ec2)
    ids = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(config), 5)
    calls = []
    provider.ec2.meta.events.register("provide-client-params.ec2.TerminateInstances",
                                      lambda params, **_: calls.append(len(params["InstanceIds"])))
    provider.terminate(ids)
    assert calls == [2, 2, 1] and provider.nodes({}) == []


def _states(ec2, ids):
    return {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances(
        InstanceIds=list(ids))["Reservations"] for i in r["Instances"]}


def test_cache_stopped_nodes_stops_on_demand_and_restarts_them(ec2):
    config, provider = bootstrapped(ec2, provider={"cache_stopped_nodes": True})
    head_tags = {**worker_tags(config), T.TAG_NODE_KIND: T.KIND_HEAD}
    [head] = provider.create("head", config.node_types["head"].node_config, head_tags, 1)
    node_config = config.node_types["gpu"].node_config
    ids = provider.create("gpu", node_config, worker_tags(config), 2)
    provider.set_tags(ids[0], {T.TAG_START_HASH: "s1", T.TAG_SETUP_HASH: "x1"})
    provider.terminate(ids)
    assert set(_states(ec2, ids).values()) == {"stopped"} and provider.nodes({}) == [head]
    again = provider.create("gpu", node_config, worker_tags(config), 3)
    assert set(ids) < set(again) and len(again) == 3
    restarted = make_provider(config.provider, "t", config.auth).node_tags(ids[0])
    assert restarted[T.TAG_SETUP_HASH] == "x1" and T.TAG_START_HASH not in restarted
    assert sorted(provider.nodes({T.TAG_NODE_TYPE: "gpu"})) == sorted(again)
    provider.terminate(again[:1])  # a cached node again, then `cluster down`: head first
    provider.terminate([head])
    provider.terminate(provider.nodes({T.TAG_NODE_KIND: T.KIND_WORKER}))
    assert set(_states(ec2, [head, *again]).values()) == {"terminated"}


def test_spot_is_passed_through_and_always_terminated(ec2):
    config, provider = bootstrapped(ec2, provider={"cache_stopped_nodes": True})
    node_config = {**config.node_types["gpu"].node_config,
                   "InstanceMarketOptions": {"MarketType": "spot"}}
    ids = provider.create("gpu", node_config, worker_tags(config), 2)
    instances = [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
                 for i in r["Instances"]]
    assert {i.get("InstanceLifecycle") for i in instances} == {"spot"}
    provider.create("head", config.node_types["head"].node_config,
                    {**worker_tags(config), T.TAG_NODE_KIND: T.KIND_HEAD}, 1)
    provider.terminate(ids)
    assert set(_states(ec2, ids).values()) == {"terminated"}


def test_capacity_error_tries_next_subnet(ec2):
    config, provider = bootstrapped(ec2)
    subnets = []
    provider.ec2.meta.events.register("provide-client-params.ec2.RunInstances",
                                      lambda params, **_: subnets.append(params["SubnetId"]))
    inject(provider, "RunInstances", "InsufficientInstanceCapacity", "Unsupported")
    ids = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(config), 1)
    assert len(ids) == 1 and len(set(subnets)) == 3  # two zones refused, the third launched


@pytest.mark.parametrize("code,error", [
    ("InsufficientInstanceCapacity", CapacityError), ("Unsupported", CapacityError),
    ("VcpuLimitExceeded", QuotaError), ("MaxSpotInstanceCountExceeded", QuotaError),
    ("RequestLimitExceeded", TransientError), ("UnauthorizedOperation", AuthError),
    ("InvalidParameterValue", InvalidNodeConfig)],
    ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_errors_are_classified(ec2, code, error):
    config, provider = bootstrapped(ec2)
    inject(provider, "RunInstances", *[code] * 10)
    with pytest.raises(error) as raised:
        provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(config), 1)
    assert code in str(raised.value) and "\n" not in str(raised.value)
    assert provider.nodes({}) == []


def test_throttling_is_retried_with_backoff(ec2):
    config, provider = bootstrapped(ec2)
    waits = []
    provider.sleep = waits.append
    inject(provider, "DescribeInstances", "RequestLimitExceeded", "Throttling")
    assert provider.nodes({}) == []
    assert waits == [0.5, 1.0]


def test_a_launch_without_capacity_is_a_capacity_error_and_backs_the_type_off(ec2):
    config, provider = bootstrapped(ec2)
    inject(provider, "RunInstances", *["InsufficientInstanceCapacity"] * 6)
    kind, backoff = launch_and_react(config, provider, "gpu")
    assert kind == "capacity" and "InsufficientInstanceCapacity" in backoff.message
    assert backoff.until == 130.0  # the first of an exponential series


@pytest.mark.parametrize("internal,on_head,expected", [
    (False, False, "PublicIpAddress"), (True, False, "PrivateIpAddress"),
    (False, True, "PrivateIpAddress")], ids=["public", "use_internal_ips", "on-the-head"])
def test_command_runner_reaches_the_configured_address(ec2, monkeypatch, internal, on_head,
                                                       expected):
    if on_head:
        monkeypatch.setenv("CLUSTER_NODE_ID", "i-head")  # set for processes the head starts
    config, provider = bootstrapped(ec2, provider={"use_internal_ips": internal})
    [node] = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(config), 1)
    instance = ec2.describe_instances(InstanceIds=[node])["Reservations"][0]["Instances"][0]
    runner = provider.command_runner(node)
    assert runner.target.host == instance[expected]
    assert runner.target.key_path == config.auth["ssh_private_key"]


def test_node_config_passes_through_to_run_instances(ec2):
    config, provider = bootstrapped(ec2)
    node_config = {**config.node_types["gpu"].node_config,
                   "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 200}}],
                   "TagSpecifications": [{"ResourceType": "instance",
                                          "Tags": [{"Key": "team", "Value": "ml"}]}]}
    sent = []
    provider.ec2.meta.events.register("provide-client-params.ec2.RunInstances",
                                      lambda params, **_: sent.append(dict(params)))
    [node] = provider.create("gpu", node_config, worker_tags(config), 1)
    assert sent[0]["BlockDeviceMappings"] == node_config["BlockDeviceMappings"]
    assert sent[0]["SubnetId"] == node_config["SubnetIds"][0] and "SubnetIds" not in sent[0]
    assert sent[0]["KeyName"] == node_config["KeyName"]
    assert sent[0]["SecurityGroupIds"] == node_config["SecurityGroupIds"]
    tags = provider.node_tags(node)
    assert tags["team"] == "ml" and tags["Name"] == "cluster-launcher-t-worker"
