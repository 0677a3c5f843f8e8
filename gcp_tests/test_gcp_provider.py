"""The gcp provider with the real google-cloud-compute SDK against the fake Compute Engine server:
bootstrap (SSH key, firewall rules, head service account, zones, GPU resources), labels, batched
inserts and deletes, spot, the stopped-node cache, zone failover on capacity errors, quota and
the other error classes (injected in the fake, which Compute Engine's own checks also run in)."""

from __future__ import annotations

import os
import stat

import pytest

from gcp_tests.conftest import REGION
from gcp_tests.fake_gce import PROJECT
from launcher import tags as T
from tests.harness.autoscaling import launch_and_react
from launcher.config import config_from_dict
from launcher.errors import (AuthError, CapacityError, InvalidNodeConfig, QuotaError,
                             TransientError)
from launcher.providers import make_provider
from launcher.providers.gcp import decode_label, encode_label

GIB = 1024 ** 3
L4 = {"machineType": "g2-standard-8"}
T4 = {"machineType": "n1-standard-8",
      "guestAccelerators": [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 2}]}


def make_config(fake, *, provider=None, auth=None, **types):
    types = {"head": {"node_config": {"machineType": "n2-standard-4"}},
             "gpu": {"node_config": dict(L4), "max_workers": 4}, **types}
    return config_from_dict({
        "cluster_name": "t", "max_workers": 4, "head_node_type": "head", "auth": auth or {},
        "provider": {"type": "gcp", "project_id": PROJECT, "region": REGION,
                     "api_endpoint": fake.url, **(provider or {})},
        "available_node_types": types})


def bootstrapped(fake, **kwargs):
    config = make_config(fake, **kwargs)
    provider = make_provider(config.provider, config.cluster_name, config.auth)
    provider.gce.sleep = lambda s: None
    return provider.bootstrap(config), provider


def worker_tags(kind=T.KIND_WORKER):
    return {T.TAG_NODE_KIND: kind, T.TAG_NODE_STATUS: "requested", T.TAG_LAUNCH_HASH: "h1"}


def launch(provider, config, node_type="gpu", count=1, kind=T.KIND_WORKER, **node_config):
    spec = {**config.node_types[node_type].node_config, **node_config}
    return provider.create(node_type, spec, worker_tags(kind), count)


def inserts(fake) -> list[str]:
    """The zone of each instances.insert call, in order."""
    return [path.split("/")[1] for method, path in fake.calls
            if method == "POST" and path.endswith("/instances")]


def test_bootstrap_creates_key_and_firewall_and_fills_node_configs(fake):
    config, _ = bootstrapped(fake)
    key_path = config.auth["ssh_private_key"]
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert open(key_path).read().startswith("-----BEGIN OPENSSH PRIVATE KEY")
    head, gpu = config.node_types["head"].node_config, config.node_types["gpu"].node_config
    ssh_keys = {i["key"]: i["value"] for i in head["metadata"]["items"]}["ssh-keys"]
    assert ssh_keys.startswith("ubuntu:ssh-ed25519 ")
    assert head["serviceAccounts"] == [{"email": "default", "scopes": [
        "https://www.googleapis.com/auth/cloud-platform"]}]
    assert "serviceAccounts" not in gpu
    assert head["zones"] == [f"{REGION}-{z}" for z in "abcf"]
    assert gpu["zones"] == [f"{REGION}-{z}" for z in "abc"]  # no L4 in us-central1-f
    assert gpu["scheduling"] == {"onHostMaintenance": "TERMINATE"}  # GPUs cannot migrate
    assert head["tags"]["items"] == ["cluster-launcher-t"]
    ssh, internal = fake.firewalls["cluster-launcher-t-ssh"], fake.firewalls[
        "cluster-launcher-t-internal"]
    assert ssh["sourceRanges"] == ["0.0.0.0/0"] and ssh["allowed"][0]["ports"] == ["22"]
    assert internal["sourceTags"] == internal["targetTags"] == ["cluster-launcher-t"]
    firewall_inserts = [c for c in fake.calls if c == ("POST", "global/firewalls")]
    again, _ = bootstrapped(fake)  # reused, not created twice: the same node configs
    assert again.node_types["gpu"].node_config == gpu
    assert [c for c in fake.calls if c == ("POST", "global/firewalls")] == firewall_inserts


@pytest.mark.parametrize("node_config,gpus,accelerator,cpus", [
    (L4, 1, "L4", 8), ({"machineType": "g2-standard-24"}, 2, "L4", 24),
    ({"machineType": "a2-highgpu-1g"}, 1, "A100", 12),
    ({"machineType": "a2-ultragpu-1g"}, 1, "A100-80G", 12),
    ({"machineType": "a3-highgpu-8g"}, 8, "H100", 208), (T4, 2, "T4", 8)],
    ids=["g2", "g2-2gpu", "a2", "a2-ultra", "a3", "n1-t4"])
def test_gpu_resources_detected(fake, node_config, gpus, accelerator, cpus):
    config, _ = bootstrapped(fake, head={"node_config": node_config})
    resources = config.node_types["head"].resources
    assert resources["GPU"] == gpus and resources[f"accelerator_type:{accelerator}"] == 1
    assert resources["CPU"] == cpus


def test_cpu_resources_and_yaml_override(fake):
    config, _ = bootstrapped(fake, head={"node_config": {"machineType": "n2-standard-4"}},
                             gpu={"node_config": L4, "resources": {"GPU": 0, "custom": 2}})
    head, gpu = config.node_types["head"].resources, config.node_types["gpu"].resources
    assert head == {"CPU": 4, "memory": int(16 * GIB * 0.7)}
    assert gpu["GPU"] == 0 and gpu["custom"] == 2 and gpu["CPU"] == 8


@pytest.mark.parametrize("text", ["up-to-date", "gpu_A100", "GPU.big v2", "ü-node", "", "__x_"],
                         ids=["plain", "underscore-upper", "dot-space", "unicode", "empty",
                              "underscores"])
def test_labels_encode_reversibly_within_gcp_rules(text):
    label = encode_label(text)
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789_-" for c in label) and len(label) <= 63
    assert decode_label(label) == text


def test_too_long_tag_is_one_line():
    with pytest.raises(InvalidNodeConfig, match="too long for a GCP label"):
        encode_label("X" * 40)


def test_create_batches_labels_and_lists_by_cluster(fake):
    config, provider = bootstrapped(fake, GPU_Big={"node_config": L4})
    calls = len(fake.calls)
    ids = launch(provider, config, "GPU_Big", count=3)
    batch = [method for method, path in fake.calls[calls:] if "/operations/" in path
             or path.endswith("/instances")]
    assert batch == ["POST"] * 6  # three inserts sent, then three operations awaited
    assert [path.endswith("/instances") for _, path in fake.calls[calls:calls + 3]] == [True] * 3
    assert provider.nodes({}) == sorted(ids)
    assert provider.nodes({T.TAG_NODE_TYPE: "GPU_Big"}) == sorted(ids)
    assert provider.nodes({T.TAG_NODE_KIND: T.KIND_HEAD}) == []
    tags = provider.node_tags(ids[0])
    assert tags[T.TAG_CLUSTER_NAME] == "t" and tags[T.TAG_NODE_TYPE] == "GPU_Big"
    assert fake.instances[ids[0]]["labels"]["node-type"] == "_47_50_55___42ig"
    provider.set_tags(ids[0], {T.TAG_NODE_STATUS: "running"})
    fresh = make_provider(config.provider, "t", config.auth)  # state lives in the labels
    assert fresh.node_tags(ids[0])[T.TAG_NODE_STATUS] == "running"
    assert make_provider(config.provider, "other", {}).nodes({}) == []
    instance = fake.instances[ids[0]]
    assert instance["machineType"].endswith(f"zones/{REGION}-a/machineTypes/g2-standard-8")
    assert fresh.internal_ip(ids[0]) == instance["networkInterfaces"][0]["networkIP"]
    assert fresh.internal_ip(ids[0]).startswith("127.101.")
    nat = instance["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
    assert fresh.external_ip(ids[0]) == nat
    calls = len(fake.calls)
    provider.terminate(ids + ["cluster-launcher-t-worker-00000000"])  # unknown ids are ignored
    removals = [method for method, path in fake.calls[calls:] if "/instances/" in path
                or "/operations/" in path]
    assert removals == ["DELETE"] * 3 + ["POST"] * 3  # every delete sent, then awaited
    assert provider.nodes({}) == [] and fake.instances == {}


def test_set_tags_retries_when_labels_changed_meanwhile(fake):
    config, provider = bootstrapped(fake)
    [node] = launch(provider, config)
    other = make_provider(config.provider, "t", config.auth)
    original = other.gce.call

    def racing(client, method, what, **kwargs):  # another process relabels between get and set
        if method == "set_labels_unary" and not racing.done:
            racing.done = True
            fake.instances[node]["labelFingerprint"] = "changed"
        return original(client, method, what, **kwargs)

    racing.done = False
    other.gce.call = racing
    other.set_tags(node, {T.TAG_NODE_STATUS: "installing"})
    assert provider.node_tags(node)[T.TAG_NODE_STATUS] == "installing"
    assert ("POST", f"zones/{REGION}-a/instances/{node}/setLabels") in fake.calls


def test_spot_is_passed_through_and_always_deleted(fake):
    config, provider = bootstrapped(fake, provider={"cache_stopped_nodes": True},
                                    gpu={"node_config": {**L4, "scheduling": [
                                        {"provisioningModel": "SPOT"}]}})  # Ray's list form
    launch(provider, config, "head", kind=T.KIND_HEAD)
    ids = launch(provider, config, count=2)
    scheduling = fake.instances[ids[0]]["scheduling"]
    assert scheduling == {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                          "onHostMaintenance": "TERMINATE", "automaticRestart": False}
    provider.terminate(ids)
    assert not set(ids) & set(fake.instances)


@pytest.mark.parametrize("how", ["deleted", "stopped"])
def test_a_preempted_spot_vm_is_reported_and_an_on_demand_one_is_not(fake, how):
    config, provider = bootstrapped(fake)
    [standard] = launch(provider, config)
    [spot] = launch(provider, config, scheduling={"provisioningModel": "SPOT"})
    assert provider.nodes({}) == sorted([standard, spot])
    assert provider.preempted([standard, spot]) == {}
    if how == "deleted":  # instanceTerminationAction DELETE
        del fake.instances[spot]
    else:
        fake.instances[spot]["status"] = "TERMINATED"
    assert provider.preempted([standard, spot]) == {
        spot: f"preempted by Compute Engine (spot VM {how}{' on preemption' * (how == 'deleted')})"}
    spot_config = {**config.node_types["gpu"].node_config,
                   "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                                  "onHostMaintenance": "TERMINATE"}}
    assert provider.on_demand(spot_config)["scheduling"] == {
        "provisioningModel": "STANDARD", "onHostMaintenance": "TERMINATE", "automaticRestart": True}
    assert provider.on_demand(config.node_types["gpu"].node_config) is None


def test_cache_stopped_nodes_stops_on_demand_and_restarts_them(fake):
    config, provider = bootstrapped(fake, provider={"cache_stopped_nodes": True})
    [head] = launch(provider, config, "head", kind=T.KIND_HEAD)
    ids = launch(provider, config, count=2)
    provider.set_tags(ids[0], {T.TAG_START_HASH: "s1", T.TAG_SETUP_HASH: "x1"})
    provider.terminate(ids)
    assert {fake.instances[i]["status"] for i in ids} == {"TERMINATED"}
    assert provider.nodes({}) == [head]
    again = launch(provider, config, count=3)
    assert set(ids) < set(again) and len(again) == 3
    restarted = make_provider(config.provider, "t", config.auth).node_tags(ids[0])
    assert restarted[T.TAG_SETUP_HASH] == "x1" and T.TAG_START_HASH not in restarted
    provider.terminate(again[:1])  # a cached node again, then `cluster down`: head first
    provider.terminate([head])
    provider.terminate(provider.nodes({T.TAG_NODE_KIND: T.KIND_WORKER}))
    assert fake.instances == {}


def test_capacity_errors_fail_over_to_the_next_zone(fake):
    config, provider = bootstrapped(fake)
    fake.inject("ZONE_RESOURCE_POOL_EXHAUSTED", zones={f"{REGION}-a"})
    fake.inject("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", zones={f"{REGION}-b"})
    ids = launch(provider, config, count=2)
    assert len(ids) == 2 and inserts(fake) == [f"{REGION}-{z}" for z in "aabbcc"]
    assert {fake.instances[i]["zone"].rsplit("/", 1)[-1] for i in ids} == {f"{REGION}-c"}


def test_a_partly_exhausted_zone_keeps_what_it_created(fake):
    config, provider = bootstrapped(fake)
    fake.inject("UNSUPPORTED_OPERATION", zones={f"{REGION}-a"}, times=1)
    ids = launch(provider, config, count=3)
    zones = sorted(fake.instances[i]["zone"].rsplit("/", 1)[-1] for i in ids)
    assert zones == [f"{REGION}-a", f"{REGION}-a", f"{REGION}-b"]


def test_no_zone_with_capacity_is_a_capacity_error_and_the_type_is_backed_off(fake):
    config, provider = bootstrapped(fake)
    fake.inject("ZONE_RESOURCE_POOL_EXHAUSTED")
    with pytest.raises(CapacityError) as raised:
        launch(provider, config)
    assert "in any of 3 zone(s)" in str(raised.value) and "\n" not in str(raised.value)
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in str(raised.value) and fake.instances == {}
    kind, backoff = launch_and_react(config, provider, "gpu")
    assert kind == "capacity" and "ZONE_RESOURCE_POOL_EXHAUSTED" in backoff.message
    assert backoff.until == 130.0  # the first of an exponential series


@pytest.mark.parametrize("code,status,error", [
    ("ZONE_RESOURCE_POOL_EXHAUSTED", None, CapacityError),
    ("UNSUPPORTED_OPERATION", None, CapacityError),
    ("QUOTA_EXCEEDED", None, QuotaError), ("quotaExceeded", 403, QuotaError),
    ("rateLimitExceeded", 403, TransientError), ("forbidden", 403, AuthError),
    ("invalid", 400, InvalidNodeConfig)],
    ids=["exhausted", "unsupported", "quota-operation", "quota-http", "rate-limit", "forbidden",
         "invalid"])
def test_errors_are_classified_in_one_line(fake, code, status, error):
    config, provider = bootstrapped(fake)
    fake.inject(code, status=status)
    with pytest.raises(error) as raised:
        launch(provider, config)
    assert code in str(raised.value) and "\n" not in str(raised.value)
    assert fake.instances == {}
    if error is QuotaError:  # quotas are regional: no other zone is tried
        assert inserts(fake) == [f"{REGION}-a"]


def test_throttling_is_retried_with_backoff(fake):
    config, provider = bootstrapped(fake)
    waits = []
    provider.gce.sleep = waits.append
    fake.inject("rateLimitExceeded", status=403, times=2)
    assert len(launch(provider, config)) == 1
    assert waits == [0.5, 1.0]


@pytest.mark.parametrize("internal,on_head,address", [
    (False, False, "natIP"), (True, False, "networkIP"), (False, True, "networkIP")],
    ids=["external", "use_internal_ips", "on-the-head"])
def test_command_runner_reaches_the_configured_address(fake, monkeypatch, internal, on_head,
                                                       address):
    if on_head:
        monkeypatch.setenv("CLUSTER_NODE_ID", "head")  # set for processes the head starts
    config, provider = bootstrapped(fake, provider={"use_internal_ips": internal})
    [node] = launch(provider, config)
    interface = fake.instances[node]["networkInterfaces"][0]
    expected = interface.get("networkIP") if address == "networkIP" else \
        interface["accessConfigs"][0]["natIP"]
    runner = provider.command_runner(node)
    assert runner.target.host == expected
    assert runner.target.key_path == config.auth["ssh_private_key"]


def test_user_key_and_node_config_pass_through(fake, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = tmp_path / "id_ed25519"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    node_config = {**T4, "labels": {"team": "ml"},
                   "metadata": {"items": [{"key": "install-nvidia-driver", "value": "True"}]}}
    config, provider = bootstrapped(
        fake, auth={"ssh_private_key": str(key), "ssh_user": "me"},
        provider={"availability_zone": f"{REGION}-c,{REGION}-b"}, gpu={"node_config": node_config})
    assert config.auth["ssh_private_key"] == str(key)
    assert not os.path.exists(tmp_path / "home" / ".cluster-launcher")  # no key generated
    [node] = launch(provider, config)
    instance = fake.instances[node]
    assert instance["zone"].endswith(f"{REGION}-c")  # the configured zone order
    assert instance["labels"]["team"] == "ml" and provider.node_tags(node)["team"] == "ml"
    assert instance["guestAccelerators"][0]["acceleratorType"] == \
        f"projects/{PROJECT}/zones/{REGION}-c/acceleratorTypes/nvidia-tesla-t4"
    metadata = {i["key"]: i["value"] for i in instance["metadata"]["items"]}
    assert metadata["install-nvidia-driver"] == "True"
    assert metadata["ssh-keys"].startswith("me:ssh-ed25519 ")


HEAD_PROCESS = """
import ipaddress, socket, sys, time
resolve = socket.getaddrinfo

def loopback_only(host, *args, **kwargs):
    try:
        allowed = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        allowed = False
    if not allowed:
        print("REFUSED", host, flush=True)
        raise socket.gaierror(socket.EAI_NONAME, host)
    return resolve(host, *args, **kwargs)

socket.getaddrinfo = loopback_only
from launcher.providers import make_provider
provider = make_provider({"type": "gcp", "project_id": sys.argv[1], "region": sys.argv[2],
                          "api_endpoint": sys.argv[3]}, "t")
print("NODES", provider.nodes({}))
time.sleep(1)  # a background lookup google-auth might start would run now
"""


def test_head_gets_credentials_from_the_metadata_server(fake, tmp_path):
    """As the head's autoscaler on a VM: no key file, a token from the metadata server; and
    google-auth looks nothing up outside this machine (a fresh process, to read the env anew)."""
    import subprocess
    import sys

    config, provider = bootstrapped(fake)
    [node] = launch(provider, config)
    host = fake.url.removeprefix("http://")
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(GCE_METADATA_HOST=host, GCE_METADATA_IP=host, PYTHONPATH=os.getcwd())
    result = subprocess.run([sys.executable, "-c", HEAD_PROCESS, PROJECT, REGION, fake.url],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"NODES ['{node}']" in result.stdout and "REFUSED" not in result.stdout
