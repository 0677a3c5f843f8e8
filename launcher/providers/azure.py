"""The `azure` provider: Azure VMs in provider.resource_group, their state in Azure tags.

- A node is a VM named `<cluster>-<kind>-<8 hex>` (its id) with a NIC `<vm>-nic`, a public IP
  `<vm>-ip` (none with provider.use_internal_ips) and an OS disk `<vm>-osdisk`; all carry the
  cluster-name tag, so `cluster down` finds the leftovers of a create that failed half-way.
- node_config.azure_arm_parameters: vmSize, image (imagePublisher/Offer/Sku/Version or imageId),
  priority Spot with evictionPolicy and billingProfile, osDiskSizeGB, osDiskType. Bootstrap adds
  subnet_id, ssh_public_key and (head) identity_id.
- provider.availability_zone ("1,2,3"): a VM refused for capacity in one zone is tried in the next.
- provider.use_internal_ips: SSH to private IPs; otherwise to public IPs. The head's own
  autoscaler (CLUSTER_NODE_ID is set there) always uses private IPs. With Ray's
  use_external_head_ip too, the head alone gets a public IP, which the launcher SSHes to.
- Endpoint: provider.resource_manager_endpoint; credentials: see azure_catalog.

The azure SDKs are imported only by this module and azure_bootstrap/azure_catalog.
See docs/azure.md.
"""

from __future__ import annotations

import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping, Optional, Sequence

from launcher import tags as T
from launcher.errors import CapacityError, ConfigError, ProviderError
from launcher.providers.azure_bootstrap import type_zones
from launcher.providers.azure_catalog import Clients, azure_call, is_not_found
from launcher.providers.base import Changes, NodeProvider
from launcher.ssh import SSHRunners

MAX_PARALLEL = 16  # VMs created or deleted at once
# A VM's resources by the suffix of their names; the leftovers in the order they can be deleted.
SUFFIX = {"virtual_machines": "", "network_interfaces": "-nic", "public_ip_addresses": "-ip",
          "disks": "-osdisk"}
SUPPORT = ("network_interfaces", "public_ip_addresses", "disks")


class AzureNodeProvider(NodeProvider):
    runtime_extras = ("azure",)  # the head's autoscaler calls Azure through the SDKs

    def __init__(self, provider_config: Mapping, cluster_name: str, auth: Optional[Mapping] = None):
        super().__init__(provider_config, cluster_name, auth)
        if provider_config.get("cache_stopped_nodes"):
            raise ConfigError("provider.cache_stopped_nodes: not supported by the azure provider "
                              "(workers are deleted when idle); remove it or set it to false")
        self.group = provider_config["resource_group"]
        self.location = provider_config["location"]
        self.use_internal_ips = bool(provider_config.get("use_internal_ips", False))
        self.external_head = bool(provider_config.get("use_external_head_ip", False))
        self.clients = Clients(provider_config)
        self._tags: dict[str, dict] = {}  # VM name -> tags, from the last listing
        self._spot: set[str] = set()  # the spot VMs among them
        self._ips: dict[tuple, Optional[str]] = {}  # (VM name, "-nic" | "-ip") -> address
        self._runners = SSHRunners(cluster_name, self.auth)
        self._lock = threading.Lock()

    def bootstrap(self, config, echo: Callable[[str], None] = lambda _: None,
                  dry_run: bool = False):
        from launcher.providers.azure_bootstrap import bootstrap

        config = bootstrap(config, Changes(echo, apply=not dry_run))
        self.auth = dict(config.auth)
        self._runners = SSHRunners(self.cluster_name, self.auth)
        return config

    # --- listing -------------------------------------------------------------------------------

    def _list(self) -> dict[str, dict]:
        """VM name -> tags of the cluster's VMs that are not being deleted."""
        vms = self._listed(self.clients.compute.virtual_machines.list, "listing VMs")
        ours = [vm for vm in vms if (vm.tags or {}).get(T.TAG_CLUSTER_NAME) == self.cluster_name
                and vm.provisioning_state != "Deleting"]
        found = {vm.name: dict(vm.tags or {}) for vm in ours}
        with self._lock:
            self._tags.update(found)
            self._spot.update(vm.name for vm in ours if vm.priority == "Spot")
        return found

    def preempted(self, node_ids: Sequence[str]) -> dict[str, str]:
        """Spot VMs Azure evicted: deallocated (evictionPolicy Deallocate), or gone (Delete, our
        default; a spot VM deleted by hand reads the same)."""
        listed = self._list() if node_ids else {}
        with self._lock:
            spot = [n for n in node_ids if n in self._spot]
        evicted = {}
        for name in spot:
            if name not in listed:
                evicted[name] = "evicted by Azure (spot VM deleted on eviction)"
            elif self._power_state(name) == "PowerState/deallocated":
                evicted[name] = "evicted by Azure (spot VM deallocated)"
        return evicted

    def on_demand(self, node_config: Mapping) -> Optional[Mapping]:
        params = node_config["azure_arm_parameters"]
        if params.get("priority") != "Spot":
            return None
        regular = {k: v for k, v in params.items()
                   if k not in ("priority", "evictionPolicy", "billingProfile")}
        return {**node_config, "azure_arm_parameters": regular}

    def _power_state(self, name: str) -> str:
        view = azure_call(self.clients.compute.virtual_machines.instance_view,
                          f"reading the state of VM {name}", self.group, name)
        return next((s.code for s in view.statuses or [] if s.code.startswith("PowerState/")), "")

    def _listed(self, listing: Callable, what: str) -> list:
        """Everything a listing of the resource group returns; nothing while the group does not
        exist (no cluster was ever created there)."""
        try:
            return azure_call(lambda: list(listing(self.group)), what)
        except ProviderError as exc:
            if "ResourceGroupNotFound" in str(exc):
                return []
            raise

    def nodes(self, tag_filters: Mapping[str, str]) -> list[str]:
        return sorted(name for name, tags in self._list().items()
                      if all(tags.get(k) == v for k, v in tag_filters.items()))

    def node_tags(self, node_id: str) -> dict[str, str]:
        with self._lock:
            tags = self._tags.get(node_id)
        if tags is None:
            tags = self._list().get(node_id)
            if tags is None:
                raise ProviderError(f"{node_id} is not a VM of cluster {self.cluster_name}")
        return dict(tags)

    def internal_ip(self, node_id: str) -> str:
        ip = self._address(node_id, "-nic")
        if not ip:
            raise ProviderError(f"{node_id} has no private IP")
        return ip

    def external_ip(self, node_id: str) -> Optional[str]:
        return self._address(node_id, "-ip") if self._has_public_ip(node_id) else None

    def _has_public_ip(self, node_id: str, tags: Optional[Mapping] = None) -> bool:
        """Every VM has one, unless use_internal_ips: then only the head, with Ray's
        use_external_head_ip. `tags`: the node's, when known."""
        if not (self.use_internal_ips and self.external_head):
            return not self.use_internal_ips
        return (tags or self.node_tags(node_id)).get(T.TAG_NODE_KIND) == T.KIND_HEAD

    def _address(self, node_id: str, suffix: str) -> Optional[str]:
        """A VM's private (NIC) or public address; both stay fixed for the VM's life."""
        with self._lock:
            if (node_id, suffix) in self._ips:
                return self._ips[node_id, suffix]
        network = self.clients.network
        try:
            if suffix == "-nic":
                nic = azure_call(network.network_interfaces.get, f"NIC of {node_id}", self.group,
                                 node_id + suffix)
                ip = nic.ip_configurations[0].private_ip_address
            else:
                ip = azure_call(network.public_ip_addresses.get, f"public IP of {node_id}",
                                self.group, node_id + suffix).ip_address
        except ProviderError as exc:
            if not is_not_found(exc):
                raise
            ip = None
        with self._lock:
            self._ips[node_id, suffix] = ip
        return ip

    # --- changing ------------------------------------------------------------------------------

    def create(self, node_type: str, node_config: Mapping, tags: Mapping[str, str],
               count: int) -> list[str]:
        """Create `count` VMs in parallel. Those that fail are removed again; the first error is
        raised when none was created."""
        if count <= 0:
            return []
        tags = {**tags, T.TAG_CLUSTER_NAME: self.cluster_name, T.TAG_NODE_TYPE: node_type}
        kind = tags.get(T.TAG_NODE_KIND, "node")
        names = [f"{T.dns_name(self.cluster_name)[:45]}-{kind}-{uuid.uuid4().hex[:8]}"
                 for _ in range(count)]
        with ThreadPoolExecutor(min(count, MAX_PARALLEL)) as pool:
            outcomes = list(pool.map(lambda name: self._create_one(name, node_config, tags), names))
        created = [name for name, error in zip(names, outcomes) if error is None]
        if not created:
            raise outcomes[0]
        return created

    def _create_one(self, name: str, node_config: Mapping, tags: dict) -> Optional[ProviderError]:
        """Public IP, NIC, then the VM zone after zone; None, or the error after cleaning up."""
        failures, size = [], node_config["azure_arm_parameters"]["vmSize"]
        try:
            nic = self._nic(name, node_config, tags)
            zones = type_zones(self.provider_config, node_config["azure_arm_parameters"])
            for zone in self.zone_backoff.order(size, zones) or [None]:
                try:
                    vm = azure_call(self.clients.compute.virtual_machines.begin_create_or_update,
                                    f"creating VM {name} ({size})", self.group,
                                    name, self._vm_body(name, node_config, tags, nic, zone))
                except CapacityError as exc:
                    failures.append(f"zone {zone}: {exc}" if zone else str(exc))
                    self.zone_backoff.failed(size, zone)
                    self._delete("virtual_machines", [name])  # a failed VM may stay behind
                    continue
                self.zone_backoff.succeeded(size, zone)
                self._merge_tags(vm.storage_profile.os_disk.managed_disk.id,  # made by Azure
                                 {T.TAG_CLUSTER_NAME: self.cluster_name}, "tagging the OS disk")
                with self._lock:
                    self._tags[name] = dict(tags)
                return None
            raise CapacityError("; ".join(failures))
        except ProviderError as exc:
            try:
                for kind in ("virtual_machines", *SUPPORT):
                    self._delete(kind, [name])
            except ProviderError:
                pass  # the first error says more; the leftovers are tagged for `cluster down`
            return exc

    def _nic(self, name: str, node_config: Mapping, tags: Optional[Mapping] = None) -> str:
        """The VM's NIC (with a public IP if the VM gets one); returns its id."""
        from azure.mgmt.network import models as nm

        network, support_tags = self.clients.network, {T.TAG_CLUSTER_NAME: self.cluster_name}
        public = None
        if self._has_public_ip(name, tags):
            public = azure_call(network.public_ip_addresses.begin_create_or_update,
                                f"creating public IP {name}-ip", self.group, f"{name}-ip",
                                nm.PublicIPAddress(location=self.location, tags=support_tags,
                                                   sku=nm.PublicIPAddressSku(name="Standard"),
                                                   public_ip_allocation_method="Static"))
            public = nm.PublicIPAddress(id=public.id)
        nic = azure_call(network.network_interfaces.begin_create_or_update,
                         f"creating NIC {name}-nic", self.group, f"{name}-nic",
                         nm.NetworkInterface(location=self.location, tags=support_tags,
                                             ip_configurations=[nm.NetworkInterfaceIPConfiguration(
                                                 name="ipconfig1", public_ip_address=public,
                                                 subnet=nm.Subnet(id=node_config["subnet_id"]))]))
        return nic.id

    def _vm_body(self, name: str, node_config: Mapping, tags: dict, nic: str,
                 zone: Optional[str]):
        from azure.mgmt.compute import models as cm

        params = node_config["azure_arm_parameters"]
        image = (cm.ImageReference(id=params["imageId"]) if params.get("imageId") else
                 cm.ImageReference(publisher=params["imagePublisher"], offer=params["imageOffer"],
                                   sku=params["imageSku"], version=params["imageVersion"]))
        user = self.auth.get("ssh_user", "ubuntu")
        key = cm.SshPublicKey(path=f"/home/{user}/.ssh/authorized_keys",
                              key_data=node_config["ssh_public_key"])
        spot = params.get("priority") == "Spot"
        identity = node_config.get("identity_id")
        return cm.VirtualMachine(
            location=self.location, tags=tags, zones=[zone] if zone else None,
            hardware_profile=cm.HardwareProfile(vm_size=params["vmSize"]),
            storage_profile=cm.StorageProfile(image_reference=image, os_disk=cm.OSDisk(
                name=f"{name}-osdisk", create_option="FromImage", delete_option="Delete",
                disk_size_gb=params.get("osDiskSizeGB"), managed_disk=cm.ManagedDiskParameters(
                    storage_account_type=params.get("osDiskType", "StandardSSD_LRS")))),
            os_profile=cm.OSProfile(computer_name=name, admin_username=user,
                                    linux_configuration=cm.LinuxConfiguration(
                                        disable_password_authentication=True,
                                        ssh=cm.SshConfiguration(public_keys=[key]))),
            network_profile=cm.NetworkProfile(network_interfaces=[
                cm.NetworkInterfaceReference(id=nic, primary=True)]),
            priority=params.get("priority"),
            eviction_policy=params.get("evictionPolicy") if spot else None,
            billing_profile=cm.BillingProfile(max_price=params["billingProfile"]["maxPrice"])
            if spot else None,
            identity=cm.VirtualMachineIdentity(type="UserAssigned", user_assigned_identities={
                identity: cm.UserAssignedIdentitiesValue()}) if identity else None)

    def _merge_tags(self, resource_id: str, tags: Mapping[str, str], what: str) -> None:
        """Merge tags into a resource's, server-side: no read-modify-write race."""
        from azure.mgmt.resource.resources.models import Tags, TagsPatchResource

        azure_call(self.clients.resource.tags.begin_update_at_scope, what, resource_id,
                   TagsPatchResource(operation="Merge", properties=Tags(tags=dict(tags))))

    def terminate(self, node_ids: Sequence[str]) -> None:
        """Delete the VMs, then their NICs, public IPs and disks. Once no head survives (as in
        `cluster down`, which terminates the head first), every leftover tagged with the cluster
        goes too: the remains of creates that failed half-way."""
        for node_id in node_ids:
            self._runners.close(node_id)
        live = self._list()
        self._delete("virtual_machines", [n for n in node_ids if n in live])
        survivors = {n for n in live if n not in node_ids}
        every_orphan = not any(live[n].get(T.TAG_NODE_KIND) == T.KIND_HEAD for n in survivors)
        for kind in SUPPORT:
            self._delete(kind, [owner for owner in self._owners(kind) if owner not in survivors
                                and (every_orphan or owner in node_ids)])
        with self._lock:
            for node_id in node_ids:
                self._tags.pop(node_id, None)
                self._ips.pop((node_id, "-nic"), None)
                self._ips.pop((node_id, "-ip"), None)

    def _operations(self, kind: str):
        network = kind in ("network_interfaces", "public_ip_addresses")
        return getattr(self.clients.network if network else self.clients.compute, kind)

    def _owners(self, kind: str) -> list[str]:
        """VM names that the cluster's resources of one kind (NICs, public IPs, disks) belong to."""
        operations, suffix = self._operations(kind), SUFFIX[kind]
        listing = operations.list_by_resource_group if kind == "disks" else operations.list
        found = self._listed(listing, f"listing {kind}")
        return [r.name[:-len(suffix)] for r in found if r.name.endswith(suffix)
                and (r.tags or {}).get(T.TAG_CLUSTER_NAME) == self.cluster_name]

    def _delete(self, kind: str, owners: Sequence[str]) -> None:
        """Delete the resources of one kind of these VMs, in parallel; those already gone are
        fine."""
        if not owners:
            return
        operations, suffix = self._operations(kind), SUFFIX[kind]
        with ThreadPoolExecutor(min(len(owners), MAX_PARALLEL)) as pool:
            errors = [e for e in pool.map(lambda owner: _deleted(
                operations.begin_delete, f"deleting {owner}{suffix}", self.group, owner + suffix),
                owners) if e]
        if errors:
            raise errors[0]

    def set_tags(self, node_id: str, tags: Mapping[str, str]) -> None:
        self._merge_tags(f"/subscriptions/{self.clients.subscription}/resourceGroups/{self.group}"
                         f"/providers/Microsoft.Compute/virtualMachines/{node_id}", tags,
                         f"tagging {node_id}")
        with self._lock:
            if node_id in self._tags:
                self._tags[node_id].update(tags)

    # --- reaching nodes ------------------------------------------------------------------------

    def command_runner(self, node_id: str):
        internal = "CLUSTER_NODE_ID" in os.environ or not self._has_public_ip(node_id)
        host = self.internal_ip(node_id) if internal else self.external_ip(node_id)
        if not host:
            raise ProviderError(f"{node_id} has no public IP; set provider.use_internal_ips: true "
                                "and run from inside the virtual network")
        key = self.auth.get("ssh_private_key") or _default_key()
        return self._runners.get(node_id, host, key, f"{node_id} ({host})")


def _default_key() -> str:
    from launcher.providers.azure_bootstrap import KEY_DIR, KEY_NAME

    return os.path.join(KEY_DIR, KEY_NAME)


def _deleted(begin_delete, what: str, *args) -> Optional[ProviderError]:
    """Run one delete to its end: None when done or already gone, else the error."""
    try:
        azure_call(begin_delete, what, *args)
    except ProviderError as exc:
        return None if is_not_found(exc) else exc
    return None
