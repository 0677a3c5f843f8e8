"""Preparing an Azure subscription for a cluster: VM size catalog, resource group, network, SSH key,
the head's managed identity. Returns a config whose node types carry everything a VM create needs
and the resources the planner packs onto.

Order matters: everything that only reads (the VM size catalog, the node configs, the head's
identity) runs first, so bad input (an unknown location or size, a size not offered to the
subscription, a missing shared identity) fails before anything is created. What is created is
named after the cluster, tagged `cluster-name` and reused by the next `cluster up`: the resource
group (when missing; with Ray's provider.tags too), the network security group
`cluster-launcher-<cluster>-nsg`, the virtual network `cluster-launcher-<cluster>-vnet` with one
subnet `default`, the head's identity `cluster-launcher-<cluster>-head` (or Ray's
provider.msi_name in provider.msi_resource_group; both given: the user's own, never created) and
its role assignment. Every create goes through Changes, so a dry run reads everything and
creates nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from typing import Mapping, Optional

from launcher import tags as T
from launcher.errors import AuthError, ConfigError, InvalidNodeConfig
from launcher.providers.azure_catalog import (Clients, azure_call, catalog, is_not_found,
                                              size_resources)
from launcher.providers.base import Changes, placeholder

KEY_DIR = "~/.cluster-launcher/keys"
KEY_NAME = "cluster-launcher_azure.pem"
# The Data Science VM (Ubuntu 22.04): NVIDIA driver and CUDA, python3; login user from auth.
DEFAULT_IMAGE = {"imagePublisher": "microsoft-dsvm", "imageOffer": "ubuntu-2204",
                 "imageSku": "2204-gen2", "imageVersion": "latest"}
ARM_PARAMETERS = ("vmSize", "imagePublisher", "imageOffer", "imageSku", "imageVersion", "imageId",
                  "priority", "evictionPolicy", "billingProfile", "osDiskSizeGB", "osDiskType",
                  "availability_zone")  # the last: this type's zones, over the provider's
IDENTITY_API = "2023-01-31"
ROLE_API = "2022-04-01"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"  # built-in role definition id


def bootstrap(config, changes: Changes):
    """See the module docstring."""
    provider = dict(config.provider)
    clients = Clients(provider)
    location = provider["location"]
    sizes = catalog(clients, location)
    if not sizes:
        raise InvalidNodeConfig(f"provider.location: no VM sizes are offered in {location!r}; "
                                "expected an Azure location name such as eastus or westeurope")
    specs = {name: _arm_parameters(name, spec.node_config)
             for name, spec in config.node_types.items()}
    resources = {name: {**size_resources(_offered(sizes, name, params["vmSize"],
                                                  type_zones(provider, params), location)),
                        **config.node_types[name].resources}
                 for name, params in specs.items()}
    found = _find_identity(clients, provider, config.cluster_name)
    auth, public_key = _ssh_key(dict(config.auth), changes)
    group_id = _resource_group(clients, provider, config.cluster_name, changes)
    subnet = _network(clients, provider, config.cluster_name, changes)
    identity = found[0] and _head_identity(clients, provider, config.cluster_name, found,
                                           group_id, changes)
    types = {}
    for name, spec in config.node_types.items():
        node_config = {**spec.node_config, "azure_arm_parameters": specs[name],
                       "subnet_id": subnet, "ssh_public_key": public_key}
        if identity and name == config.head_node_type:
            node_config["identity_id"] = identity["id"]
        types[name] = dataclasses.replace(spec, node_config=node_config, resources=resources[name])
    if identity:
        provider.setdefault("managed_identity_client_id", identity["properties"]["clientId"])
    return dataclasses.replace(config, provider=provider, auth=auth, node_types=types)


def availability_zones(section: Mapping) -> list[str]:
    """The `availability_zone` of the provider, or of a type's azure_arm_parameters ("1,2,3":
    tried in that order); [] means no zone, as do Ray's `none` and `auto` (Azure places the VM)."""
    zones = str(section.get("availability_zone", ""))
    if zones.strip().lower() in ("auto", "none"):
        return []
    return [z.strip() for z in zones.split(",") if z.strip()]


def type_zones(provider: Mapping, arm_parameters: Mapping) -> list[str]:
    """A node type's zones: its own azure_arm_parameters.availability_zone (Ray's per-type
    setting, e.g. "none" for the head) over the provider's."""
    return availability_zones(arm_parameters if "availability_zone" in arm_parameters
                              else provider)


def _arm_parameters(name: str, node_config: Mapping) -> dict:
    """node_config.azure_arm_parameters checked, with the default image and spot settings."""
    path = f"available_node_types.{name}.node_config.azure_arm_parameters"
    params = node_config.get("azure_arm_parameters")
    if not isinstance(params, Mapping) or not params.get("vmSize"):
        raise InvalidNodeConfig(f"{path}.vmSize: missing; expected a VM size such as "
                                "Standard_D4s_v5")
    unknown = sorted(set(params) - set(ARM_PARAMETERS))
    if unknown:
        raise InvalidNodeConfig(f"{path}.{unknown[0]}: unknown key; expected one of: "
                                f"{', '.join(ARM_PARAMETERS)}")
    params = dict(params) if params.get("imageId") else {**DEFAULT_IMAGE, **params}
    if params.get("priority") == "Spot":
        params.setdefault("evictionPolicy", "Delete")
        params.setdefault("billingProfile", {"maxPrice": -1})  # up to the on-demand price
    return params


def _offered(sizes: Mapping, name: str, size: str, zones: list, location: str) -> dict:
    path = f"available_node_types.{name}.node_config.azure_arm_parameters.vmSize"
    sku = sizes.get(size)
    if sku is None:
        raise InvalidNodeConfig(f"{path}: unknown VM size {size!r} in {location}")
    if sku["restricted"]:
        raise InvalidNodeConfig(f"{path}: {size} is not offered to this subscription in "
                                f"{location} ({sku['restricted']}); request access or pick "
                                "another size or location")
    usable = [z for z in zones if z in sku["zones"] and z not in sku["zone_restricted"]]
    if zones and not usable:
        raise InvalidNodeConfig(f"{path}: {size} is not offered in zone(s) {', '.join(zones)} of "
                                f"{location} (offered: {', '.join(sku['zones']) or 'no zones'})")
    return sku


def _ssh_key(auth: dict, changes: Changes) -> tuple[dict, str]:
    """(auth, OpenSSH public key): auth.ssh_public_key, else auth.ssh_private_key's public half;
    without either, a key pair created once under KEY_DIR (private key mode 0600) and used as
    auth.ssh_private_key."""
    from cryptography.hazmat.primitives import serialization

    if auth.get("ssh_public_key") and not auth.get("ssh_private_key"):
        raise ConfigError("auth.ssh_private_key: missing; auth.ssh_public_key needs its private "
                          "key, which the launcher logs in with")
    path = os.path.expanduser(auth.get("ssh_private_key") or os.path.join(KEY_DIR, KEY_NAME))
    if not auth.get("ssh_private_key"):
        auth = {**auth, "ssh_private_key": path}
        if not os.path.exists(path):
            return auth, changes.create(f"SSH key pair {path}", lambda: _generated_key(path),
                                        placeholder(f"public key of {path}"))
    if auth.get("ssh_public_key"):
        public_path = os.path.expanduser(auth["ssh_public_key"])
        try:
            with open(public_path) as f:
                return auth, f.read().strip()
        except OSError as exc:
            raise ConfigError(f"auth.ssh_public_key: cannot read {public_path}: "
                              f"{exc.strerror}") from None
    try:
        with open(path, "rb") as f:
            data = f.read()
        load = (serialization.load_ssh_private_key if b"OPENSSH" in data
                else serialization.load_pem_private_key)
        public = load(data, None).public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                            serialization.PublicFormat.OpenSSH)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"auth.ssh_private_key: cannot read {path}: {exc}") from None
    return auth, public.decode()


def _generated_key(path: str) -> str:
    """A new RSA private key at `path` (mode 0600); returns its OpenSSH public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def _resource_group(clients: Clients, provider: Mapping, cluster: str, changes: Changes) -> str:
    from azure.mgmt.resource.resources.models import ResourceGroup

    name, groups = provider["resource_group"], clients.resource.resource_groups
    if not azure_call(groups.check_existence, "provider.resource_group", name):
        tags = {**provider.get("tags", {}), T.TAG_CLUSTER_NAME: cluster}
        changes.create(f"resource group {name} in {provider['location']}", lambda: azure_call(
            groups.create_or_update, "provider.resource_group", name,
            ResourceGroup(location=provider["location"], tags=tags)), None)
    return f"/subscriptions/{clients.subscription}/resourceGroups/{name}"


def _network(clients: Clients, provider: Mapping, cluster: str, changes: Changes) -> str:
    """The subnet id of the cluster's virtual network (created once): one subnet of
    provider.vnet_cidr, guarded by a security group that admits SSH from provider.ssh_cidr
    (Azure's default rules already allow all traffic inside the network)."""
    name = f"cluster-launcher-{cluster}"
    try:
        vnet = azure_call(clients.network.virtual_networks.get, "virtual network lookup",
                          provider["resource_group"], f"{name}-vnet")
        return vnet.subnets[0].id
    except InvalidNodeConfig as exc:
        if not is_not_found(exc):
            raise
    return changes.create(f"network security group {name}-nsg and virtual network {name}-vnet",
                          lambda: _create_network(clients, provider, cluster, name),
                          placeholder(f"subnet of {name}-vnet"))


def _create_network(clients: Clients, provider: Mapping, cluster: str, name: str) -> str:
    from azure.mgmt.network import models as nm

    network, group = clients.network, provider["resource_group"]
    tags = {T.TAG_CLUSTER_NAME: cluster}
    ssh = nm.SecurityRule(name="ssh", priority=1000, direction="Inbound", access="Allow",
                          protocol="Tcp", source_address_prefix=provider.get("ssh_cidr", "*"),
                          source_port_range="*", destination_address_prefix="*",
                          destination_port_range="22")
    nsg = azure_call(network.network_security_groups.begin_create_or_update,
                     "creating the network security group", group, f"{name}-nsg",
                     nm.NetworkSecurityGroup(location=provider["location"], tags=tags,
                                             security_rules=[ssh]))
    cidr = provider.get("vnet_cidr", "10.0.0.0/16")
    vnet = azure_call(network.virtual_networks.begin_create_or_update,
                      "creating the virtual network", group, f"{name}-vnet", nm.VirtualNetwork(
                          location=provider["location"], tags=tags,
                          address_space=nm.AddressSpace(address_prefixes=[cidr]),
                          subnets=[nm.Subnet(name="default", address_prefix=cidr,
                                             network_security_group=nm.NetworkSecurityGroup(
                                                 id=nsg.id))]))
    return vnet.subnets[0].id


def _find_identity(clients: Clients, provider: Mapping,
                   cluster: str) -> tuple[Optional[str], Optional[dict]]:
    """(id, the identity when it exists) of the head's identity; (None, None) when
    provider.head_identity is false. Ray's msi_name and msi_resource_group given together name an
    identity of the user's: it must exist, and is never created."""
    if provider.get("head_identity") is False:
        return None, None
    name = provider.get("msi_name") or f"cluster-launcher-{cluster}-head"
    group = provider.get("msi_resource_group") or provider["resource_group"]
    identity_id = (f"/subscriptions/{clients.subscription}/resourceGroups/{group}/providers/"
                   f"Microsoft.ManagedIdentity/userAssignedIdentities/{name}")
    with _identity_rights():
        identity = _get_by_id(clients.resource.resources, identity_id, IDENTITY_API)
    if identity is None and provider.get("msi_name") and provider.get("msi_resource_group"):
        raise ConfigError(f"provider.msi_name: no managed identity {name!r} in resource group "
                          f"{group!r}")
    if identity is None and group != provider["resource_group"] and not azure_call(
            clients.resource.resource_groups.check_existence, "provider.msi_resource_group",
            group):
        raise ConfigError(f"provider.msi_resource_group: resource group {group!r} does not exist")
    return identity_id, identity


def _head_identity(clients: Clients, provider: Mapping, cluster: str, found: tuple,
                   group_id: str, changes: Changes) -> dict:
    """The user-assigned identity the head's autoscaler authenticates as (`found` by
    _find_identity, created when missing), Contributor on the cluster's resource group."""
    from azure.mgmt.resource.resources.models import GenericResource

    identity_id, identity = found
    name, resources = identity_id.rsplit("/", 1)[1], clients.resource.resources
    with _identity_rights():
        if identity is None:
            identity = changes.create(
                f"managed identity {name} for the head's autoscaler", lambda: azure_call(
                    resources.begin_create_or_update_by_id, "head identity", identity_id,
                    api_version=IDENTITY_API, parameters=GenericResource(
                        location=provider["location"],
                        tags={T.TAG_CLUSTER_NAME: cluster})).as_dict(),
                {"id": identity_id,
                 "properties": {"clientId": placeholder(f"client id of {name}")}})
        role_id = f"{group_id}/providers/Microsoft.Authorization/roleAssignments/" \
                  f"{uuid.uuid5(uuid.NAMESPACE_URL, identity_id.lower())}"
        if _get_by_id(resources, role_id, ROLE_API) is None:
            role = f"/subscriptions/{clients.subscription}/providers/Microsoft.Authorization/" \
                   f"roleDefinitions/{CONTRIBUTOR}"
            changes.create(
                f"role assignment: {name} is Contributor on resource group "
                f"{provider['resource_group']}", lambda: azure_call(
                    resources.begin_create_or_update_by_id, "head role assignment", role_id,
                    api_version=ROLE_API, parameters=GenericResource(properties={
                        "roleDefinitionId": role, "principalType": "ServicePrincipal",
                        "principalId": identity["properties"]["principalId"]})), None)
    return identity


@contextlib.contextmanager
def _identity_rights():
    """An account that may not manage identities can still run a cluster: say how."""
    try:
        yield
    except AuthError as exc:
        raise AuthError(f"{exc}; set provider.head_identity: false and give the head "
                        "credentials another way (see docs/azure.md)") from None


def _get_by_id(resources, resource_id: str, api_version: str) -> dict | None:
    try:
        return azure_call(resources.get_by_id, "resource lookup", resource_id,
                          api_version=api_version).as_dict()
    except InvalidNodeConfig as exc:
        if is_not_found(exc):
            return None
        raise
