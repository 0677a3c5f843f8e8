"""The SSH path end to end on container nodes (own filesystem, processes and sshd on 127.0.0.N):
`cluster up` with the `ssh` provider installs the runtime over SSH, demand scales onto the worker
hosts and back, an unchanged re-up runs nothing, and `cluster down` leaves no runtime process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.harness.containers import containers, free_ip, ssh_key  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
CLUSTER = str(Path(sys.executable).parent / "cluster")
RUNTIME_MARKERS = ("runtime.gcs", "runtime.node_agent", "runtime.worker", "autoscaler.monitor")


def _runtime_pids(node) -> list[int]:
    """Processes of the runtime on a container node, found through the node's own PID list."""
    found = []
    for pid in node.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except FileNotFoundError:
            continue
        if any(marker in cmdline for marker in RUNTIME_MARKERS):
            found.append(pid)
    return found


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def ssh_cluster(containers, ssh_key, tmp_path):  # noqa: F811
    """Three container hosts (the head's sshd starts 20 s late) and a cluster YAML for them."""
    key_path, _ = ssh_key
    head = containers.start(free_ip(), sshd_delay_s=20)
    workers = [containers.start(free_ip()) for _ in range(2)]
    config = {
        "cluster_name": "ssh-e2e",
        "provider": {"type": "ssh", "head_ip": head.ip, "worker_ips": [w.ip for w in workers]},
        "auth": {"ssh_user": "ubuntu", "ssh_private_key": str(key_path)},
        "max_workers": 2, "idle_timeout_minutes": 0.1, "autoscaler_update_interval_s": 1,
        "available_node_types": {"head": {"resources": {"CPU": 1}},
                                 "worker": {"resources": {"CPU": 2}, "max_workers": 2}},
        "head_node_type": "head",
        "setup_commands": ["echo ran >> ~/setup-runs"],
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    # a private ~ (known_hosts of this run only), the shared cache (wheels are built once)
    env.update(HOME=str(tmp_path / "home"),
               XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))

    def cli(*args, timeout=300):
        return subprocess.run([CLUSTER, *args[:1], str(path), *args[1:]], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=tmp_path)

    yield cli, head, workers, tmp_path
    cli("down", "-y")


def test_up_scale_up_and_down_reup_and_down_over_ssh(ssh_cluster):
    cli, head, workers, tmp_path = ssh_cluster
    up = cli("up", "-y")
    assert up.returncode == 0, up.stderr
    assert "installing the runtime" in up.stdout and "running start commands" in up.stdout
    assert _runtime_pids(head) and not any(_runtime_pids(w) for w in workers)

    driver = tmp_path / "driver.py"
    driver.write_text(
        "import runtime as ray, os\n"
        "ray.init('auto')\n"
        "f = ray.remote(num_cpus=2)(lambda i: (i * i, os.environ['CLUSTER_NODE_IP']))\n"
        "out = ray.get([f.remote(i) for i in range(4)])\n"
        "print('squares', [v for v, _ in out], 'hosts', sorted({h for _, h in out}))\n")
    run = cli("submit", str(driver))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "squares [0, 1, 4, 9]" in run.stdout
    worker_hosts = {w.ip for w in workers}
    assert any(ip in run.stdout for ip in worker_hosts)  # the work ran on claimed worker hosts
    assert set(cli("get-worker-ips").stdout.split()) <= worker_hosts

    _wait_for(lambda: not cli("get-worker-ips").stdout.strip(), 60, "idle workers to be released")
    _wait_for(lambda: not any(_runtime_pids(w) for w in workers), 15, "worker runtimes to stop")
    assert all(w.pids() for w in workers)  # released, not powered off: the machines are the user's

    again = cli("up", "-y")
    assert "up to date" in again.stdout
    assert (head.root / "home/ubuntu/setup-runs").read_text() == "ran\n"  # setup ran exactly once

    assert cli("down", "-y").returncode == 0
    assert not any(_runtime_pids(n) for n in [head, *workers])
    assert cli("get-head-ip").returncode != 0
