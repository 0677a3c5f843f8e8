"""Shared fixtures: the fake Compute Engine server, credentials it issues, and nothing that can
leave this machine.

google-auth's Application Default Credentials chain ends at the GCE metadata server
(169.254.169.254 / metadata.google.internal): both addresses are pointed at a closed loopback port
before google.auth is imported (it reads GCE_METADATA_HOST once, at import), and the gcloud
config directory points at an empty one. Tests that need credentials get a service-account key
file of the fake server (see fake_gce.SERVICE_ACCOUNT: nothing public is looked up for it).
Every test also fails if anything in this process resolved a host that is not a loopback address.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from urllib.parse import urlparse

import pytest

CLOSED_LOOPBACK = "127.0.0.1:9"  # discard port: nothing listens, the connection is refused
os.environ["GCE_METADATA_HOST"] = os.environ["GCE_METADATA_IP"] = CLOSED_LOOPBACK
os.environ["GCE_METADATA_DETECT_RETRIES"] = "1"

pytest.importorskip("google.cloud.compute_v1")
from google.auth.compute_engine import _metadata  # noqa: E402

from gcp_tests.fake_gce import FakeGCE  # noqa: E402

REGION = "us-central1"


def is_loopback(host) -> bool:
    try:
        return host in (None, "localhost") or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def assert_loopback_url(url: str) -> None:
    """Every endpoint a test points google-auth or the SDK at must be on this machine."""
    host = urlparse(url if "//" in url else f"http://{url}").hostname
    assert is_loopback(host), f"not a loopback endpoint: {url}"


assert_loopback_url(_metadata._GCE_METADATA_HOST)  # imported before this conftest set it?


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Name resolution of anything but a loopback address is refused, and fails the test (a
    background thread's attempt too, which the SDK would swallow)."""
    refused = []
    resolve = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if not is_loopback(host.decode() if isinstance(host, bytes) else host):
            refused.append(host)
            raise socket.gaierror(socket.EAI_NONAME, f"gcp_tests: {host} is not loopback")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    assert not refused, f"something tried to reach non-loopback hosts: {refused}"


@pytest.fixture(autouse=True)
def gcp_env(monkeypatch, tmp_path):
    for key in [k for k in os.environ
                if k.startswith(("GOOGLE_", "CLOUDSDK_", "CLUSTER_", "GCE_METADATA"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GCE_METADATA_HOST", CLOSED_LOOPBACK)
    monkeypatch.setenv("GCE_METADATA_IP", CLOSED_LOOPBACK)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud credentials
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # keys and known_hosts of this test only
    os.makedirs(tmp_path / "home", exist_ok=True)


@pytest.fixture(scope="session")
def private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture
def fake(monkeypatch, tmp_path, private_key_pem):
    """The fake server, and GOOGLE_APPLICATION_CREDENTIALS naming a key file it accepts."""
    server = FakeGCE()
    assert_loopback_url(server.start())
    credentials = {**server.service_account_info(), "private_key": private_key_pem}
    assert_loopback_url(credentials["token_uri"])
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(credentials))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    yield server
    server.stop()
