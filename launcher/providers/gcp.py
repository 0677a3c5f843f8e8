"""The `gcp` provider: Compute Engine instances, their state in instance labels (launcher.tags).

- node_config is the REST API's Instance resource (camelCase keys: machineType, disks,
  guestAccelerators, scheduling, serviceAccounts, metadata, networkInterfaces, labels, ...) with
  zone-independent names (`machineType: g2-standard-8`), plus `zones`: the zones tried in order,
  the next one after a capacity error. Bootstrap fills in the rest (gcp_bootstrap).
- Nodes are the cluster's PROVISIONING, STAGING and RUNNING instances in the region, found by the
  cluster-name label. The node id is the instance name (unique: it ends in a random suffix).
- Labels allow only [a-z0-9_-], at most 63 characters: tag keys and values are encoded (below).
- provider.cache_stopped_nodes: terminate stops on-demand workers while the head lives; create
  starts stopped ones of the same type and launch hash first. Spot instances are always deleted.
- provider.use_internal_ips: SSH to internal IPs; otherwise to external ones. The head's own
  autoscaler (CLUSTER_NODE_ID is set there) always uses internal IPs.
- provider.api_endpoint: the Compute Engine endpoint (default the public one); credentials come
  from Ray's provider.gcp_credentials, else google-auth's Application Default Credentials.

google-cloud-compute is imported only by this module and gcp_bootstrap/gcp_catalog. See docs/gcp.md.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import threading
from typing import Callable, Mapping, Optional, Sequence

from launcher import tags as T
from launcher.errors import CapacityError, InvalidNodeConfig, ProviderError
from launcher.providers.base import Changes, NodeProvider
from launcher.providers.gcp_bootstrap import key_path, resource_name
from launcher.providers.gcp_catalog import Compute, base_name, has_reason
from launcher.ssh import SSHRunners

LIVE = {"PROVISIONING", "STAGING", "RUNNING"}
STOPPED = {"STOPPING", "TERMINATED"}  # a stopped instance is TERMINATED in Compute Engine
SET_LABELS_ATTEMPTS = 5  # another process changed the labels meanwhile: read them again
_PLAIN = set("abcdefghijklmnopqrstuvwxyz0123456789-")


def encode_label(text: str) -> str:
    """A tag key or value as a label: lowercase letters, digits and `-` stay; `_` becomes `__`;
    any other byte of its UTF-8 `_xx` (hex). Reversible by decode_label."""
    out = []
    for char in str(text):
        if char in _PLAIN:
            out.append(char)
        elif char == "_":
            out.append("__")
        else:
            out += [f"_{byte:02x}" for byte in char.encode()]
    encoded = "".join(out)
    if len(encoded) > 63:
        raise InvalidNodeConfig(f"tag {text!r} is too long for a GCP label ({len(encoded)} "
                                "characters encoded, at most 63)")
    return encoded


def decode_label(label: str) -> str:
    data, i = bytearray(), 0
    while i < len(label):
        if label[i] != "_":
            data += label[i].encode()
            i += 1
        elif label[i + 1] == "_":
            data += b"_"
            i += 2
        else:
            data.append(int(label[i + 1:i + 3], 16))
            i += 3
    return data.decode()


class GCPNodeProvider(NodeProvider):
    runtime_extras = ("gcp",)  # the head's autoscaler calls Compute Engine

    def __init__(self, provider_config: Mapping, cluster_name: str, auth: Optional[Mapping] = None):
        super().__init__(provider_config, cluster_name, auth)
        self.project = provider_config["project_id"]
        self.region = provider_config["region"]
        self.cache_stopped = bool(provider_config.get("cache_stopped_nodes", False))
        self.use_internal_ips = bool(provider_config.get("use_internal_ips", False))
        self.gce = Compute(self.project, provider_config.get("api_endpoint"),
                           credentials=provider_config.get("gcp_credentials"))
        self._instances: dict[str, object] = {}  # name -> last compute_v1.Instance seen
        self._runners = SSHRunners(cluster_name, self.auth)
        self._lock = threading.Lock()

    def bootstrap(self, config, echo: Callable[[str], None] = lambda _: None,
                  dry_run: bool = False):
        from launcher.providers.gcp_bootstrap import bootstrap

        config = bootstrap(config, Changes(echo, apply=not dry_run), self.gce)
        self.auth = dict(config.auth)
        return config

    # --- listing -------------------------------------------------------------------------------

    def _list(self, tags: Mapping[str, str], states=LIVE) -> list:
        """The cluster's instances in the region in `states` whose labels include `tags`."""
        labels = {T.TAG_CLUSTER_NAME: self.cluster_name, **tags}
        query = " ".join(f'(labels.{encode_label(k)} = "{encode_label(v)}")'
                         for k, v in sorted(labels.items()))
        scopes = self.gce.items("Instances", "aggregated_list", "listing instances",
                                filter=query)
        found = [instance for scope, listed in scopes
                 if scope.startswith(f"zones/{self.region}-") for instance in listed.instances
                 if instance.status in states]
        with self._lock:
            for instance in found:
                self._instances[instance.name] = instance
        return found

    def nodes(self, tag_filters: Mapping[str, str]) -> list[str]:
        return sorted(instance.name for instance in self._list(tag_filters))

    def _instance(self, node_id: str):
        with self._lock:
            instance = self._instances.get(node_id)
        if instance is None:
            found = [i for i in self._list({}, LIVE | STOPPED) if i.name == node_id]
            if not found:
                raise ProviderError(f"{node_id} is not an instance of cluster {self.cluster_name}")
            instance = found[0]
        return instance

    def node_tags(self, node_id: str) -> dict[str, str]:
        return {decode_label(k): decode_label(v) for k, v in self._instance(node_id).labels.items()}

    def internal_ip(self, node_id: str) -> str:
        interfaces = self._instance(node_id).network_interfaces
        if not interfaces or not interfaces[0].network_i_p:
            raise ProviderError(f"{node_id} has no internal IP")
        return interfaces[0].network_i_p

    def external_ip(self, node_id: str) -> Optional[str]:
        interfaces = self._instance(node_id).network_interfaces
        configs = interfaces[0].access_configs if interfaces else []
        return (configs[0].nat_i_p or None) if configs else None

    # --- changing ------------------------------------------------------------------------------

    def create(self, node_type: str, node_config: Mapping, tags: Mapping[str, str],
               count: int) -> list[str]:
        tags = {**tags, T.TAG_CLUSTER_NAME: self.cluster_name, T.TAG_NODE_TYPE: node_type}
        names = []
        if self.cache_stopped and not _is_spot(node_config):
            names = self._restart_stopped(tags, count)
        if count > len(names):
            names += self._insert(node_config, tags, count - len(names))
        return names

    def _restart_stopped(self, tags: Mapping[str, str], count: int) -> list[str]:
        """Start up to `count` stopped instances of this node type and launch hash; their start
        hash is cleared (the disk kept what setup installed, but nothing runs after a boot)."""
        match = {k: tags[k] for k in (T.TAG_NODE_TYPE, T.TAG_NODE_KIND, T.TAG_LAUNCH_HASH)
                 if k in tags}
        stopped = sorted(self._list(match, {"TERMINATED"}), key=lambda i: i.name)[:count]
        operations = [(i.name, self.gce.call("Instances", "start_unary", f"starting {i.name}",
                                             zone=_zone(i), instance=i.name)) for i in stopped]
        for name, operation in operations:
            self.gce.wait(operation, f"starting {name}")
            self._set_labels(name, {**tags, T.TAG_START_HASH: None})
        return [name for name, _ in operations]

    def _insert(self, node_config: Mapping, tags: Mapping[str, str], count: int) -> list[str]:
        """Insert `count` instances, zone after zone while Compute Engine reports no capacity.
        Inserts of one zone are sent together, then their operations awaited. Instances created
        before an error are returned (the caller sets them up); the error is raised only when
        none was, so a retry meets it again."""
        from google.cloud import compute_v1

        zones = list(node_config.get("zones") or [
            z.strip() for z in self.provider_config.get("availability_zone", "").split(",")
            if z.strip()])
        if not zones:
            raise InvalidNodeConfig("node_config.zones: missing (run `cluster up`, whose "
                                    "bootstrap fills it in, or set provider.availability_zone)")
        machine = node_config.get("machineType")
        what = f"launching {machine} in"
        created, capacity, error = [], [], None
        for zone in self.zone_backoff.order(str(machine), zones):
            operations = []
            for _ in range(count - len(created)):
                name = _instance_name(self.cluster_name, tags.get(T.TAG_NODE_KIND, "node"))
                body = compute_v1.Instance.from_json(json.dumps(
                    self._instance_body(node_config, zone, name, tags)))
                try:
                    operations.append((name, self.gce.call(
                        "Instances", "insert_unary", f"{what} {zone}", zone=zone,
                        instance_resource=body)))
                except ProviderError as exc:
                    error = exc
                    break
            for name, operation in operations:
                try:
                    self.gce.wait(operation, f"{what} {zone}")
                    created.append(name)
                except ProviderError as exc:
                    error = exc
            if isinstance(error, CapacityError):
                capacity.append(str(error))
                error = None
                self.zone_backoff.failed(str(machine), zone)
            elif error is None:
                self.zone_backoff.succeeded(str(machine), zone)
            if error is not None or len(created) == count:
                break
        if created:
            return created
        raise error or CapacityError(f"no capacity for {count} x {machine} in any of "
                                     f"{len(zones)} zone(s): {'; '.join(capacity)}")

    def _instance_body(self, node_config: Mapping, zone: str, name: str,
                       tags: Mapping[str, str]) -> dict:
        """The Instance resource for one zone: machine, GPU and disk types made zonal."""
        body = copy.deepcopy({k: v for k, v in node_config.items() if k != "zones"})
        body["name"] = name
        body["machineType"] = f"zones/{zone}/machineTypes/{base_name(body['machineType'])}"
        for gpu in body.get("guestAccelerators", []):
            gpu["acceleratorType"] = (f"projects/{self.project}/zones/{zone}/acceleratorTypes/"
                                      f"{base_name(gpu['acceleratorType'])}")
        for disk in body.get("disks", []):
            params = disk.get("initializeParams", {})
            if params.get("diskType"):
                params["diskType"] = f"zones/{zone}/diskTypes/{base_name(params['diskType'])}"
        body["labels"] = {**body.get("labels", {}),
                          **{encode_label(k): encode_label(v) for k, v in tags.items()}}
        return body

    def preempted(self, node_ids: Sequence[str]) -> dict[str, str]:
        """Spot (or preemptible) instances Compute Engine took away: stopped (a preempted VM is
        TERMINATED, as a stopped one is), or gone (instanceTerminationAction DELETE, our
        default; a spot VM deleted by hand reads the same)."""
        listed = {i.name: i for i in self._list({}, LIVE | STOPPED)} if node_ids else {}
        with self._lock:
            seen = {name: listed.get(name) or self._instances.get(name) for name in node_ids}
        taken = {}
        for name, instance in seen.items():
            if instance is None or not (instance.scheduling.provisioning_model == "SPOT"
                                        or instance.scheduling.preemptible):
                continue
            if name not in listed:
                taken[name] = "preempted by Compute Engine (spot VM deleted on preemption)"
            elif listed[name].status in STOPPED:
                taken[name] = "preempted by Compute Engine (spot VM stopped)"
        return taken

    def on_demand(self, node_config: Mapping) -> Optional[Mapping]:
        scheduling = node_config.get("scheduling", {})
        if not (_is_spot(node_config) or scheduling.get("preemptible")):
            return None
        standard = {k: v for k, v in scheduling.items()
                    if k not in ("provisioningModel", "preemptible", "instanceTerminationAction")}
        return {**node_config, "scheduling": {**standard, "provisioningModel": "STANDARD",
                                              "automaticRestart": True}}

    def terminate(self, node_ids: Sequence[str]) -> None:
        """Delete instances (unknown ids are ignored): every delete is sent, then every operation
        awaited. With cache_stopped_nodes, on-demand workers are stopped instead while the
        cluster's head lives; once the head is gone (as in `cluster down`, which terminates the
        head first) the cluster's stopped instances are deleted too."""
        for node_id in node_ids:
            self._runners.close(node_id)
        every = self._list({}, LIVE | STOPPED) if node_ids else []
        known = [i for i in every if i.name in node_ids]
        cache = self.cache_stopped and any(
            i.name not in node_ids and i.status in LIVE
            and i.labels.get(T.TAG_NODE_KIND) == T.KIND_HEAD for i in every)
        stop, delete = [], []
        for instance in known:
            worker = instance.labels.get(T.TAG_NODE_KIND) != T.KIND_HEAD
            keep = cache and worker and instance.scheduling.provisioning_model != "SPOT"
            (stop if keep else delete).append(instance)
        if self.cache_stopped and not cache:
            doomed = {i.name for i in delete}
            delete += [i for i in every if i.status in STOPPED and i.name not in doomed]
        operations = [(i.name, self.gce.call("Instances", f"{verb}_unary", f"{verb} {i.name}",
                                             zone=_zone(i), instance=i.name))
                      for verb, instances in (("stop", stop), ("delete", delete))
                      for i in instances]
        for name, operation in operations:
            try:
                self.gce.wait(operation, f"removing {name}")
            except ProviderError as exc:
                if not has_reason(exc, "notFound") and "RESOURCE_NOT_FOUND" not in str(exc):
                    raise
        with self._lock:
            for node_id in node_ids:
                self._instances.pop(node_id, None)

    def set_tags(self, node_id: str, tags: Mapping[str, str]) -> None:
        self._set_labels(node_id, tags)

    def _set_labels(self, node_id: str, tags: Mapping[str, Optional[str]]) -> None:
        """Merge tags into the instance's labels (a None value removes the tag). setLabels
        replaces all labels and is guarded by their fingerprint: on a concurrent change, read
        them again and retry."""
        from google.cloud import compute_v1

        zone = _zone(self._instance(node_id))
        for attempt in range(SET_LABELS_ATTEMPTS):
            instance = self.gce.call("Instances", "get", f"reading {node_id}", zone=zone,
                                     instance=node_id)
            labels = dict(instance.labels)
            for key, value in tags.items():
                labels.pop(encode_label(key), None)
                if value is not None:
                    labels[encode_label(key)] = encode_label(value)
            request = compute_v1.InstancesSetLabelsRequest(
                label_fingerprint=instance.label_fingerprint, labels=labels)
            try:
                operation = self.gce.call("Instances", "set_labels_unary", f"labelling {node_id}",
                                          zone=zone, instance=node_id,
                                          instances_set_labels_request_resource=request)
                self.gce.wait(operation, f"labelling {node_id}")
            except ProviderError as exc:
                if has_reason(exc, "conditionNotMet") and attempt < SET_LABELS_ATTEMPTS - 1:
                    continue
                raise
            instance.labels.clear()
            instance.labels.update(labels)
            with self._lock:
                self._instances[node_id] = instance
            return

    # --- reaching nodes ------------------------------------------------------------------------

    def command_runner(self, node_id: str):
        internal = self.use_internal_ips or "CLUSTER_NODE_ID" in os.environ
        host = self.internal_ip(node_id) if internal else self.external_ip(node_id)
        if not host:
            raise ProviderError(f"{node_id} has no external IP; set provider.use_internal_ips: "
                                "true and run from inside the VPC network")
        return self._runners.get(node_id, host, self._key_path(), f"{node_id} ({host})")

    def _key_path(self) -> str:
        """auth.ssh_private_key, else the project's key bootstrap generated."""
        return self.auth.get("ssh_private_key") or key_path(self.project)


def _instance_name(cluster: str, kind: str) -> str:
    return resource_name(cluster, f"-{kind}-{secrets.token_hex(4)}")


def _is_spot(node_config: Mapping) -> bool:
    return node_config.get("scheduling", {}).get("provisioningModel") == "SPOT"


def _zone(instance) -> str:
    return base_name(instance.zone)
