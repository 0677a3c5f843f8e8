"""Preparing a GCP project for a cluster: zones, machine type catalog, images, network, SSH key,
firewall, the head's service account. Returns a config whose node types carry everything
instances.insert needs (zone-independent: the provider makes machine, GPU and disk types zonal for
the zone it tries) and the resources the planner packs onto.

Order matters: everything that only reads runs first, so bad input (an unknown zone, machine type
or image, a GPU type the zones do not offer) fails before anything is created. What is created is
named after the cluster and reused on the next `cluster up`: the firewall rules
`cluster-launcher-<cluster>-ssh` and `-internal` on the cluster's network tag. The SSH key pair
lives only on this machine (~/.cluster-launcher/keys) and in the instances' metadata. Every
create goes through Changes, so a dry run reads everything and creates nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from typing import Mapping

from launcher.errors import ConfigError, InvalidNodeConfig, ProviderError
from launcher.tags import dns_name
from launcher.providers.base import Changes, placeholder
from launcher.providers.gcp_catalog import (CLOUD_PLATFORM, Compute, base_name, has_reason,
                                           machine_resources)

KEY_DIR = "~/.cluster-launcher/keys"
# Deep Learning VM: Ubuntu 22.04 with the NVIDIA driver and CUDA; the guest agent creates the
# login user from the ssh-keys metadata.
DEFAULT_IMAGE = ("projects/deeplearning-platform-release/global/images/family/"
                 "common-cu128-ubuntu-2204-nvidia-570")
DEFAULT_DISK_GB = 100
_IMAGE = re.compile(r"(?:.*/)?projects/([^/]+)/global/images/(family/)?([^/]+)$")


def resource_name(cluster: str, suffix: str = "") -> str:
    """A GCP resource name (at most 63 characters) for this cluster: the firewall rules, the
    network tag, instance names."""
    return f"cluster-launcher-{dns_name(cluster)}"[:63 - len(suffix)].rstrip("-") + suffix


def key_path(project: str) -> str:
    """Where the generated private key of a project's clusters lives."""
    return os.path.join(os.path.expanduser(KEY_DIR), f"cluster-launcher_gcp_{project}.pem")


def bootstrap(config, changes: Changes, gce: Compute):
    """See the module docstring."""
    provider = config.provider
    types = {name: dataclasses.replace(spec, node_config=_normalized(name, spec.node_config))
             for name, spec in config.node_types.items()}
    zones = _zones(gce, provider)
    offered = {name: _offered_zones(gce, name, spec.node_config, zones)
               for name, spec in types.items()}
    detected = {name: _resources(gce, spec.node_config, offered[name][0])
                for name, spec in types.items()}
    _check_images(gce, types)
    network = _network(gce, provider)
    auth, public_key = _ssh_key(provider, dict(config.auth), changes)
    tag = resource_name(config.cluster_name)
    _firewalls(gce, config.cluster_name, network, tag, provider, changes)
    for name, spec in types.items():
        node_config = copy.deepcopy(dict(spec.node_config))
        node_config.setdefault("zones", offered[name])
        node_config.setdefault("disks", [{
            "boot": True, "autoDelete": True, "initializeParams": {
                "sourceImage": provider.get("default_image", DEFAULT_IMAGE),
                "diskSizeGb": str(DEFAULT_DISK_GB)}}])
        node_config.setdefault("networkInterfaces", [_interface(gce, provider, network)])
        items = node_config.setdefault("tags", {}).setdefault("items", [])
        items += [tag] if tag not in items else []
        metadata = node_config.setdefault("metadata", {}).setdefault("items", [])
        if not any(item.get("key") == "ssh-keys" for item in metadata):
            metadata.append({"key": "ssh-keys",
                             "value": f"{auth.get('ssh_user', 'ubuntu')}:{public_key}"})
        _scheduling(node_config, has_gpu="GPU" in detected[name])
        if name == config.head_node_type and provider.get("head_service_account", True):
            email = provider.get("head_service_account")
            node_config.setdefault("serviceAccounts", [{
                "email": email if isinstance(email, str) else "default",
                "scopes": [CLOUD_PLATFORM]}])  # the head's autoscaler calls Compute Engine
        resources = {**detected[name], **spec.resources}  # the YAML's resources override
        types[name] = dataclasses.replace(spec, node_config=node_config, resources=resources)
    return dataclasses.replace(config, node_types=types, auth=auth)


def _normalized(name: str, node_config: Mapping) -> dict:
    """node_config checked against the Instance resource (camelCase keys as in the REST API).
    Ray's configs give `scheduling` as a list of mappings: merged into one."""
    from google.cloud import compute_v1

    node_config = copy.deepcopy(dict(node_config))
    tpu = sorted({"acceleratorType", "runtimeVersion"} & set(node_config))
    if tpu and not node_config.get("machineType"):  # Ray's TPU VM node configs
        raise ConfigError(f"available_node_types.{name}.node_config.{tpu[0]}: TPU VMs are not "
                          "supported; use a Compute Engine machineType (GPUs through "
                          "guestAccelerators)")
    if not node_config.get("machineType"):
        raise ConfigError(f"available_node_types.{name}.node_config.machineType: missing "
                          "(e.g. n2-standard-4)")
    if isinstance(node_config.get("scheduling"), list):
        node_config["scheduling"] = {k: v for part in node_config["scheduling"]
                                     for k, v in part.items()}
    instance = {k: v for k, v in node_config.items() if k != "zones"}
    try:
        compute_v1.Instance.from_json(json.dumps(instance))
    except Exception as exc:  # json_format's ParseError: an unknown key or a wrong type
        raise InvalidNodeConfig(f"available_node_types.{name}.node_config: "
                                f"{' '.join(str(exc).split())}") from None
    return node_config


def _zones(gce: Compute, provider: Mapping) -> list[str]:
    """provider.availability_zone (comma-separated, in that order), else every zone of the
    region that is up; each must be a zone of provider.region."""
    region = provider["region"]
    try:
        found = gce.call("Regions", "get", f"provider.region {region!r}", region=region)
    except InvalidNodeConfig as exc:
        raise ConfigError(str(exc)) from None
    known = sorted(base_name(zone) for zone in found.zones)
    wanted = [z.strip() for z in provider.get("availability_zone", "").split(",") if z.strip()]
    for zone in wanted:
        if zone not in known:
            raise ConfigError(f"provider.availability_zone: {zone!r} is not a zone of {region} "
                              f"(its zones: {', '.join(known)})")
    return wanted or known


def _offered_zones(gce: Compute, name: str, node_config: Mapping, zones: list[str]) -> list[str]:
    """The zones (in order) that offer the machine type and every guestAccelerators type."""
    key = f"available_node_types.{name}.node_config"
    needed = [("MachineTypes", "machine_type", f"{key}.machineType",
               base_name(node_config["machineType"]))]
    needed += [("AcceleratorTypes", "accelerator_type",
                f"{key}.guestAccelerators[{i}].acceleratorType", base_name(gpu["acceleratorType"]))
               for i, gpu in enumerate(node_config.get("guestAccelerators", []))]
    offered = list(zones)
    for client, field, where, value in needed:
        offered = [zone for zone in offered
                   if _exists(gce, client, where, zone=zone, **{field: value})]
        if not offered:
            raise InvalidNodeConfig(f"{where}: {value!r} is not offered in "
                                    f"{', '.join(zones)} (notFound)")
    return offered


def _exists(gce: Compute, client: str, what: str, **kwargs) -> bool:
    try:
        gce.call(client, "get", what, **kwargs)
        return True
    except ProviderError as exc:
        if has_reason(exc, "notFound"):
            return False
        raise


def _resources(gce: Compute, node_config: Mapping, zone: str) -> dict:
    machine = gce.call("MachineTypes", "get", "machine type lookup", zone=zone,
                       machine_type=base_name(node_config["machineType"]))
    gpus = [(gpu["acceleratorType"], int(gpu.get("acceleratorCount", 1)))
            for gpu in node_config.get("guestAccelerators", [])]
    return machine_resources(machine, gpus)


def _check_images(gce: Compute, types: Mapping) -> None:
    """Each configured boot disk image (or image family) must exist."""
    for name, spec in types.items():
        for i, disk in enumerate(spec.node_config.get("disks", [])):
            image = disk.get("initializeParams", {}).get("sourceImage")
            if image:
                _check_image(gce, image, f"available_node_types.{name}.node_config.disks[{i}]"
                                         ".initializeParams.sourceImage")


def _check_image(gce: Compute, image: str, where: str) -> None:
    match = _IMAGE.match(image)
    if not match:
        raise InvalidNodeConfig(f"{where}: {image!r} is not an image URL (expected "
                                "projects/P/global/images/NAME or .../images/family/FAMILY)")
    project, family, image_name = match.groups()
    if family:
        gce.call("Images", "get_from_family", where, project=project, family=image_name)
    else:
        gce.call("Images", "get", where, project=project, image=image_name)


def _network(gce: Compute, provider: Mapping) -> str:
    """The network's partial URL (provider.network, default `default`), checked to exist, as is
    provider.subnetwork."""
    name = base_name(provider.get("network", "default"))
    gce.call("Networks", "get", "provider.network", network=name)
    if provider.get("subnetwork"):
        gce.call("Subnetworks", "get", "provider.subnetwork", region=provider["region"],
                 subnetwork=base_name(provider["subnetwork"]))
    return f"projects/{gce.project}/global/networks/{name}"


def _interface(gce: Compute, provider: Mapping, network: str) -> dict:
    """One interface on the network, with an ephemeral external IP the launcher may SSH to."""
    interface = {"network": network,
                 "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}
    if provider.get("subnetwork"):
        interface["subnetwork"] = (f"projects/{gce.project}/regions/{provider['region']}/"
                                   f"subnetworks/{base_name(provider['subnetwork'])}")
    return interface


def _scheduling(node_config: dict, has_gpu: bool) -> None:
    """GPUs cannot live-migrate: such VMs stop on host maintenance. Spot VMs are deleted when
    preempted (a stopped one would hold its disk and its place in the cluster)."""
    scheduling = node_config.setdefault("scheduling", {})
    if has_gpu:
        scheduling.setdefault("onHostMaintenance", "TERMINATE")
    if scheduling.get("provisioningModel") == "SPOT":
        scheduling.setdefault("instanceTerminationAction", "DELETE")
        scheduling.setdefault("onHostMaintenance", "TERMINATE")
        scheduling.setdefault("automaticRestart", False)
    if not scheduling:
        del node_config["scheduling"]


def _firewalls(gce: Compute, cluster: str, network: str, tag: str, provider: Mapping,
               changes: Changes) -> None:
    """SSH from provider.ssh_cidr (default anywhere) and all traffic between the cluster's nodes,
    both on the cluster's network tag; created when missing."""
    rules = {
        resource_name(cluster, "-ssh"): {"sourceRanges": [provider.get("ssh_cidr", "0.0.0.0/0")],
                                         "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]},
        resource_name(cluster, "-internal"): {"sourceTags": [tag],
                                              "allowed": [{"IPProtocol": "all"}]},
    }
    for name, rule in rules.items():
        if not _exists(gce, "Firewalls", "firewall lookup", firewall=name):
            body = {"name": name, "network": network, "direction": "INGRESS",
                    "targetTags": [tag], "description": f"cluster-launcher cluster {cluster}",
                    **rule}
            changes.create(f"firewall rule {name} on {base_name(network)}",
                           lambda body=body: _insert_firewall(gce, body), None)


def _insert_firewall(gce: Compute, body: dict) -> None:
    from google.cloud import compute_v1

    what = f"creating firewall rule {body['name']}"
    operation = gce.call("Firewalls", "insert_unary", what,
                         firewall_resource=compute_v1.Firewall.from_json(json.dumps(body)))
    gce.wait(operation, what)


def _ssh_key(provider: Mapping, auth: dict, changes: Changes) -> tuple[dict, str]:
    """(auth, OpenSSH public key): the user's key (auth.ssh_public_key, else the public half of
    auth.ssh_private_key), or the project's key pair generated once under KEY_DIR (mode 0600)."""
    import paramiko

    if auth.get("ssh_public_key"):
        path = os.path.expanduser(auth["ssh_public_key"])
        try:
            with open(path) as f:
                return auth, " ".join(f.read().split()[:2])
        except OSError as exc:
            raise ConfigError(f"auth.ssh_public_key: cannot read {path}: {exc.strerror}") from None
    if not auth.get("ssh_private_key"):
        generated = key_path(provider["project_id"])
        auth = {**auth, "ssh_private_key": generated}
        if not os.path.exists(generated):
            return auth, changes.create(f"SSH key {generated}", lambda: _generated_key(generated),
                                        placeholder(f"public key of {generated}"))
    path = os.path.expanduser(auth["ssh_private_key"])
    try:
        key = paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise ConfigError(f"auth.ssh_private_key: cannot read {path}: {exc}") from None
    return auth, f"{key.get_name()} {key.get_base64()}"


def _generated_key(path: str) -> str:
    """A new Ed25519 private key at `path` (mode 0600); returns its OpenSSH public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()))
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
