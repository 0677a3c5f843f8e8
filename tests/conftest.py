"""Shared fixtures: every test that starts processes stops them by the PIDs it recorded."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

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
    except (FileNotFoundError, ProcessLookupError):  # gone, or exiting while we read
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


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def clear_cluster_env(mp: pytest.MonkeyPatch) -> None:
    """No inherited cluster: drop every CLUSTER_ variable of this process's environment."""
    for key in [k for k in os.environ if k.startswith("CLUSTER_")]:
        mp.delenv(key)


@contextlib.contextmanager
def module_two_node_cluster(tmp_path_factory, head_ip: str, worker_ip: str,
                            head_resources: dict) -> Iterator[tuple]:
    """two_node_cluster for a module-scoped fixture: its own home and environment."""
    home = tmp_path_factory.mktemp("rt")
    with pytest.MonkeyPatch.context() as mp:
        clear_cluster_env(mp)
        with two_node_cluster(mp, home, head_ip, worker_ip, head_resources) as nodes:
            yield nodes


@contextlib.contextmanager
def two_node_cluster(mp: pytest.MonkeyPatch, home: Path, head_ip: str, worker_ip: str,
                     head_resources: dict) -> Iterator[tuple]:
    """A head and a worker ({"CPU": 2, "special": 1}: a resource only it has) on two loopback
    addresses, with this process's driver connected to the head. Yields (head session, token);
    on exit everything is stopped and checked dead by PID."""
    import runtime as ray
    from runtime import node

    pids = []
    mp.setenv("CLUSTER_RUNTIME_DIR", str(home / "head"))
    try:
        head = node.start_head(free_port(head_ip), head_resources, ip=head_ip, node_id="head")
        pids += head.pids.values()
        token = (home / "head" / "token").read_text()
        mp.setenv("CLUSTER_RUNTIME_DIR", str(home / "worker"))
        worker = node.start_worker(head.gcs_address, {"CPU": 2, "special": 1}, "cpu-2",
                                   ip=worker_ip, node_id="worker", token=token)
        pids += worker.pids.values()
        mp.setenv("CLUSTER_RUNTIME_DIR", str(home / "head"))
        ray.init(address=head.gcs_address)
        yield head, token
    finally:
        ray.shutdown()
        node._kill_all({str(p): p for p in pids}, grace_s=3)
    assert not [p for p in pids if pid_alive(p)]
