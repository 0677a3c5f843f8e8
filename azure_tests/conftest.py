"""Shared fixtures: the fake Resource Manager on 127.0.0.1, credentials it issues, and nothing that
can leave this machine.

azure-identity's DefaultAzureCredential gets its token the way an App Service app does:
IDENTITY_ENDPOINT + IDENTITY_HEADER, served by the fake. Every other credential of the chain is
unavailable here (no AZURE_* variables, HOME is empty, no az/azd/pwsh), and the instance metadata
service's address is AZURE_POD_IDENTITY_AUTHORITY_HOST, the fake too. On top of that, every socket
this process opens is checked: a connection or name lookup for anything but a loopback address is
refused and fails the test.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from urllib.parse import urlparse

import pytest

pytest.importorskip("azure.mgmt.compute")

from azure_tests.fake_arm import SUBSCRIPTION, FakeARM  # noqa: E402

LOCATION = "eastus"
GROUP = "cl-test-rg"


def is_loopback(host) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def assert_loopback_url(url: str) -> None:
    """Every endpoint a test points the SDK at must be on this machine."""
    host = urlparse(url).hostname
    assert host and is_loopback(host), f"not a loopback endpoint: {url}"


def safe_env(arm: FakeARM) -> dict:
    """The Azure variables of a process talking to the fake (and only to it)."""
    for url in (arm.url, arm.identity_endpoint):
        assert_loopback_url(url)
    return {"IDENTITY_ENDPOINT": arm.identity_endpoint, "IDENTITY_HEADER": arm.identity_header,
            "AZURE_POD_IDENTITY_AUTHORITY_HOST": arm.url}


@pytest.fixture(autouse=True)
def only_loopback(monkeypatch):
    """Refuse (and report) any connection or name lookup that would leave this machine."""
    attempts = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(host):
        if not is_loopback(host):
            attempts.append(host)
            raise OSError(f"test guard: {host} is not a loopback address")

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            check(address[0])
        return real_connect(sock, address)

    def connect_ex(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            check(address[0])
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        check(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    assert not attempts, f"tried to reach non-loopback addresses: {attempts}"


@pytest.fixture
def arm(monkeypatch, tmp_path):
    """The fake Resource Manager, and an environment whose credential chain reaches only it."""
    fake = FakeARM().start()
    for key in [k for k in os.environ
                if k.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_", "CLUSTER_"))]:
        monkeypatch.delenv(key)
    for key, value in safe_env(fake).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # keys and known_hosts of this test only
    os.makedirs(tmp_path / "home", exist_ok=True)
    yield fake
    fake.stop()


def provider_section(arm: FakeARM, **extra) -> dict:
    return {"type": "azure", "location": LOCATION, "resource_group": GROUP,
            "subscription_id": SUBSCRIPTION, "resource_manager_endpoint": arm.url, **extra}
