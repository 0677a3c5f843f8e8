"""Bad input fails in one line naming the key path or the Azure error code, before anything is
created (bootstrap reads everything it checks before it creates anything)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from azure_tests.conftest import provider_section, safe_env
from azure_tests.test_azure_provider import bootstrapped, node
from launcher.errors import AuthError, ConfigError, InvalidNodeConfig

SIZE_KEY = "available_node_types.head.node_config.azure_arm_parameters.vmSize"

CASES = {
    "unknown-location": ({"provider": {"location": "marsnorth"}}, InvalidNodeConfig,
                         "provider.location: no VM sizes are offered in 'marsnorth'"),
    "unknown-vm-size": ({"head": node("Standard_Z99_v9")}, InvalidNodeConfig,
                        f"{SIZE_KEY}: unknown VM size 'Standard_Z99_v9' in eastus"),
    "gpu-size-not-offered": ({"head": node("Standard_ND96isr_H100_v5")}, InvalidNodeConfig,
                             f"{SIZE_KEY}: Standard_ND96isr_H100_v5 is not offered to this "
                             "subscription in eastus (NotAvailableForSubscription)"),
    "size-not-in-zone": ({"provider": {"availability_zone": "4"}, "head": node("Standard_D4s_v5")},
                         InvalidNodeConfig, f"{SIZE_KEY}: Standard_D4s_v5 is not offered in zone(s) 4"),
    "missing-vm-size": ({"head": {"node_config": {}}}, InvalidNodeConfig, f"{SIZE_KEY}: missing"),
    "unknown-arm-parameter": ({"head": node("Standard_D4s_v5", vmSzie="x")}, InvalidNodeConfig,
                              "azure_arm_parameters.vmSzie: unknown key"),
    "unknown-subscription": ({"provider": {"subscription_id": "11111111-2222-3333-4444-555555555555"}},
                             AuthError, "SubscriptionNotFound"),
    "public-key-without-private": ({"auth": {"ssh_public_key": "~/.ssh/id_rsa.pub"}}, ConfigError,
                                   "auth.ssh_private_key: missing"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_creates_nothing(arm, case):
    kwargs, error, words = CASES[case]
    arm.restricted["Standard_ND96isr_H100_v5"] = "NotAvailableForSubscription"
    with pytest.raises(error) as raised:
        bootstrapped(arm, **kwargs)
    assert words in str(raised.value) and "\n" not in str(raised.value)
    assert arm.resources == {}


def test_missing_credentials_is_one_auth_line(arm, monkeypatch):
    monkeypatch.delenv("IDENTITY_ENDPOINT")  # no credential of the chain is available now; the
    monkeypatch.delenv("IDENTITY_HEADER")  # metadata service (the fake) says: no identity
    with pytest.raises(AuthError) as raised:
        bootstrapped(arm)
    assert "no Azure credentials found" in str(raised.value) and "\n" not in str(raised.value)
    assert arm.resources == {} and arm.requests == []


def test_cli_without_credentials_prints_one_line_and_creates_nothing(arm, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "cluster_name": "nocreds", "provider": provider_section(arm),
        "available_node_types": {"head": node("Standard_D4s_v5")}, "head_node_type": "head"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_")}
    env.update({k: v for k, v in safe_env(arm).items() if not k.startswith("IDENTITY_")})
    cli = str(Path(sys.executable).parent / "cluster")
    result = subprocess.run([cli, "up", str(path), "-y"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no Azure credentials found" in result.stderr
    assert arm.resources == {}
