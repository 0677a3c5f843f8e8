"""Tests for launcher.config: bad configs give one line naming the key; good ones load complete."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from launcher.config import (
    BOOTSTRAP_KEY_PATH,
    ClusterConfig,
    bootstrap_yaml,
    config_from_dict,
    load_config,
)
from launcher.errors import ConfigError


@pytest.fixture(autouse=True)
def no_cloud_cli_profiles(tmp_path, monkeypatch):
    """No Azure CLI or gcloud default here, whatever the machine has."""
    for key in ("AZURE_SUBSCRIPTION_ID", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "no-azure"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "cluster-configs" / "local.yaml"
DEFAULTS = REPO / "launcher" / "defaults"
BASE = {"cluster_name": "test", "provider": {"type": "local"}}
TYPES = {"head": {}, "w": {"resources": {"CPU": 2}, "max_workers": 2}}
RAY_HEAD = "ray.head.default"  # Ray's own name: dots in a key get it quoted in key paths


def with_(**changes) -> dict:
    return {**BASE, **changes}


def with_types(**types) -> dict:
    return with_(available_node_types={**TYPES, **types}, head_node_type="head")


def write(directory: Path, data) -> Path:
    path = directory / "cluster.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "\n" not in message
    return message


# (id, config, key path, what the message must also say)
BAD = [
    ("typo-top-level", with_(idle_timout_minutes=1), "idle_timout_minutes",
     "unknown key; did you mean 'idle_timeout_minutes'?"),
    ("unknown-top-level", with_(gpu_drivers=True), "gpu_drivers",
     "unknown key; expected one of: cluster_name"),
    ("missing-cluster-name", {"provider": {"type": "local"}}, "cluster_name",
     "missing required key; expected a name of letters"),
    ("cluster-name-slash", with_(cluster_name="team/a"), "cluster_name",
     "expected a name of letters, digits, '.', '_' and '-'"),
    ("opposite-key-not-hinted", with_(min_worker=1), "min_worker",  # not "max_workers"
     "unknown key; expected one of:"),
    ("cluster-name-too-long", with_(cluster_name="a" * 64), "cluster_name",
     "at most 63 characters"),
    ("cluster-name-number", with_(cluster_name=7), "cluster_name", "got 7"),
    ("missing-provider", {"cluster_name": "test"}, "provider",
     "missing required key; expected a mapping with at least `type`"),
    ("missing-provider-type", with_(provider={}), "provider.type",
     "missing required key; expected one of 'local', 'ssh'"),
    ("unknown-provider-type", with_(provider={"type": "gce"}), "provider.type",
     "expected one of 'local', 'ssh', 'aws', 'gcp', 'azure', got 'gce'; did you mean 'gcp'?"),
    ("ssh-missing-key", with_(provider={"type": "ssh", "head_ip": "h", "worker_ips": []},
                              auth={"ssh_user": "ubuntu"}, available_node_types=TYPES,
                              head_node_type="head"),
     "auth.ssh_private_key", "provider type 'ssh' requires it"),
    ("ssh-missing-worker-ips", with_(provider={"type": "ssh", "head_ip": "10.0.0.1"}),
     "provider.worker_ips", "missing; provider type 'ssh' requires it"),
    ("ssh-worker-ip-number", with_(provider={"type": "ssh", "head_ip": "h", "worker_ips": [1]}),
     "provider.worker_ips[0]", "expected a string, got 1"),
    ("aws-missing-region", with_(provider={"type": "aws"}), "provider.region",
     "provider type 'aws' requires it"),
    ("gcp-missing-project", with_(provider={"type": "gcp", "region": "us-central1"}),
     "provider.project_id", "missing, and gcloud has no default project"),
    ("azure-missing-subscription", with_(provider={"type": "azure", "location": "westus",
                                                   "resource_group": "g"}),
     "provider.subscription_id", "missing, and the Azure CLI has no default subscription"),
    ("azure-missing-group", with_(provider={"type": "azure", "location": "westus",
                                            "subscription_id": "s"}),
     "provider.resource_group", "provider type 'azure' requires it"),
    ("ray-local-with-hosts-is-ssh", with_(provider={"type": "local", "head_ip": "10.0.0.1"}),
     "provider.worker_ips", "missing; provider type 'ssh' requires it"),
    ("max-workers-negative", with_(max_workers=-1), "max_workers",
     "expected a non-negative integer, got -1"),
    ("max-workers-string", with_(max_workers="two"), "max_workers",
     "expected a non-negative integer, got 'two'"),
    ("upscaling-speed-zero", with_(upscaling_speed=0), "upscaling_speed",
     "expected a positive number, got 0"),
    ("idle-timeout-negative", with_(idle_timeout_minutes=-5), "idle_timeout_minutes",
     "expected a non-negative number, got -5"),
    ("update-interval-zero", with_(autoscaler_update_interval_s=0), "autoscaler_update_interval_s",
     "expected a positive number, got 0"),
    ("gpu-negative", with_types(gpu={"resources": {"GPU": -1}}),
     "available_node_types.gpu.resources.GPU", "expected a non-negative number, got -1"),
    ("cpu-fraction", with_types(w={"resources": {"CPU": 1.5}}),
     "available_node_types.w.resources.CPU", "expected a whole number"),
    ("resource-infinite", with_types(w={"resources": {"memory": float("inf")}}),
     "available_node_types.w.resources.memory", "expected a finite non-negative number, got inf"),
    ("resources-not-mapping", with_types(w={"resources": 4}), "available_node_types.w.resources",
     "expected a mapping of resource name to number, got 4"),
    ("node-config-list", with_types(w={"node_config": ["m5.large"]}),
     "available_node_types.w.node_config", "expected a mapping, got ['m5.large']"),
    ("node-type-typo", with_types(w={"max_worker": 2}), "available_node_types.w.max_worker",
     "unknown key; did you mean 'max_workers'?"),
    ("node-type-min-over-max", with_types(w={"min_workers": 3, "max_workers": 2}),
     "available_node_types.w.min_workers", "3 is more than this type's max_workers 2"),
    ("min-workers-over-global", with_types(w={"min_workers": 2}, v={"min_workers": 2}) | {
        "max_workers": 3}, "max_workers", "expected max_workers >= 4"),
    ("head-type-unknown", with_(available_node_types=TYPES, head_node_type="hed"),
     "head_node_type",
     "'hed' is not a node type; expected the head's node type, one of: head, w; "
     "did you mean 'head'?"),
    ("head-type-missing", with_(available_node_types={"h": {}, "w": {}}), "head_node_type",
     "missing; expected the head's node type, one of: h, w"),
    ("no-node-types", with_(available_node_types={}), "available_node_types",
     "expected at least one node type, got none"),
    ("ssh-without-node-types", with_(provider={"type": "ssh", "head_ip": "10.0.0.1",
                                               "worker_ips": []}, auth={"ssh_user": "u",
                                                                        "ssh_private_key": "k"}),
     "available_node_types", "got none (provider type 'ssh' has no default node types)"),
    ("command-not-string", with_(setup_commands=["echo a", "echo b", 3]), "setup_commands[2]",
     "expected a string, got 3"),
    ("commands-not-list", with_(head_start_commands="cluster start"), "head_start_commands",
     "expected a list of strings, got 'cluster start'"),
    ("empty-value", with_(file_mounts=None), "file_mounts",
     "expected a mapping of remote path to local path, got an empty value"),
    ("mount-missing", with_(file_mounts={"/remote/path": "no-such-dir"}),
     'file_mounts."/remote/path"', "local path 'no-such-dir' does not exist"),
    ("dotted-type-name", with_(available_node_types={RAY_HEAD: {"resources": {"GPU": 0.5}}},
                               head_node_type=RAY_HEAD),
     f'available_node_types."{RAY_HEAD}".resources.GPU', "expected a whole number (GPU counts"),
    ("auth-unknown", with_(auth={"password": "x"}), "auth.password",
     "unknown key; expected one of: ssh_user"),
    ("auth-user-number", with_(auth={"ssh_user": 1000}), "auth.ssh_user", "expected a string"),
    ("number-key", with_(available_node_types={"head": {}, 2: {}}, head_node_type="head"),
     "available_node_types.2", "expected a string key, got 2; quote it"),
    ("rsync-exclude-item", with_(rsync_exclude=[".git", None]), "rsync_exclude[1]",
     "expected a string, got an empty value"),
]


@pytest.mark.parametrize("config, key_path, hint", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_names_the_key(tmp_path, config, key_path, hint):
    path = write(tmp_path, config)
    message = load_error(path)
    assert message.startswith(f"{path}: {key_path}: "), message
    assert hint in message


BAD_FILES = [
    ("syntax", "cluster_name: [test\n", "line 2, column 1: invalid YAML: "),
    ("tab-indent", "provider:\n\ttype: local\n", "line 2, column 1: invalid YAML: "),
    ("duplicate-key", "cluster_name: a\nmax_workers: 1\nmax_workers: 2\n",
     "line 3, column 1: invalid YAML: duplicate key 'max_workers'"),
    ("control-character", "cluster_name: t\nmax_workers: 1\x01\n",
     "line 2, column 15: invalid YAML: special characters are not allowed: '\\x01'"),
    ("top-level-list", "- cluster_name: a\n", "expected a mapping of config keys at the top level"),
    ("empty-file", "", "expected a mapping of config keys at the top level"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in BAD_FILES],
                         ids=[c[0] for c in BAD_FILES])
def test_bad_file(tmp_path, text, expected):
    path = write(tmp_path, text)
    assert load_error(path).startswith(f"{path}: {expected}")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert load_error(path) == f"{path}: no such file"


def test_dict_errors_name_the_source():
    with pytest.raises(ConfigError, match=r"^<config>: max_workers: expected"):
        config_from_dict(with_(max_workers=-1))
    with pytest.raises(ConfigError, match="^head.yaml: expected a mapping"):
        config_from_dict(["not", "a", "mapping"], source="head.yaml")


def test_demo_config_loads():
    config = load_config(str(DEMO))
    assert config.cluster_name == "local-demo"
    assert config.source_path == str(DEMO)
    assert config.max_workers == 3
    assert config.idle_timeout_s == 15
    assert config.autoscaler_update_interval_s == 2
    assert config.head_node_type == "head"
    assert dict(config.node_types["head"].resources) == {"CPU": 1}
    (worker,) = config.worker_types().values()
    assert (worker.name, dict(worker.resources), worker.min_workers, worker.max_workers) == (
        "cpu-2", {"CPU": 2}, 0, 3)


def test_defaults_are_merged():
    config = config_from_dict(dict(BASE))
    assert config.source_path is None
    assert (config.max_workers, config.upscaling_speed, config.idle_timeout_minutes) == (2, 1.0, 5)
    assert config.autoscaler_update_interval_s == 5
    assert set(config.node_types) == {"head", "worker"}
    assert config.worker_types()["worker"].max_workers == 2
    assert config.head_start_commands[-1].startswith("cluster start --head")
    assert config.setup_commands == () and config.file_mounts == {}


def test_user_node_types_replace_the_defaults():
    config = config_from_dict(with_(available_node_types={"big": {}}, head_node_type="big"))
    assert list(config.node_types) == ["big"] and config.worker_types() == {}


def test_user_values_override_and_dicts_merge():
    config = config_from_dict(with_(provider={"type": "local", "state_dir": "/tmp/x"},
                                    head_start_commands=["echo only"]))
    assert config.provider == {"type": "local", "state_dir": "/tmp/x"}
    assert config.head_start_commands == ("echo only",)
    assert config.worker_start_commands[0] == "cluster stop"


def test_node_type_defaults():
    config = config_from_dict(with_(
        max_workers=7, worker_setup_commands=["echo global"],
        available_node_types={"h": {"min_workers": 9}, "a": {}, "b": {
            "worker_setup_commands": ["echo b"], "max_workers": 50, "resources": {}}},
        head_node_type="h"))
    a, b = config.node_types["a"], config.node_types["b"]
    assert (dict(a.resources), a.min_workers, a.max_workers, dict(a.node_config)) == (
        {"CPU": 1}, 0, 7, {})
    assert a.worker_setup_commands == ("echo global",)
    assert b.worker_setup_commands == ("echo b",)
    assert b.max_workers == 50  # above the global cap is allowed: the global cap wins
    assert dict(b.resources) == {"CPU": 1}  # `resources: {}` means detect, as in Ray
    assert config.node_types["h"].min_workers == 9  # the head type's counts are ignored


def test_default_node_types_inherit_global_worker_setup_commands():
    config = config_from_dict(with_(worker_setup_commands=["pip install x"]))
    assert config.node_types["worker"].worker_setup_commands == ("pip install x",)


def test_file_mounts_resolve_against_the_yaml_directory(tmp_path, monkeypatch):
    (tmp_path / "conf" / "data").mkdir(parents=True)
    path = write(tmp_path / "conf", with_(file_mounts={"~/data": "data", "/abs": str(tmp_path)}))
    monkeypatch.chdir(tmp_path)
    config = load_config(str(path))
    assert config.file_mounts == {"~/data": str(tmp_path / "conf" / "data"), "/abs": str(tmp_path)}


def test_file_mounts_from_a_dict_resolve_against_cwd(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    config = config_from_dict(with_(file_mounts={"~/data": "./data"}))
    assert config.file_mounts == {"~/data": str(tmp_path / "data")}


def test_input_dict_is_not_modified():
    data = with_(provider={"type": "local"})
    before = json.dumps(data)
    config_from_dict(data)
    assert json.dumps(data) == before


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = ("cluster_name: t\nprovider: {type: local}\navailable_node_types:\n"
            "  head: &base {resources: {CPU: 1}}\n  w: {<<: *base, max_workers: 1}\n"
            "head_node_type: head\n")
    assert load_config(str(write(tmp_path, text))).node_types["w"].max_workers == 1


def test_bootstrap_yaml_round_trips(tmp_path):
    config = load_config(str(DEMO))
    reloaded = load_config(str(write(tmp_path, bootstrap_yaml(config))))
    assert reloaded == dataclasses.replace(config, source_path=reloaded.source_path)
    assert reloaded.raw == config.raw


def test_a_spot_fallback_loads_travels_to_the_head_and_is_checked(tmp_path):
    types = {"head": {}, "spot": {"fallback_to_on_demand_after": 3}}
    config = config_from_dict(with_(available_node_types=types, head_node_type="head"))
    assert config.node_types["spot"].fallback_to_on_demand_after == 3
    assert config.node_types["head"].fallback_to_on_demand_after is None
    reloaded = load_config(str(write(tmp_path, bootstrap_yaml(config))))
    assert reloaded.node_types == config.node_types
    types["spot"]["fallback_to_on_demand_after"] = 0
    with pytest.raises(ConfigError, match="available_node_types.spot.fallback_to_on_demand_after"):
        config_from_dict(with_(available_node_types=types, head_node_type="head"))


def test_bootstrap_yaml_points_at_the_heads_copies(tmp_path):
    (tmp_path / "data").mkdir()
    remote = str(tmp_path / "on-head")
    config = config_from_dict(with_(
        file_mounts={remote: str(tmp_path / "data")},
        auth={"ssh_user": "u", "ssh_private_key": "~/.ssh/k", "ssh_proxy_command": "nc %h %p"}))
    head = yaml.safe_load(bootstrap_yaml(config))
    assert head["file_mounts"] == {remote: remote}
    assert head["auth"] == {"ssh_user": "u", "ssh_private_key": BOOTSTRAP_KEY_PATH}
    Path(remote).mkdir()  # synced by the updater before the head loads its config
    assert load_config(str(write(tmp_path, bootstrap_yaml(config)))).file_mounts == {remote: remote}


def test_raw_is_plain_and_follows_replace():
    config = config_from_dict(dict(BASE))
    assert json.loads(json.dumps(config.raw)) == config.raw
    bigger = dataclasses.replace(config, max_workers=10)
    assert bigger.raw["max_workers"] == 10 and config.raw["max_workers"] == 2


def test_schema_is_valid():
    schema = json.loads((REPO / "launcher" / "config_schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)


PROVIDER_KEYS = {
    "local": {},
    "ssh": {"head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2"]},
    "aws": {"region": "us-east-1"},
    "gcp": {"project_id": "p", "region": "us-central1"},
    "azure": {"location": "westus", "resource_group": "g", "subscription_id": "s"},
}


@pytest.mark.parametrize("provider_type", sorted(PROVIDER_KEYS))
def test_defaults_file_is_complete_and_loads(provider_type):
    defaults = yaml.safe_load((DEFAULTS / f"{provider_type}.yaml").read_text())
    schema = json.loads((REPO / "launcher" / "config_schema.json").read_text())
    assert set(schema["properties"]) - set(defaults) <= {"cluster_name", "head_node_type"}
    provider = {"type": provider_type, **PROVIDER_KEYS[provider_type]}
    auth = {"ssh_user": "u", "ssh_private_key": "~/k"} if provider_type == "ssh" else {}
    config = config_from_dict(with_(provider=provider, available_node_types={"h": {}},
                                    head_node_type="h", auth=auth))
    assert isinstance(config, ClusterConfig) and config.provider == provider


@pytest.mark.parametrize("path", sorted((REPO / "cluster-configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path):
    config = load_config(str(path))
    assert config.head_node_type in config.node_types
