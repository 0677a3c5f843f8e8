"""The azure provider against the fake Resource Manager over HTTP: bootstrap (key, resource group,
network, head identity, GPU resources), tags, spot, IPs, capacity failover across zones, typed
errors, throttling, deletion of everything a VM owns and the sweep of half-created leftovers."""

from __future__ import annotations

import os
import stat

import pytest

from azure_tests.conftest import GROUP, provider_section
from launcher import tags as T
from tests.harness.autoscaling import launch_and_react
from launcher.config import config_from_dict
from launcher.errors import CapacityError, ConfigError, QuotaError, TransientError
from launcher.providers import make_provider

GIB = 1024 ** 3
VM = "Microsoft.Compute/virtualMachines"
LEFTOVER_TYPES = (VM, "Microsoft.Network/networkInterfaces", "Microsoft.Network/publicIPAddresses",
                  "Microsoft.Compute/disks")


def node(size: str, **params) -> dict:
    return {"node_config": {"azure_arm_parameters": {"vmSize": size, **params}}}


def make_config(arm, *, provider=None, auth=None, **types):
    types = types or {"head": node("Standard_D4s_v5"),
                      "gpu": {**node("Standard_NC4as_T4_v3", priority="Spot"), "max_workers": 4}}
    return config_from_dict({"cluster_name": "t", "provider": provider_section(arm, **(provider or {})),
                             "auth": auth or {}, "available_node_types": types,
                             "head_node_type": "head", "max_workers": 4})


def bootstrapped(arm, **kwargs):
    config = make_config(arm, **kwargs)
    provider = make_provider(config.provider, config.cluster_name, config.auth)
    return provider.bootstrap(config), provider


def worker_tags(kind=T.KIND_WORKER):
    return {T.TAG_NODE_KIND: kind, T.TAG_NODE_STATUS: "requested", T.TAG_LAUNCH_HASH: "h1"}


def leftovers(arm) -> dict:
    return {kind: sorted(r["name"] for r in arm.of_type(kind)) for kind in LEFTOVER_TYPES
            if arm.of_type(kind)}


def vm_body(arm, name) -> dict:
    return next(r for r in arm.of_type(VM) if r["name"] == name)


def test_bootstrap_creates_group_network_key_identity_once(arm):
    config, _ = bootstrapped(arm)
    key_path = config.auth["ssh_private_key"]
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert open(key_path).read().startswith("-----BEGIN RSA PRIVATE KEY")
    [group] = arm.of_type("Microsoft.Resources/resourceGroups")
    assert group["name"] == GROUP and group["tags"] == {"cluster-name": "t"}
    [nsg] = arm.of_type("Microsoft.Network/networkSecurityGroups")
    [rule] = nsg["properties"]["securityRules"]
    assert rule["properties"]["destinationPortRange"] == "22" and nsg["tags"]["cluster-name"] == "t"
    [vnet] = arm.of_type("Microsoft.Network/virtualNetworks")
    subnet = vnet["properties"]["subnets"][0]
    assert subnet["properties"]["networkSecurityGroup"]["id"] == nsg["id"]
    [identity] = arm.of_type("Microsoft.ManagedIdentity/userAssignedIdentities")
    [role] = arm.of_type("Microsoft.Authorization/roleAssignments")
    assert role["properties"]["principalId"] == identity["properties"]["principalId"]
    assert role["properties"]["roleDefinitionId"].endswith("b24988ac-6180-42a0-ab88-20f7382dd24c")
    head, gpu = config.node_types["head"].node_config, config.node_types["gpu"].node_config
    assert head["identity_id"] == identity["id"] and "identity_id" not in gpu
    assert config.provider["managed_identity_client_id"] == identity["properties"]["clientId"]
    assert head["subnet_id"] == subnet["id"] and head["ssh_public_key"].startswith("ssh-rsa ")
    assert gpu["azure_arm_parameters"]["imagePublisher"] == "microsoft-dsvm"
    assert gpu["azure_arm_parameters"]["billingProfile"] == {"maxPrice": -1}
    writes = len([m for m, _ in arm.requests if m != "GET"])
    again, _ = bootstrapped(arm)  # everything is found and reused
    assert again.node_types["head"].node_config == config.node_types["head"].node_config
    assert len([m for m, _ in arm.requests if m != "GET"]) == writes + 1  # the group check (HEAD)


@pytest.mark.parametrize("size,gpus,accelerator,cpus", [
    ("Standard_NC4as_T4_v3", 1, "T4", 4), ("Standard_NC6s_v3", 1, "V100", 6),
    ("Standard_NC24ads_A100_v4", 1, "A100", 24), ("Standard_NV36ads_A10_v5", 1, "A10", 36),
    ("Standard_ND96asr_v4", 8, "A100", 96), ("Standard_ND96isr_H100_v5", 8, "H100", 96)],
    ids=["t4", "v100", "a100", "a10", "8xa100", "8xh100"])
def test_gpu_resources_detected(arm, size, gpus, accelerator, cpus):
    config, _ = bootstrapped(arm, head=node(size))
    resources = config.node_types["head"].resources
    assert resources["GPU"] == gpus and resources[f"accelerator_type:{accelerator}"] == 1
    assert resources["CPU"] == cpus


def test_cpu_size_and_yaml_override(arm):
    config, _ = bootstrapped(arm, head=node("Standard_D4s_v5"),
                             gpu={**node("Standard_NC4as_T4_v3"), "resources": {"GPU": 0, "x": 2}})
    head, gpu = config.node_types["head"].resources, config.node_types["gpu"].resources
    assert head == {"CPU": 4, "memory": int(16 * GIB * 0.7)}
    assert gpu["GPU"] == 0 and gpu["x"] == 2 and gpu["CPU"] == 4


def test_create_tags_lists_and_sets_tags(arm):
    config, provider = bootstrapped(arm)
    ids = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(), 3)
    assert len(ids) == 3 and provider.nodes({}) == sorted(ids)
    assert provider.nodes({T.TAG_NODE_KIND: T.KIND_HEAD}) == []
    tags = provider.node_tags(ids[0])
    assert tags[T.TAG_CLUSTER_NAME] == "t" and tags[T.TAG_NODE_TYPE] == "gpu"
    provider.set_tags(ids[0], {T.TAG_NODE_STATUS: "running"})
    fresh = make_provider(config.provider, "t", config.auth)  # state lives in Azure tags
    assert fresh.node_tags(ids[0])[T.TAG_NODE_STATUS] == "running"
    assert fresh.node_tags(ids[0])[T.TAG_LAUNCH_HASH] == "h1"
    assert make_provider(config.provider, "other", {}).nodes({}) == []
    for name in ids:  # every piece a VM owns carries the cluster's name
        for kind, suffix in (("Microsoft.Network/networkInterfaces", "-nic"),
                             ("Microsoft.Network/publicIPAddresses", "-ip"),
                             ("Microsoft.Compute/disks", "-osdisk")):
            [found] = [r for r in arm.of_type(kind) if r["name"] == name + suffix]
            assert found["tags"]["cluster-name"] == "t"
    assert fresh.internal_ip(ids[0]).startswith("10.0.")
    assert fresh.external_ip(ids[0]).startswith("127.102.")


def test_vm_body_spot_image_key_and_identity(arm):
    config, provider = bootstrapped(arm)
    [worker] = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(), 1)
    [head] = provider.create("head", config.node_types["head"].node_config,
                             worker_tags(T.KIND_HEAD), 1)
    spot = vm_body(arm, worker)["properties"]
    assert spot["priority"] == "Spot" and spot["evictionPolicy"] == "Delete"
    assert spot["billingProfile"] == {"maxPrice": -1}
    assert spot["hardwareProfile"]["vmSize"] == "Standard_NC4as_T4_v3"
    image = spot["storageProfile"]["imageReference"]
    assert (image["publisher"], image["offer"], image["version"]) == \
        ("microsoft-dsvm", "ubuntu-2204", "latest")
    assert spot["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    [key] = spot["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"]
    assert key["path"] == "/home/ubuntu/.ssh/authorized_keys"
    assert key["keyData"] == config.node_types["gpu"].node_config["ssh_public_key"]
    assert spot["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"] is True
    assert "identity" not in vm_body(arm, worker)
    on_demand = vm_body(arm, head)
    assert "priority" not in on_demand["properties"]
    assert list(on_demand["identity"]["userAssignedIdentities"]) == \
        [config.node_types["head"].node_config["identity_id"]]


def test_terminate_removes_vm_nic_ip_and_disk(arm):
    config, provider = bootstrapped(arm)
    ids = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(), 2)
    [head] = provider.create("head", config.node_types["head"].node_config,
                             worker_tags(T.KIND_HEAD), 1)
    provider.terminate(ids[:1] + ["t-worker-00000000"])  # unknown ids are ignored
    assert provider.nodes({}) == sorted([head, ids[1]])
    assert all(ids[0] not in name for names in leftovers(arm).values() for name in names)
    provider.terminate([head, ids[1]])
    assert provider.nodes({}) == [] and leftovers(arm) == {}


def test_leftovers_of_a_half_created_vm_are_swept_once_the_head_is_gone(arm):
    config, provider = bootstrapped(arm)
    [head] = provider.create("head", config.node_types["head"].node_config,
                             worker_tags(T.KIND_HEAD), 1)
    provider._nic("t-worker-deadbeef", config.node_types["gpu"].node_config)  # then a crash
    [worker] = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(), 1)
    provider.terminate([worker])  # the head lives: its autoscaler may be creating that NIC
    assert leftovers(arm)["Microsoft.Network/networkInterfaces"] == \
        sorted([f"{head}-nic", "t-worker-deadbeef-nic"])
    provider.terminate([head])  # as `cluster down` does
    assert leftovers(arm) == {}


def test_capacity_error_tries_the_next_zone(arm):
    config, provider = bootstrapped(arm, provider={"availability_zone": "1,2,3"})
    arm.fail_vm("AllocationFailed", zone="1")  # asynchronous: the VM is left Failed
    arm.fail_vm("ZonalAllocationFailed", zone="2")
    [name] = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(), 1)
    assert vm_body(arm, name)["zones"] == ["3"]
    assert [r["name"] for r in arm.of_type(VM)] == [name]  # the failed attempts are gone
    zones = [r for m, r in arm.requests if m == "PUT" and r.endswith(name)]
    assert len(zones) == 3
    [again] = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(), 1)
    assert vm_body(arm, again)["zones"] == ["3"]  # zones 1 and 2 are backed off: 3 first
    assert len([r for m, r in arm.requests if m == "PUT" and r.endswith(again)]) == 1


def test_a_node_types_own_availability_zone_wins_over_the_providers(arm):
    """Ray's azure-defaults.yaml: `availability_zone: "none"` in the head's arm parameters."""
    types = {"head": node("Standard_D4s_v5", availability_zone="none"),
             "gpu": node("Standard_NC4as_T4_v3", availability_zone="2")}
    config, provider = bootstrapped(arm, provider={"availability_zone": "1,2,3"}, **types)
    [head] = provider.create("head", config.node_types["head"].node_config, worker_tags("head"), 1)
    [gpu] = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(), 1)
    assert vm_body(arm, head).get("zones") in (None, []) and vm_body(arm, gpu)["zones"] == ["2"]


@pytest.mark.parametrize("deallocate", [False, True], ids=["deleted", "deallocated"])
def test_an_evicted_spot_vm_is_reported_preempted_and_an_on_demand_one_is_not(arm, deallocate):
    types = {"head": node("Standard_D4s_v5"), "gpu": node("Standard_NC4as_T4_v3", priority="Spot")}
    config, provider = bootstrapped(arm, **types)
    [head] = provider.create("head", config.node_types["head"].node_config, worker_tags("head"), 1)
    [spot] = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(), 1)
    assert provider.nodes({}) == sorted([head, spot]) and provider.preempted([head, spot]) == {}
    arm.evict(spot, deallocate=deallocate)
    how = "deallocated" if deallocate else "deleted on eviction"
    assert provider.preempted([head, spot]) == {spot: f"evicted by Azure (spot VM {how})"}
    regular = provider.on_demand(config.node_types["gpu"].node_config)["azure_arm_parameters"]
    assert "priority" not in regular and "evictionPolicy" not in regular
    assert provider.on_demand(config.node_types["head"].node_config) is None


@pytest.mark.parametrize("code,error", [
    ("SkuNotAvailable", CapacityError), ("AllocationFailed", CapacityError),
    ("ZonalAllocationFailed", CapacityError), ("OverconstrainedAllocationRequest", CapacityError),
    ("QuotaExceeded", QuotaError), ("OperationNotAllowed", QuotaError)])
def test_errors_are_classified_and_leave_nothing(arm, code, error):
    config, provider = bootstrapped(arm, provider={"availability_zone": "1,2"})
    arm.fail_vm(code, size="Standard_NC4as_T4_v3", times=None)
    with pytest.raises(error) as raised:
        provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(), 2)
    assert code in str(raised.value) and "\n" not in str(raised.value)
    if error is CapacityError:
        assert "zone 1" in str(raised.value) and "zone 2" in str(raised.value)
    assert provider.nodes({}) == [] and leftovers(arm) == {}


def test_throttling_is_retried_by_the_sdk(arm):
    config, provider = bootstrapped(arm)
    arm.throttle(2)
    assert provider.nodes({}) == []
    assert [m for m, p in arm.requests[-3:]] == ["GET"] * 3
    arm.throttle(100)
    with pytest.raises(TransientError, match="TooManyRequests"):
        provider.nodes({})


def test_a_launch_without_capacity_is_a_capacity_error_and_backs_the_type_off(arm):
    config, provider = bootstrapped(arm)
    arm.fail_vm("SkuNotAvailable", size="Standard_NC4as_T4_v3", times=None)
    kind, backoff = launch_and_react(config, provider, "gpu")
    assert kind == "capacity" and "SkuNotAvailable" in backoff.message
    assert backoff.until == 130.0  # the first of an exponential series
    assert leftovers(arm) == {}


@pytest.mark.parametrize("internal,on_head,public", [
    (False, False, True), (True, False, False), (False, True, False)],
    ids=["public", "use_internal_ips", "on-the-head"])
def test_command_runner_reaches_the_configured_address(arm, monkeypatch, internal, on_head, public):
    if on_head:
        monkeypatch.setenv("CLUSTER_NODE_ID", "t-head-00000000")  # set for processes the head starts
    config, provider = bootstrapped(arm, provider={"use_internal_ips": internal})
    [name] = provider.create("gpu", config.node_types["gpu"].node_config, worker_tags(), 1)
    runner = provider.command_runner(name)
    expected = provider.external_ip(name) if public else provider.internal_ip(name)
    assert runner.target.host == expected and expected
    assert runner.target.key_path == config.auth["ssh_private_key"]
    if internal:  # no public IP is created at all
        assert arm.of_type("Microsoft.Network/publicIPAddresses") == []


def test_plain_http_endpoint_must_be_loopback(arm):
    with pytest.raises(ConfigError, match="provider.resource_manager_endpoint"):
        make_provider(provider_section(arm, resource_manager_endpoint="http://example.com"), "t")
    with pytest.raises(ConfigError, match="cache_stopped_nodes"):
        make_provider(provider_section(arm, cache_stopped_nodes=True), "t")


def test_user_keys_are_used_as_given(arm, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = tmp_path / "id_ed25519"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    derived = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH).decode()
    config, _ = bootstrapped(arm, auth={"ssh_private_key": str(private)})
    assert config.auth["ssh_private_key"] == str(private)
    assert config.node_types["head"].node_config["ssh_public_key"] == derived
    public = tmp_path / "id.pub"
    public.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJustAnotherKey me@laptop\n")
    config, _ = bootstrapped(arm, auth={"ssh_private_key": str(private),
                                        "ssh_public_key": str(public)})
    assert config.node_types["gpu"].node_config["ssh_public_key"] == public.read_text().strip()
    assert not (tmp_path / "home" / ".cluster-launcher").exists()  # no key pair was generated
