"""Ray's cluster-YAML keys, read as ours: a Ray user's config loads unchanged.

A pure translation, run before validation, of the parsed YAML: keys Ray names differently are
renamed; keys Ray has that mean nothing here are dropped when they hold the value that does
nothing (`docker: {}`, `cluster_synced_files: []`, `file_mounts_sync_continuously: false`), with
one note for the user; a real value for one of them is a one-line error saying it is not
supported and where the docs list them (docs/config-reference.md, "Coming from Ray"). Ray's
`local` provider with hosts is our `ssh` provider. The provider section's Ray keys are read the
same way, per provider type; what is left is checked against the type's keys (config_schema.json).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, NoReturn, Optional

RENAMED = {"head_start_ray_commands": "head_start_commands",
           "worker_start_ray_commands": "worker_start_commands"}
DOCS = "docs/config-reference.md#coming-from-ray"
# Ray keys with no counterpart, and the values of theirs that change nothing.
_INERT = {"cluster_synced_files": ([], None),
          "file_mounts_sync_continuously": (False, None),
          "no_restart": (False, None)}
# Ray's provider keys with no counterpart, by provider type ("*": all), and their values that
# change nothing (none: every value is refused). Ray's defaults for the autoscaler's switches.
_PROVIDER_INERT = {
    "*": {"disable_node_updaters": (False,), "disable_launch_config_check": (False,),
          "foreground_node_launch": (False,), "worker_liveness_check": (True,),
          "worker_rpc_drain": (True,)},
    "ssh": {"coordinator_address": ()},
    "aws": {"cloudwatch": ({}, None)},
    "azure": {"unique_id": (), "msi_identity_id": (), "msi_identity_principal_id": (),
              "subnet_id": ()},
}
_PROVIDER_RENAMED = {"aws": {"key_pair": "key_pair_name"}, "azure": {"subnet_mask": "vnet_cidr"}}
# Ray's docker keys; without an image anywhere they ask for nothing (Ray then runs on the hosts).
_DOCKER_KEYS = {"image", "head_image", "worker_image", "container_name", "pull_before_run",
                "run_options", "head_run_options", "worker_run_options",
                "disable_automatic_runtime_detection", "disable_shm_size_detection", "use_podman"}
_DOCKER_IMAGES = ("image", "head_image", "worker_image")

Fail = Callable[[list, str], NoReturn]


@dataclass
class Translated:
    data: dict  # the config with Ray's keys as ours
    notes: list = field(default_factory=list)  # what the user should know, one line each
    default_min_workers: Optional[int] = None  # Ray's top-level min_workers, for default types


def translate(data: dict, fail: Fail) -> Translated:
    """`fail(key_path, message)` raises."""
    data = copy.deepcopy(data)
    notes: list[str] = []
    _rename(data, RENAMED, [], fail)
    _drop_inert(data, _INERT, [], fail)
    _drop_docker(data, fail, notes)
    for name, spec in (data.get("available_node_types") or {}).items():
        if isinstance(spec, dict):
            if spec.get("resources") == {}:  # Ray: detect the node's resources, as when omitted
                del spec["resources"]
    _local_hosts_are_ssh(data, notes)
    _provider_keys(data, fail)
    return Translated(data, notes, _legacy_min_workers(data, fail))


def _rename(section: dict, renamed: dict, path: list, fail: Fail) -> None:
    """Ray's names become ours; both at once would leave the meaning open."""
    for ray_key, ours in renamed.items():
        if ray_key in section:
            if ours in section:
                fail(path + [ray_key], f"give either {ray_key} (Ray's name) or {ours}, not both")
            section[ours] = section.pop(ray_key)


def _drop_inert(section: dict, inert: dict, path: list, fail: Fail) -> None:
    """Ray's keys without counterpart go; only their values that change nothing are accepted."""
    for key, values in inert.items():
        if key in section:
            value = section.pop(key)
            if value not in values:
                only = f" (only {values[0]!r})" if values else ""
                fail(path + [key], f"not supported{only}; see {DOCS}")


def _provider_keys(data: dict, fail: Fail) -> None:
    """Ray's provider keys of the section's type: renamed, or dropped when inert. Ray's AWS
    key_pair: {key_name: NAME} is our key_pair_name: NAME."""
    provider = data.get("provider")
    if not isinstance(provider, dict):
        return
    kind = provider.get("type")
    key_pair = provider.get("key_pair")
    if kind == "aws" and key_pair is not None:
        if not isinstance(key_pair, dict) or set(key_pair) != {"key_name"}:
            fail(["provider", "key_pair"], f"expected {{key_name: NAME}}, got {key_pair!r}")
        provider["key_pair"] = key_pair["key_name"]
    _rename(provider, _PROVIDER_RENAMED.get(kind, {}), ["provider"], fail)
    _drop_inert(provider, {**_PROVIDER_INERT["*"], **_PROVIDER_INERT.get(kind, {})}, ["provider"],
                fail)


def _drop_docker(data: dict, fail: Fail, notes: list) -> None:
    """With an image anywhere, the docker sections (top level, per node type) stay, for the
    schema to check and the nodes to run in containers (launcher/docker_runner.py); without one
    they ask for nothing and go, as in Ray."""
    sections = [([], data)] + [(["available_node_types", name], spec) for name, spec in
                               (data.get("available_node_types") or {}).items()
                               if isinstance(spec, dict)]
    for path, section in sections:
        docker = section.get("docker")
        if docker is not None and not isinstance(docker, dict):
            fail(path + ["docker"], f"expected a mapping, got {docker!r}")
        unknown = set(docker or {}) - _DOCKER_KEYS
        if unknown:
            fail(path + ["docker", sorted(unknown)[0]], f"unknown key of docker; see {DOCS}")
    if any((section.get("docker") or {}).get(key) for _, section in sections
           for key in _DOCKER_IMAGES):
        return
    for _, section in sections:
        if section.pop("docker", None) and not notes:
            notes.append("docker: no image given, so nodes run without containers, as in Ray")


def _local_hosts_are_ssh(data: dict, notes: list) -> None:
    """Ray's `local` provider with head_ip/worker_ips is machines reached over SSH: our `ssh`.
    Ray gives it one node type for all hosts, started all at once."""
    provider = data.get("provider")
    if not isinstance(provider, dict) or provider.get("type") != "local" or \
            not ({"head_ip", "worker_ips"} & set(provider)):
        return
    provider["type"] = "ssh"
    notes.append("provider.type: local with hosts is the ssh provider here (Ray's meaning)")
    if "available_node_types" not in data:
        hosts = len(provider.get("worker_ips") or [])
        data.setdefault("max_workers", hosts)
        workers = data.pop("min_workers", hosts)
        data["available_node_types"] = {
            "local.cluster.node": {"min_workers": workers, "max_workers": data["max_workers"]}}
        data.setdefault("head_node_type", "local.cluster.node")


def _legacy_min_workers(data: dict, fail: Fail) -> Optional[int]:
    """Ray's top-level min_workers (from before node types) applies to the default worker
    types; next to node types of the user's own, only 0 means something."""
    if "min_workers" not in data:
        return None
    value = data.pop("min_workers")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        fail(["min_workers"], f"expected a non-negative integer, got {value!r}")
    if "available_node_types" in data and value:
        fail(["min_workers"], "set min_workers per node type (available_node_types.<type>."
             f"min_workers); a top-level value applies only to the default node types ({DOCS})")
    return value if "available_node_types" not in data else None
