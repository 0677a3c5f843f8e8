"""The cluster config loader: one YAML file -> a validated, defaults-merged, frozen ClusterConfig.

Dicts end here: the rest of the code base reads typed fields. Every problem is one ConfigError line,
`<file>: <key.path>: <what is wrong and what is expected>`, so a typo in a long YAML is found
without reading a traceback (launcher/config_check.py words them). Ray's keys are read as ours
first (launcher/ray_config.py); validation runs on the user's own keys (the JSON Schema in
config_schema.json), then defaults are merged, then the checks a schema cannot express run.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from launcher import cloud_profiles, docker_runner, ray_config
from launcher.config_check import check_keys, did_you_mean, fail, validate

_PACKAGE_DIR = Path(__file__).parent

BOOTSTRAP_CONFIG_PATH = "~/cluster_bootstrap.yaml"
"""Where `cluster up` writes bootstrap_yaml() on the head (read by the default start commands)."""
BOOTSTRAP_KEY_PATH = "~/cluster_bootstrap_key.pem"
"""Where `cluster up` copies auth.ssh_private_key on the head, so the head can reach its workers."""

COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_commands", "worker_start_commands")
# A node type without `resources` gets these; clouds detect resources from their instance catalog
# instead, but a local process group has no catalog to detect from.
_DEFAULT_RESOURCES = {"local": {"CPU": 1}}
_COUNTED_RESOURCES = ("CPU", "GPU")  # whole units: a node cannot offer half a core or half a GPU


@dataclass(frozen=True)
class NodeTypeConfig:
    """One entry of available_node_types, defaults filled in."""

    name: str
    node_config: Mapping
    resources: Mapping[str, float]
    min_workers: int
    max_workers: int
    worker_setup_commands: tuple[str, ...]
    docker: Mapping  # this type's own docker keys, over the top-level ones
    fallback_to_on_demand_after: Optional[int] = None  # spot failures before on-demand launches


@dataclass(frozen=True)
class ClusterConfig:
    """The whole cluster config, defaults merged and checked.

    Mappings are plain dicts (treat them as read-only) so they dump to JSON/YAML and deep-copy.
    `raw` is derived from the other fields, so `dataclasses.replace` (e.g. in a provider's
    bootstrap) can never leave it stale.
    """

    cluster_name: str
    max_workers: int
    upscaling_speed: float
    idle_timeout_minutes: float
    autoscaler_update_interval_s: float
    install_timeout_minutes: float  # how long a node may take to set up, join, drain (lifecycle)
    join_timeout_minutes: float
    drain_timeout_minutes: float
    replace_outdated_fraction: float  # of max_workers: outdated workers replaced at once
    gcs_storage: str  # where the head's GCS keeps its tables ("": a SQLite file on the head)
    provider: Mapping
    auth: Mapping
    docker: Mapping  # Ray's docker keys with Ray's defaults; {} when no node runs in a container
    node_types: Mapping[str, NodeTypeConfig]
    head_node_type: str
    file_mounts: Mapping[str, str]
    rsync_exclude: tuple[str, ...]
    rsync_filter: tuple[str, ...]
    initialization_commands: tuple[str, ...]
    setup_commands: tuple[str, ...]
    head_setup_commands: tuple[str, ...]
    worker_setup_commands: tuple[str, ...]
    head_start_commands: tuple[str, ...]
    worker_start_commands: tuple[str, ...]
    source_path: Optional[str]
    notes: tuple[str, ...] = field(default=(), compare=False)  # for the user: Ray keys read as ours
    raw: Mapping = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "raw", _to_raw(self))

    @property
    def idle_timeout_s(self) -> float:
        return self.idle_timeout_minutes * 60

    def worker_types(self) -> dict[str, NodeTypeConfig]:
        """The node types workers can be launched as: all but the head's."""
        return {n: t for n, t in self.node_types.items() if n != self.head_node_type}


def load_config(path: str) -> ClusterConfig:
    """Read, validate and complete the cluster YAML at `path`."""
    data = _parse_yaml(_read(path), path)
    return _build(data, path, os.path.abspath(path))


def config_from_dict(data: dict, source: str = "<config>") -> ClusterConfig:
    """Same as load_config for a parsed config; relative file_mounts resolve against the cwd."""
    return _build(data, source, None)


def bootstrap_yaml(config: ClusterConfig) -> str:
    """The config as the head re-loads it, rewritten as Ray does so the head works on its own.

    File mounts point at the copies already synced to the head, the SSH key at BOOTSTRAP_KEY_PATH,
    and the proxy command is dropped: the head is inside the network it would tunnel into.
    """
    raw = copy.deepcopy(config.raw)
    raw["file_mounts"] = {remote: remote for remote in raw["file_mounts"]}
    raw["auth"].pop("ssh_proxy_command", None)
    if "ssh_private_key" in raw["auth"]:
        raw["auth"]["ssh_private_key"] = BOOTSTRAP_KEY_PATH
    return yaml.safe_dump(raw, sort_keys=False)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(path, (), "no such file")
    except UnicodeDecodeError:
        fail(path, (), "cannot read: not UTF-8 text")
    except OSError as e:
        fail(path, (), f"cannot read: {e.strerror}")


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys, which PyYAML would silently resolve to the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                message = f"duplicate key {key!r}"
                raise yaml.constructor.ConstructorError(None, None, message, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        fail(source, (), f"{where}invalid YAML: {e.problem or e.context}")
    except yaml.reader.ReaderError as e:  # a forbidden character, reported by offset
        before = text[: e.position]
        where = f"line {before.count(chr(10)) + 1}, column {len(before) - before.rfind(chr(10))}"
        fail(source, (), f"{where}: invalid YAML: {e.reason}: {chr(e.character)!r}")


def _build(data: Any, source: str, source_path: Optional[str]) -> ClusterConfig:
    if not isinstance(data, dict):
        fail(source, (), "expected a mapping of config keys at the top level")
    check_keys(data, [], source)
    translated = ray_config.translate(data, lambda path, message: fail(source, path, message))
    data = translated.data
    validate(data, source)
    merged = _merge_defaults(data)
    _fill_from_cloud_profiles(merged["provider"], source)
    if translated.default_min_workers is not None:
        for name, spec in merged["available_node_types"].items():
            if name != merged.get("head_node_type"):
                spec["min_workers"] = translated.default_min_workers
    _check_ssh_auth(merged["provider"]["type"], merged["auth"], source)
    node_types = _node_types(merged, source)
    _check_worker_counts(int(merged["max_workers"]), node_types, merged["head_node_type"], source)
    base_dir = Path(source_path).parent if source_path else Path.cwd()
    return ClusterConfig(
        cluster_name=merged["cluster_name"],
        max_workers=int(merged["max_workers"]),
        upscaling_speed=float(merged["upscaling_speed"]),
        idle_timeout_minutes=float(merged["idle_timeout_minutes"]),
        autoscaler_update_interval_s=float(merged["autoscaler_update_interval_s"]),
        install_timeout_minutes=float(merged["install_timeout_minutes"]),
        join_timeout_minutes=float(merged["join_timeout_minutes"]),
        drain_timeout_minutes=float(merged["drain_timeout_minutes"]),
        replace_outdated_fraction=float(merged["replace_outdated_fraction"]),
        gcs_storage=merged["gcs_storage"],
        provider=merged["provider"],
        auth=merged["auth"],
        docker=_docker(merged, source),
        node_types=node_types,
        head_node_type=merged["head_node_type"],
        file_mounts=_resolve_mounts(merged["file_mounts"], base_dir, source),
        **{key: tuple(merged[key]) for key in ("rsync_exclude", "rsync_filter", *COMMAND_KEYS)},
        source_path=source_path,
        notes=tuple(translated.notes),
    )


@cache
def _defaults(provider_type: str) -> dict:
    return yaml.safe_load((_PACKAGE_DIR / "defaults" / f"{provider_type}.yaml").read_text())


def _merge_defaults(data: dict) -> dict:
    """The user's config over the provider's defaults; user node types replace the default ones
    (the default head_node_type stays when the user's types include it, as in Ray)."""
    defaults = copy.deepcopy(_defaults(data["provider"]["type"]))
    if "available_node_types" in data:
        defaults.pop("available_node_types", None)
        if defaults.get("head_node_type") not in (data["available_node_types"] or {}):
            defaults.pop("head_node_type", None)
    return _deep_merge(defaults, data)


def _deep_merge(base: dict, over: Mapping) -> dict:
    """Dicts merge key by key; lists and scalars of `over` replace those of `base`."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _node_types(merged: dict, source: str) -> dict[str, NodeTypeConfig]:
    types, head = merged["available_node_types"], merged.get("head_node_type")
    provider_type = merged["provider"]["type"]
    if not types:
        has_none = not _defaults(provider_type)["available_node_types"]
        note = f" (provider type {provider_type!r} has no default node types)" if has_none else ""
        fail(source, ["available_node_types"], f"expected at least one node type, got none{note}")
    expected = f"expected the head's node type, one of: {', '.join(map(str, types))}"
    if head is None:
        fail(source, ["head_node_type"], f"missing; {expected}")
    if head not in types:
        fail(source, ["head_node_type"],
              f"{head!r} is not a node type; {expected}{did_you_mean(head, types)}")
    return {name: _node_type(name, spec, name == head, merged, provider_type, source)
            for name, spec in types.items()}


def _node_type(name, spec, is_head, merged, provider_type, source) -> NodeTypeConfig:
    """Fill a node type's defaults; the head's min/max_workers default to 0 and are never used."""
    resources = spec.get("resources", _DEFAULT_RESOURCES.get(provider_type, {}))
    setup_commands = spec.get("worker_setup_commands", merged["worker_setup_commands"])
    for resource, amount in resources.items():
        _check_resource(["available_node_types", name, "resources", resource], amount, source)
    return NodeTypeConfig(
        name=name,
        node_config=spec.get("node_config", {}),
        resources=dict(resources),
        min_workers=int(spec.get("min_workers", 0)),
        max_workers=int(spec.get("max_workers", 0 if is_head else merged["max_workers"])),
        worker_setup_commands=tuple(setup_commands),
        docker=dict(spec.get("docker", {})),
        fallback_to_on_demand_after=spec.get("fallback_to_on_demand_after"),
    )


def _fill_from_cloud_profiles(provider: dict, source: str) -> None:
    """An Azure subscription or GCP project left out comes from the cloud's CLI, as in Ray (and
    is written into the head's copy of the config, which has no CLI profile to read)."""
    for cloud, key, found, hint in (
            ("azure", "subscription_id", cloud_profiles.azure_subscription,
             "the Azure CLI has no default subscription (`az login`)"),
            ("gcp", "project_id", cloud_profiles.gcp_project,
             "gcloud has no default project (`gcloud config set project ID`)")):
        if provider["type"] == cloud and not provider.get(key):
            provider[key] = found() or fail(source, ["provider", key], f"missing, and {hint}")


def _docker(merged: dict, source: str) -> dict:
    """The docker section when some node type has an image (ray_config dropped it otherwise).
    Refused where nodes are not machines of their own: `local` nodes share this machine's runtime,
    and the ssh provider keeps the cluster's state in the hosts' home, which the head's autoscaler
    would not see from inside its container."""
    sections = [(["docker"], merged.get("docker", {}))] + [
        (["available_node_types", name, "docker"], spec.get("docker", {}))
        for name, spec in merged["available_node_types"].items()]
    images = [path + [key] for path, section in sections
              for key in ("image", "head_image", "worker_image") if section.get(key)]
    if not images:
        return {}
    kind = merged["provider"]["type"]
    if kind in ("local", "ssh"):
        fail(source, images[0], f"not supported with provider type {kind!r}: nodes run in "
             "containers on aws, gcp and azure (see docs/config-reference.md#docker)")
    return {**docker_runner.DEFAULTS, **merged.get("docker", {})}


def _check_ssh_auth(provider_type: str, auth: Mapping, source: str) -> None:
    """Hosts the user already has can only be reached with a login the user gives."""
    if provider_type != "ssh":
        return
    for key, expected in (("ssh_user", "the login user on your hosts, e.g. ubuntu"),
                          ("ssh_private_key", "the path of the private key that logs in to them")):
        if not auth.get(key):
            fail(source, ["auth", key], f"missing; provider type 'ssh' requires it ({expected})")


def _check_resource(path: list, amount: float, source: str) -> None:
    if not math.isfinite(amount):
        fail(source, path, f"expected a finite non-negative number, got {amount!r}")
    if path[-1] in _COUNTED_RESOURCES and amount != int(amount):
        fail(source, path, f"expected a whole number ({path[-1]} counts whole units), "
              f"got {amount!r}")


def _check_worker_counts(max_workers: int, node_types: Mapping, head: str, source: str) -> None:
    """min_workers must be reachable; a type's max_workers above the global cap is fine."""
    workers = [t for name, t in node_types.items() if name != head]
    for t in workers:
        if t.min_workers > t.max_workers:
            fail(source, ["available_node_types", t.name, "min_workers"],
                  f"{t.min_workers} is more than this type's max_workers {t.max_workers}; "
                  f"expected at most {t.max_workers}")
    total = sum(t.min_workers for t in workers)
    if total > max_workers:
        parts = ", ".join(f"{t.name}={t.min_workers}" for t in workers if t.min_workers)
        fail(source, ["max_workers"], f"{max_workers} is less than the sum of the worker types' "
              f"min_workers ({total}: {parts}); expected max_workers >= {total}")


def _resolve_mounts(mounts: Mapping[str, str], base_dir: Path, source: str) -> dict[str, str]:
    """Local paths made absolute (relative ones against the YAML's directory); each must exist."""
    resolved = {}
    for remote, local in mounts.items():
        path = os.path.normpath(base_dir / os.path.expanduser(local))
        if not os.path.exists(path):
            fail(source, ["file_mounts", remote],
                  f"local path {local!r} does not exist (looked for {path})")
        resolved[remote] = path
    return resolved


def _to_raw(config: ClusterConfig) -> dict:
    """The full config as plain, JSON-able dicts and lists, keys in field order."""
    raw = {}
    for f in fields(config):
        if f.name == "node_types":
            raw["available_node_types"] = {  # an empty docker section is left out, as below,
                name: {key: value for key, value in vars(t).items()  # and an unset fallback
                       if key != "name" and (key != "docker" or value) and value is not None}
                for name, t in config.node_types.items()
            }
        elif f.init and f.name not in ("source_path", "notes"):
            raw[f.name] = getattr(config, f.name)
    if not config.docker:
        del raw["docker"]  # no node runs in a container: left out, as when read
    return _plain(raw)


def _plain(value: Any) -> Any:
    """A deep copy with every mapping a dict and every sequence a list."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
