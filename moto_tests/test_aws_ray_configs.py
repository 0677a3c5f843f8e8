"""Ray's AWS node configs, unchanged, against moto in-process: `ImageId: latest_dlami`,
`NetworkInterfaces` (Ray's example-network-interfaces.yaml), `LaunchTemplate` (Ray's
example-launch-templates.yaml); and every kind of boto3/botocore exception the provider can meet
turned into one typed line naming the API call and the node type, through the provider and the
`cluster` CLI."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
import yaml
from boto3.exceptions import Boto3Error
from botocore.exceptions import (ClientError, EndpointConnectionError, NoCredentialsError,
                                 PaginationError, ParamValidationError, ProfileNotFound,
                                 ReadTimeoutError, WaiterError)
from botocore.parsers import ResponseParserError

from launcher.errors import (AuthError, ConfigError, InvalidNodeConfig, ProviderError,
                             TransientError)
from launcher.providers.aws_catalog import ec2_client
from moto_tests.conftest import DLAMI, REGION, amazon_image, assert_loopback_url
from moto_tests.test_aws_provider import bootstrapped, worker_tags


def _instance(ec2, node_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[node_id])["Reservations"][0]["Instances"][0]


def _nothing_created(ec2):
    assert ec2.describe_instances()["Reservations"] == []
    assert ec2.describe_key_pairs()["KeyPairs"] == []


# --- ImageId: latest_dlami ---------------------------------------------------------------------

def test_latest_dlami_is_the_newest_amazon_deep_learning_ami(ec2):
    newest = amazon_image(ec2, DLAMI.format("20250301"), datetime(2025, 3, 1, tzinfo=timezone.utc))
    amazon_image(ec2, DLAMI.format("20250101"), datetime(2025, 1, 1, tzinfo=timezone.utc))
    ec2.register_image(Name=DLAMI.format("20990101"))  # the account's own: not Amazon's
    head = {"node_config": {"InstanceType": "m5.large", "ImageId": "latest_dlami"}}
    worker = {"node_config": {"InstanceType": "m5.large", "ImageId": ec2.image_id}}
    config, provider = bootstrapped(ec2, head=head, worker=worker)
    assert config.node_types["head"].node_config["ImageId"] == newest
    assert config.node_types["worker"].node_config["ImageId"] == ec2.image_id
    [node] = provider.create("head", config.node_types["head"].node_config, worker_tags(config), 1)
    assert _instance(ec2, node)["ImageId"] == newest


def test_latest_dlami_missing_in_the_region_is_one_line(ec2):
    head = {"node_config": {"InstanceType": "m5.large", "ImageId": "latest_dlami"}}
    with pytest.raises(InvalidNodeConfig) as raised:
        bootstrapped(ec2, head=head)
    message = str(raised.value)
    assert message.startswith("available_node_types.head.node_config.ImageId: latest_dlami, and "
                              f"no AMI owned by amazon named '{DLAMI.format('*')}' in {REGION}")
    assert "\n" not in message
    _nothing_created(ec2)


# --- NetworkInterfaces -------------------------------------------------------------------------

def test_network_interfaces_carry_the_subnet_and_groups(ec2):
    subnet = ec2.describe_subnets()["Subnets"][-1]["SubnetId"]
    group = ec2.create_security_group(GroupName="ray-nic", Description="d")["GroupId"]
    interface = {"DeviceIndex": 0, "SubnetId": subnet, "Groups": [group],
                 "AssociatePublicIpAddress": False}
    head = {"node_config": {"InstanceType": "m5.large", "ImageId": ec2.image_id,
                            "NetworkInterfaces": [interface]}}
    config, provider = bootstrapped(ec2, head=head)
    node_config = config.node_types["head"].node_config
    assert "SubnetIds" not in node_config and "SecurityGroupIds" not in node_config
    sent = []
    provider.ec2.meta.events.register("provide-client-params.ec2.RunInstances",
                                      lambda params, **_: sent.append(dict(params)))
    [node] = provider.create("head", node_config, worker_tags(config), 1)
    assert "SubnetId" not in sent[0] and "SecurityGroupIds" not in sent[0]
    instance = _instance(ec2, node)
    [attached] = instance["NetworkInterfaces"]
    assert instance["SubnetId"] == attached["SubnetId"] == subnet
    assert [g["GroupId"] for g in attached["Groups"]] == [group]


def test_network_interfaces_next_to_instance_level_subnets_is_one_line(ec2):
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    head = {"node_config": {"InstanceType": "m5.large", "ImageId": ec2.image_id,
                            "SubnetIds": [subnet],
                            "NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": subnet}]}}
    with pytest.raises(ConfigError) as raised:
        bootstrapped(ec2, head=head)
    assert str(raised.value).startswith("available_node_types.head.node_config.SubnetIds: not "
                                        "allowed with NetworkInterfaces")
    _nothing_created(ec2)


# --- LaunchTemplate ----------------------------------------------------------------------------

def _template(ec2) -> dict:
    data = {"ImageId": ec2.image_id, "InstanceType": "g5.xlarge",
            "TagSpecifications": [{"ResourceType": "instance",
                                   "Tags": [{"Key": "team", "Value": "ml"}]}]}
    return ec2.create_launch_template(LaunchTemplateName="ExampleLaunchTemplate",
                                      LaunchTemplateData=data)["LaunchTemplate"]


def test_launch_templates_create_instances_from_the_template(ec2):
    template = _template(ec2)
    dlami = amazon_image(ec2, DLAMI.format("20250301"), datetime(2025, 3, 1, tzinfo=timezone.utc))
    types = {  # as in Ray's example: by id with "$Latest", and by name with an int Version
        "head": {"node_config": {"LaunchTemplate": {
            "LaunchTemplateId": template["LaunchTemplateId"], "Version": "$Latest"},
            "ImageId": "latest_dlami", "InstanceType": "m5.large"}},
        "worker": {"node_config": {"LaunchTemplate": {
            "LaunchTemplateName": "ExampleLaunchTemplate", "Version": 1}}}}
    config, provider = bootstrapped(ec2, **types)
    head, worker = config.node_types["head"], config.node_types["worker"]
    assert worker.node_config["LaunchTemplate"]["Version"] == "1"  # EC2 wants a string
    assert "ImageId" not in worker.node_config and "InstanceType" not in worker.node_config
    assert worker.resources["GPU"] == 1  # the template's g5.xlarge
    assert head.resources["CPU"] == 2 and "GPU" not in head.resources  # node_config wins
    [w] = provider.create("worker", worker.node_config, worker_tags(config), 1)
    [h] = provider.create("head", head.node_config, worker_tags(config), 1)
    w, h = _instance(ec2, w), _instance(ec2, h)
    assert (w["ImageId"], w["InstanceType"]) == (ec2.image_id, "g5.xlarge")
    assert (h["ImageId"], h["InstanceType"]) == (dlami, "m5.large")
    tags = provider.node_tags(w["InstanceId"])
    assert tags["team"] == "ml" and tags["node-type"] == "worker"


@pytest.mark.parametrize("reference,code", [
    ({"LaunchTemplateId": "lt-00000000000000000", "Version": "$Latest"},
     "InvalidLaunchTemplateId.NotFound"),
    ({"LaunchTemplateName": "ExampleLaunchTemplate", "Version": 2},
     "InvalidLaunchTemplateId.VersionNotFound")], ids=["unknown-id", "unknown-version"])
def test_unknown_launch_template_is_one_line(ec2, reference, code):
    _template(ec2)
    head = {"node_config": {"LaunchTemplate": reference, "InstanceType": "m5.large"}}
    with pytest.raises(InvalidNodeConfig) as raised:
        bootstrapped(ec2, head=head)
    assert str(raised.value).startswith("available_node_types.head.node_config.LaunchTemplate "
                                        f"(DescribeLaunchTemplateVersions): {code}")
    assert "\n" not in str(raised.value)
    _nothing_created(ec2)


# --- every boto3/botocore exception as one typed line ------------------------------------------

EXCEPTIONS = {
    "EndpointConnectionError": (EndpointConnectionError(endpoint_url="http://127.0.0.1:9/"),
                                TransientError),
    "ReadTimeoutError": (ReadTimeoutError(endpoint_url="http://127.0.0.1:9/"), TransientError),
    "NoCredentialsError": (NoCredentialsError(), AuthError),
    "ProfileNotFound": (ProfileNotFound(profile="ray"), AuthError),
    "ParamValidationError": (ParamValidationError(report="Invalid type for parameter\nVersion"),
                             InvalidNodeConfig),
    "WaiterError": (WaiterError(name="InstanceRunning", reason="Max attempts exceeded",
                                last_response={}), ProviderError),
    "PaginationError": (PaginationError(message="bad token"), ProviderError),
    "Boto3Error": (Boto3Error("boto3 failed"), ProviderError),
    # an answer that is not AWS's XML (a proxy's error page): derives from no botocore base class
    "ResponseParserError": (ResponseParserError("Unable to parse response, invalid XML received:"
                                                "\nb'<!doctype html>\n<h1>Bad Gateway</h1>'"),
                            ProviderError),
}


@pytest.mark.parametrize("kind", EXCEPTIONS)
def test_every_botocore_exception_is_one_typed_line(ec2, kind):
    exc, error = EXCEPTIONS[kind]
    config, provider = bootstrapped(ec2)

    def fail(**_):
        raise exc

    provider.ec2.meta.events.register("before-call.ec2.RunInstances", fail)
    waits = []
    provider.sleep = waits.append
    with pytest.raises(error) as raised:
        provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(config), 1)
    message = str(raised.value)
    assert type(raised.value) is error and "\n" not in message
    assert message.startswith("node type gpu: launching 1 x g5.xlarge (RunInstances): ")
    assert kind in message or (error is AuthError and "no AWS credentials" in message)
    assert len(waits) == (5 if error is TransientError else 0)  # only passing errors retried
    assert provider.nodes({}) == []


def test_iam_refused_is_one_auth_line_with_the_way_out(ec2, monkeypatch):
    import launcher.providers.aws_bootstrap as aws_bootstrap

    def refuse(**_):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}},
                          "GetInstanceProfile")

    def client(region, service="ec2"):
        made = ec2_client(region, service)
        made.meta.events.register("before-call.iam.GetInstanceProfile", refuse)
        return made

    monkeypatch.setattr(aws_bootstrap, "ec2_client", client)
    with pytest.raises(AuthError) as raised:
        bootstrapped(ec2)
    assert str(raised.value) == (
        "IAM role cluster-launcher-head-v1 (GetInstanceProfile): AccessDenied: not allowed; set "
        "provider.head_iam_role: false and give the head's node_config an IamInstanceProfile")


def test_broken_profile_is_one_line_before_any_call(ec2, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(AuthError) as raised:
        bootstrapped(ec2)
    assert str(raised.value) == ("creating the ec2 client for us-east-1: ProfileNotFound: The "
                                 "config profile (no-such-profile) could not be found")


def _cluster_up(tmp_path, config: dict, endpoint: str) -> subprocess.CompletedProcess:
    assert_loopback_url(endpoint)
    path = tmp_path / "ray.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = str(Path(sys.executable).parent / "cluster")
    return subprocess.run([cli, "up", str(path), "-y"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AWS_ENDPOINT_URL": endpoint})


def _ray_launch_templates(template_id: str) -> dict:
    """Ray's example-launch-templates.yaml, its region and zones those of the tests."""
    return {"cluster_name": "launch_templates", "max_workers": 2,
            "provider": {"type": "aws", "region": REGION}, "auth": {"ssh_user": "ubuntu"},
            "available_node_types": {
                "ray.head.default": {"resources": {}, "node_config": {
                    "LaunchTemplate": {"LaunchTemplateId": template_id, "Version": "$Latest"},
                    "ImageId": "latest_dlami", "InstanceType": "m5a.large"}},
                "ray.worker.default": {"min_workers": 0, "max_workers": 1, "resources": {},
                                       "node_config": {"LaunchTemplate": {
                                           "LaunchTemplateName": "ExampleLaunchTemplate",
                                           "Version": 2},
                                           "ImageId": "latest_dlami",
                                           "InstanceType": "m5a.large"}}},
            "head_node_type": "ray.head.default"}


def test_cli_with_rays_launch_template_example_prints_one_line(tmp_path, moto_server):
    """Ray's example names template lt-00000000000000000; moto answers RunInstances for an unknown
    template id with an HTML error page, which used to end `cluster up` in a traceback."""
    up = _cluster_up(tmp_path, _ray_launch_templates("lt-00000000000000000"), moto_server)
    assert up.returncode != 0 and len(up.stderr.strip().splitlines()) == 1, up.stderr
    assert "available_node_types.ray.head.default.node_config.LaunchTemplate " \
           "(DescribeLaunchTemplateVersions): InvalidLaunchTemplateId.NotFound" in up.stderr
    client = boto3.client("ec2", region_name=REGION, endpoint_url=moto_server)
    assert client.describe_instances()["Reservations"] == []


def test_cli_against_an_endpoint_answering_html_prints_one_line(tmp_path):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b"<!doctype html>\n<title>502 Bad Gateway</title>\n<h1>Bad Gateway</h1>\n"
            self.send_response(502)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = _cluster_up(tmp_path, _ray_launch_templates("lt-0123456789abcdef0"),
                         f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert up.returncode != 0 and len(up.stderr.strip().splitlines()) == 1, up.stderr
    assert "ResponseParserError: Unable to parse response" in up.stderr
