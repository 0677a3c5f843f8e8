"""Shared fixtures: every test that starts processes stops them by the PIDs it recorded."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

CLUSTER = str(Path(sys.executable).parent / "cluster")  # the CLI of the environment under test


@pytest.fixture
def runtime_home(tmp_path, monkeypatch):
    """A private ~/.cluster for runtime processes started by the test, and no inherited cluster."""
    monkeypatch.setenv("CLUSTER_RUNTIME_DIR", str(tmp_path / "rt"))
    for key in [k for k in os.environ if k.startswith("CLUSTER_") and k != "CLUSTER_RUNTIME_DIR"]:
        monkeypatch.delenv(key)
    return tmp_path / "rt"


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout: float, what: str):
    """Poll until predicate() returns something truthy, and return it; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
