"""Preparing an Azure subscription for a cluster: VM size catalog, resource group, network, SSH key,
the head's managed identity. Returns a config whose node types carry everything a VM create needs
and the resources the planner packs onto.

Order matters: everything that only reads (the VM size catalog, the node configs) runs first, so
bad input (an unknown location or size, a size not offered to the subscription) fails before
anything is created. What is created is named after the cluster, tagged `cluster-name` and reused
by the next `cluster up`: the resource group (when missing), the network security group
`cluster-launcher-<cluster>-nsg`, the virtual network `cluster-launcher-<cluster>-vnet` with one
subnet `default`, the head's identity `cluster-launcher-<cluster>-head` and its role assignment.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from typing import Callable, Mapping

from launcher import tags as T
from launcher.errors import AuthError, ConfigError, InvalidNodeConfig
from launcher.providers.azure_catalog import (Clients, azure_call, catalog, is_not_found,
                                              size_resources)

KEY_DIR = "~/.cluster-launcher/keys"
KEY_NAME = "cluster-launcher_azure.pem"
# The Data Science VM (Ubuntu 22.04): NVIDIA driver and CUDA, python3; login user from auth.
DEFAULT_IMAGE = {"imagePublisher": "microsoft-dsvm", "imageOffer": "ubuntu-2204",
                 "imageSku": "2204-gen2", "imageVersion": "latest"}
ARM_PARAMETERS = ("vmSize", "imagePublisher", "imageOffer", "imageSku", "imageVersion", "imageId",
                  "priority", "evictionPolicy", "billingProfile", "osDiskSizeGB", "osDiskType")
IDENTITY_API = "2023-01-31"
ROLE_API = "2022-04-01"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"  # built-in role definition id


def bootstrap(config, echo: Callable[[str], None]):
    """See the module docstring."""
    provider = dict(config.provider)
    clients = Clients(provider)
    location = provider["location"]
    sizes = catalog(clients, location)
    if not sizes:
        raise InvalidNodeConfig(f"provider.location: no VM sizes are offered in {location!r}; "
                                "expected an Azure location name such as eastus or westeurope")
    zones = availability_zones(provider)
    specs = {name: _arm_parameters(name, spec.node_config)
             for name, spec in config.node_types.items()}
    resources = {name: {**size_resources(_offered(sizes, name, params["vmSize"], zones, location)),
                        **config.node_types[name].resources}
                 for name, params in specs.items()}
    auth, public_key = _ssh_key(dict(config.auth), echo)
    group_id = _resource_group(clients, provider, config.cluster_name, echo)
    subnet = _network(clients, provider, config.cluster_name, echo)
    identity = _head_identity(clients, provider, config.cluster_name, group_id, echo)
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


def availability_zones(provider: Mapping) -> list[str]:
    """provider.availability_zone ("1,2,3": tried in that order); [] means no zone."""
    return [z.strip() for z in str(provider.get("availability_zone", "")).split(",") if z.strip()]


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


def _ssh_key(auth: dict, echo) -> tuple[dict, str]:
    """(auth, OpenSSH public key): auth.ssh_public_key, else auth.ssh_private_key's public half;
    without either, a key pair created once under KEY_DIR (private key mode 0600) and used as
    auth.ssh_private_key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if auth.get("ssh_public_key") and not auth.get("ssh_private_key"):
        raise ConfigError("auth.ssh_private_key: missing; auth.ssh_public_key needs its private "
                          "key, which the launcher logs in with")
    path = os.path.expanduser(auth.get("ssh_private_key") or os.path.join(KEY_DIR, KEY_NAME))
    if not auth.get("ssh_private_key") and not os.path.exists(path):
        echo(f"Creating SSH key pair {path}")
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    auth = {**auth, "ssh_private_key": auth.get("ssh_private_key") or path}
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


def _resource_group(clients: Clients, provider: Mapping, cluster: str, echo) -> str:
    from azure.mgmt.resource.resources.models import ResourceGroup

    name = provider["resource_group"]
    if not azure_call(clients.resource.resource_groups.check_existence, "provider.resource_group",
                      name):
        echo(f"Creating resource group {name} in {provider['location']}")
        azure_call(clients.resource.resource_groups.create_or_update, "provider.resource_group",
                   name, ResourceGroup(location=provider["location"],
                                       tags={T.TAG_CLUSTER_NAME: cluster}))
    return f"/subscriptions/{clients.subscription}/resourceGroups/{name}"


def _network(clients: Clients, provider: Mapping, cluster: str, echo) -> str:
    """The subnet id of the cluster's virtual network (created once): one subnet of
    provider.vnet_cidr, guarded by a security group that admits SSH from provider.ssh_cidr
    (Azure's default rules already allow all traffic inside the network)."""
    from azure.mgmt.network import models as nm

    network, group = clients.network, provider["resource_group"]
    name = f"cluster-launcher-{cluster}"
    tags = {T.TAG_CLUSTER_NAME: cluster}
    try:
        vnet = azure_call(network.virtual_networks.get, "virtual network lookup", group,
                          f"{name}-vnet")
        return vnet.subnets[0].id
    except InvalidNodeConfig as exc:
        if not is_not_found(exc):
            raise
    echo(f"Creating network security group {name}-nsg and virtual network {name}-vnet")
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


def _head_identity(clients: Clients, provider: Mapping, cluster: str, group_id: str,
                   echo) -> dict | None:
    """The user-assigned identity the head's autoscaler authenticates as, Contributor on the
    resource group (None: provider.head_identity is false)."""
    from azure.mgmt.resource.resources.models import GenericResource

    if provider.get("head_identity") is False:
        return None
    resources = clients.resource.resources
    identity_id = f"{group_id}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" \
                  f"cluster-launcher-{cluster}-head"
    try:
        identity = _get_by_id(resources, identity_id, IDENTITY_API)
        if identity is None:
            echo(f"Creating managed identity cluster-launcher-{cluster}-head for the head's "
                 "autoscaler (Contributor on the resource group)")
            identity = azure_call(resources.begin_create_or_update_by_id, "head identity",
                                  identity_id, api_version=IDENTITY_API, parameters=GenericResource(
                                      location=provider["location"],
                                      tags={T.TAG_CLUSTER_NAME: cluster})).as_dict()
        principal = identity["properties"]["principalId"]
        role_id = f"{group_id}/providers/Microsoft.Authorization/roleAssignments/" \
                  f"{uuid.uuid5(uuid.NAMESPACE_URL, identity_id.lower())}"
        if _get_by_id(resources, role_id, ROLE_API) is None:
            role = f"/subscriptions/{clients.subscription}/providers/Microsoft.Authorization/" \
                   f"roleDefinitions/{CONTRIBUTOR}"
            azure_call(resources.begin_create_or_update_by_id, "head role assignment", role_id,
                       api_version=ROLE_API, parameters=GenericResource(properties={
                           "roleDefinitionId": role, "principalId": principal,
                           "principalType": "ServicePrincipal"}))
    except AuthError as exc:
        raise AuthError(f"{exc}; set provider.head_identity: false and give the head "
                        "credentials another way (see docs/azure.md)") from None
    return identity


def _get_by_id(resources, resource_id: str, api_version: str) -> dict | None:
    try:
        return azure_call(resources.get_by_id, "resource lookup", resource_id,
                          api_version=api_version).as_dict()
    except InvalidNodeConfig as exc:
        if is_not_found(exc):
            return None
        raise
