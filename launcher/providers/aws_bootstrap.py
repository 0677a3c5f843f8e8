"""Preparing an AWS account for a cluster: AMI, instance catalog, subnets, security group, key pair,
the head's IAM role. Returns a config whose node types carry everything RunInstances needs and the
resources the planner packs onto.

Order matters: everything that only reads (launch templates, catalog, AMIs, subnets) runs first, so
bad input (an unknown instance type or launch template, a missing AMI, a subnet of another VPC)
fails before anything is created. A node type's launch template counts as part of its node_config:
what either sets is not filled in (EC2 merges the two at launch, node_config winning).
What is created is named after the cluster or the region and reused on the next `cluster up`:
the security group `cluster-launcher-<cluster>` (or Ray's provider.security_group.GroupName;
tagged cluster-name), the key pair `cluster-launcher_<region>` (or one imported from
auth.ssh_private_key), the IAM role and instance profile `cluster-launcher-head-v1`. Every
create goes through Changes, so a dry run reads everything and creates nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping

from launcher import tags as T
from launcher.errors import AuthError, ConfigError, InvalidNodeConfig, ProviderError
from launcher.providers.aws_catalog import aws_call, catalog, ec2_client
from launcher.providers.base import Changes, placeholder

KEY_DIR = "~/.cluster-launcher/keys"
HEAD_ROLE = "cluster-launcher-head-v1"
# The newest image whose name matches, owned by Amazon: the DL AMI with NVIDIA drivers and CUDA.
DEFAULT_AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
LATEST_DLAMI = "latest_dlami"  # Ray's ImageId for that image: resolved like a missing ImageId
ASSUME_EC2 = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
HEAD_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "ec2:*", "Resource": "*"},
    {"Effect": "Allow", "Action": "iam:PassRole", "Resource": f"arn:aws:iam::*:role/{HEAD_ROLE}"}]}


def bootstrap(config, changes: Changes):
    """See the module docstring."""
    provider = config.provider
    ec2 = ec2_client(provider["region"])
    types = {name: dataclasses.replace(spec, node_config=_normalized(name, spec.node_config))
             for name, spec in config.node_types.items()}
    given = {name: {**_template_data(ec2, name, spec.node_config), **spec.node_config}
             for name, spec in types.items()}
    detected = _detect_resources(ec2, given)
    image = _default_image(ec2, provider, given, changes.echo)
    vpc, subnets = _subnets(ec2, provider, given)
    group = _security_group(ec2, config.cluster_name, provider, vpc, changes)
    key_name, auth = _key_pair(ec2, provider, dict(config.auth), changes)
    profile = _head_profile(provider, given[config.head_node_type], changes)
    for name, spec in types.items():
        defaults = {"KeyName": key_name}
        if not given[name].get("NetworkInterfaces"):  # else subnets and groups are theirs
            defaults.update(SubnetIds=subnets, SecurityGroupIds=[group])
        if name == config.head_node_type and profile:
            defaults["IamInstanceProfile"] = {"Arn": profile}
        node_config = dict(spec.node_config)
        node_config.update({k: v for k, v in defaults.items() if k not in given[name]})
        if _wants_dlami(given[name].get("ImageId")):  # missing, or latest_dlami
            node_config["ImageId"] = image
        if "TagSpecifications" not in node_config and "TagSpecifications" in given[name]:
            # the provider adds the cluster's tags to node_config's, which would hide these
            node_config["TagSpecifications"] = given[name]["TagSpecifications"]
        resources = {**detected[name], **spec.resources}  # the YAML's resources override
        types[name] = dataclasses.replace(spec, node_config=node_config, resources=resources)
    return dataclasses.replace(config, node_types=types, auth=auth)


def _normalized(name: str, node_config: Mapping) -> dict:
    """node_config with a launch template's Version as the string EC2 wants (Ray's YAML may say
    `Version: 2`). With NetworkInterfaces, subnets and security groups belong in the interfaces
    (SubnetId, Groups), as in Ray: EC2 refuses instance-level ones next to interfaces."""
    node_config = dict(node_config)
    template = node_config.get("LaunchTemplate", {})
    interfaces = node_config.get("NetworkInterfaces", [])
    if not isinstance(template, Mapping) or not isinstance(interfaces, list) or \
            not all(isinstance(i, Mapping) for i in interfaces):
        raise ConfigError(f"available_node_types.{name}.node_config: LaunchTemplate must be a "
                          "mapping and NetworkInterfaces a list of mappings, as in RunInstances")
    clash = [k for k in ("SubnetId", "SubnetIds", "SecurityGroupIds") if k in node_config]
    if interfaces and clash:
        raise ConfigError(f"available_node_types.{name}.node_config.{clash[0]}: not allowed with "
                          "NetworkInterfaces; give SubnetId and Groups in each interface")
    if "Version" in template:
        node_config["LaunchTemplate"] = {**template, "Version": str(template["Version"])}
    return node_config


def _template_data(ec2, name: str, node_config: Mapping) -> dict:
    """The LaunchTemplateData of node_config.LaunchTemplate ({LaunchTemplateId or
    LaunchTemplateName, Version}; no Version: the template's default), {} without one. Reading it
    here makes an unknown template or version one line before anything is created."""
    template = node_config.get("LaunchTemplate")
    if not template:
        return {}
    ref = {k: v for k, v in template.items() if k != "Version"}
    found = aws_call(ec2.describe_launch_template_versions,
                     f"available_node_types.{name}.node_config.LaunchTemplate",
                     Versions=[template.get("Version", "$Default")], **ref)
    return found["LaunchTemplateVersions"][0]["LaunchTemplateData"]


def _detect_resources(ec2, given: Mapping[str, Mapping]) -> dict[str, dict]:
    for name, node_config in given.items():
        if not node_config.get("InstanceType"):
            raise ConfigError(f"available_node_types.{name}.node_config.InstanceType: missing")
    wanted = [node_config["InstanceType"] for node_config in given.values()]
    found = catalog(ec2, wanted, "available_node_types.*.node_config.InstanceType")
    return {name: found[node_config["InstanceType"]] for name, node_config in given.items()}


def _wants_dlami(image) -> bool:
    return not image or str(image).lower() == LATEST_DLAMI


def _default_image(ec2, provider: Mapping, given: Mapping[str, Mapping], echo) -> str | None:
    """Check each configured ImageId exists; find the newest Amazon-owned AMI named like the Deep
    Learning AMI (provider.default_ami_name) only if a type lacks an ImageId or asks for
    latest_dlami. Looked up by name in the region, as Ray does, since AMI ids differ per region
    and AWS publishes a new one every few weeks."""
    wanted = [name for name, config in given.items() if _wants_dlami(config.get("ImageId"))]
    for name, node_config in given.items():
        if name not in wanted:
            aws_call(ec2.describe_images, f"available_node_types.{name}.node_config.ImageId",
                     ImageIds=[node_config["ImageId"]])
    if not wanted:
        return None
    what = ", ".join(f"available_node_types.{name}.node_config.ImageId" for name in wanted)
    pattern = provider.get("default_ami_name", DEFAULT_AMI_NAME)
    images = aws_call(ec2.describe_images, what, Owners=["amazon"],
                      Filters=[{"Name": "name", "Values": [pattern]},
                               {"Name": "state", "Values": ["available"]}])["Images"]
    if not images:
        asked = given[wanted[0]].get("ImageId") or "missing"
        raise InvalidNodeConfig(f"{what}: {asked}, and no AMI owned by amazon named {pattern!r} "
                                f"in {provider['region']}; set ImageId to an AMI id")
    newest = max(images, key=lambda image: image.get("CreationDate", ""))
    echo(f"Using AMI {newest['ImageId']} ({newest.get('Name')}) for {', '.join(wanted)}")
    return newest["ImageId"]


def _subnets(ec2, provider: Mapping, given: Mapping[str, Mapping]) -> tuple[str, list[str]]:
    """(VPC id, subnet ids): the configured subnets (all in one VPC), else the default VPC's subnets
    in provider.availability_zone (comma-separated; all zones when unset)."""
    configured = {s for node_config in given.values() for s in _subnet_ids(node_config)}
    if configured:
        found = aws_call(ec2.describe_subnets, "node_config.SubnetIds",
                         SubnetIds=sorted(configured))
        vpcs = {s["VpcId"] for s in found["Subnets"]}
        if len(vpcs) > 1:
            raise InvalidNodeConfig(f"node_config.SubnetIds: the subnets are in different VPCs "
                                    f"({', '.join(sorted(vpcs))}); use subnets of one VPC")
        return vpcs.pop(), _in_zones(found["Subnets"], provider)
    vpcs = aws_call(ec2.describe_vpcs, "default VPC lookup",
                    Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise InvalidNodeConfig("node_config.SubnetIds: missing, and the region has no default VPC")
    vpc = vpcs[0]["VpcId"]
    found = aws_call(ec2.describe_subnets, "subnet lookup",
                     Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    return vpc, _in_zones(found, provider)


def _subnet_ids(node_config: Mapping) -> list[str]:
    """SubnetIds, SubnetId and the network interfaces' subnets: they all decide the VPC."""
    single = [node_config.get("SubnetId")] + [i.get("SubnetId")
                                              for i in node_config.get("NetworkInterfaces", [])]
    return list(node_config.get("SubnetIds", [])) + [s for s in single if s]


def _in_zones(subnets: list, provider: Mapping) -> list[str]:
    zones = [z.strip() for z in provider.get("availability_zone", "").split(",") if z.strip()]
    chosen = [s for s in subnets if not zones or s["AvailabilityZone"] in zones]
    chosen.sort(key=lambda s: (zones.index(s["AvailabilityZone"]) if zones else 0, s["SubnetId"]))
    if not chosen:
        raise InvalidNodeConfig(f"provider.availability_zone: no subnet in {', '.join(zones)}")
    return [s["SubnetId"] for s in chosen]


def _security_group(ec2, cluster: str, provider: Mapping, vpc: str, changes: Changes) -> str:
    """The cluster's group, found by name in the VPC (Ray's provider.security_group.GroupName, else
    cluster-launcher-<cluster>), else created: SSH from provider.ssh_cidr (default anywhere), all
    traffic inside, and Ray's security_group.IpPermissions (checked before anything is made)."""
    wanted = provider.get("security_group", {})
    name = wanted.get("GroupName") or f"cluster-launcher-{cluster}"
    extra = list(wanted.get("IpPermissions", []))
    _check_permissions(ec2, extra)
    found = aws_call(ec2.describe_security_groups, "security group lookup", Filters=[
        {"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}])
    if found["SecurityGroups"]:
        return found["SecurityGroups"][0]["GroupId"]
    rules = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
              "IpRanges": [{"CidrIp": provider.get("ssh_cidr", "0.0.0.0/0")}]}, *extra]
    return changes.create(f"security group {name} in {vpc}",
                          lambda: _create_group(ec2, cluster, name, vpc, rules),
                          placeholder(f"security group {name}"))


def _check_permissions(ec2, permissions: list) -> None:
    """IpPermissions as AuthorizeSecurityGroupIngress takes them, checked by botocore's own
    model without calling AWS."""
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    shape = ec2.meta.service_model.operation_model("AuthorizeSecurityGroupIngress").input_shape
    try:
        validate_parameters({"GroupId": "sg-check", "IpPermissions": permissions}, shape)
    except ParamValidationError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"provider.security_group.IpPermissions: {detail}") from None


def _create_group(ec2, cluster: str, name: str, vpc: str, rules: list) -> str:
    """The group with its rules; removed again if the rules are refused, so the next `cluster up`
    does not reuse a group that lets nothing in."""
    group = aws_call(ec2.create_security_group, "creating the security group", GroupName=name,
                     Description=f"cluster-launcher cluster {cluster}", VpcId=vpc,
                     TagSpecifications=[{"ResourceType": "security-group", "Tags": [
                         {"Key": T.TAG_CLUSTER_NAME, "Value": cluster}]}])["GroupId"]
    try:
        aws_call(ec2.authorize_security_group_ingress, "opening the security group",
                 GroupId=group, IpPermissions=[
                     *rules, {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}])
    except ProviderError:
        aws_call(ec2.delete_security_group, "removing the refused security group", GroupId=group)
        raise
    return group


def _key_pair(ec2, provider: Mapping, auth: dict, changes: Changes) -> tuple[str, dict]:
    """(key pair name, auth): the user's key imported, or the region's key pair created once with
    its private key kept under KEY_DIR (mode 0600)."""
    if auth.get("ssh_private_key"):
        return _import_key(ec2, provider, auth, changes), auth
    name = provider.get("key_pair_name", f"cluster-launcher_{provider['region']}")
    path = os.path.join(os.path.expanduser(KEY_DIR), f"{name}.pem")
    exists = _key_exists(ec2, name)
    if exists and not os.path.exists(path):
        raise ConfigError(f"auth.ssh_private_key: key pair {name!r} exists in "
                          f"{provider['region']} but its private key {path} is missing; set "
                          "auth.ssh_private_key to it, or delete the key pair")
    if not exists:
        changes.create(f"key pair {name} (private key {path})",
                       lambda: _create_key_pair(ec2, name, path), None)
    return name, {**auth, "ssh_private_key": path}


def _create_key_pair(ec2, name: str, path: str) -> None:
    material = aws_call(ec2.create_key_pair, "creating the key pair", KeyName=name)["KeyMaterial"]
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(material)


def _import_key(ec2, provider: Mapping, auth: Mapping, changes: Changes) -> str:
    """auth.ssh_private_key's public half as a key pair named after its fingerprint."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    path = os.path.expanduser(auth["ssh_private_key"])
    try:
        with open(path, "rb") as f:
            data = f.read()
        load = (serialization.load_ssh_private_key if b"OPENSSH" in data
                else serialization.load_pem_private_key)
        private = load(data, None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"auth.ssh_private_key: cannot read {path}: {exc}") from None
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
    name = provider.get("key_pair_name") or \
        f"cluster-launcher_{hashlib.sha256(public).hexdigest()[:12]}"
    if not _key_exists(ec2, name):
        changes.create(f"key pair {name} from {path}", lambda: aws_call(
            ec2.import_key_pair, "importing the key pair", KeyName=name,
            PublicKeyMaterial=public), None)
    return name


def _key_exists(ec2, name: str) -> bool:
    try:
        aws_call(ec2.describe_key_pairs, "key pair lookup", KeyNames=[name])
        return True
    except InvalidNodeConfig as exc:
        if "InvalidKeyPair.NotFound" in str(exc):
            return False
        raise


def _head_profile(provider: Mapping, head: Mapping, changes: Changes) -> str | None:
    """The instance profile ARN that lets the head's autoscaler call EC2 (None: the head's
    node_config or launch template names its own, or provider.head_iam_role is false)."""
    if head.get("IamInstanceProfile") or provider.get("head_iam_role") is False:
        return None
    iam = ec2_client(provider["region"], "iam")
    what = f"IAM role {HEAD_ROLE}"
    try:
        return _profile_arn(iam, what) or changes.create(
            f"IAM role and instance profile {HEAD_ROLE} for the head's autoscaler",
            lambda: _create_profile(iam, what), placeholder(f"instance profile {HEAD_ROLE}"))
    except AuthError as exc:  # an account without IAM rights can still run a cluster
        raise AuthError(f"{exc}; set provider.head_iam_role: false and give the head's "
                        "node_config an IamInstanceProfile") from None


def _create_profile(iam, what: str) -> str:
    aws_call(iam.create_role, what, RoleName=HEAD_ROLE,
             AssumeRolePolicyDocument=json.dumps(ASSUME_EC2))
    aws_call(iam.put_role_policy, what, RoleName=HEAD_ROLE,
             PolicyName="cluster-launcher-autoscaler", PolicyDocument=json.dumps(HEAD_POLICY))
    profile = aws_call(iam.create_instance_profile, what,
                       InstanceProfileName=HEAD_ROLE)["InstanceProfile"]
    aws_call(iam.add_role_to_instance_profile, what, InstanceProfileName=HEAD_ROLE,
             RoleName=HEAD_ROLE)
    return profile["Arn"]


def _profile_arn(iam, what: str) -> str | None:
    try:
        return aws_call(iam.get_instance_profile, what,
                        InstanceProfileName=HEAD_ROLE)["InstanceProfile"]["Arn"]
    except ProviderError as exc:
        if "NoSuchEntity" in str(exc):
            return None
        raise
