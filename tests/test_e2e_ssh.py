"""The SSH path end to end on container nodes (own filesystem, processes and sshd on 127.0.0.N):
`cluster up` with the `ssh` provider installs the runtime over SSH, demand scales onto the worker
hosts and back, an unchanged re-up runs nothing, and `cluster down` leaves no runtime process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

from launcher.runtime_install import locked_requirements
from tests.conftest import CLUSTER, wait_for

from tests.harness.containers import containers, free_ip, ssh_key  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
RUNTIME_MARKERS = ("runtime.gcs", "runtime.node_agent", "runtime.worker", "autoscaler.monitor")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
        return ""


def _runtime_pids(node) -> list[int]:
    """Processes of the runtime on a container node, found through the node's own PID list."""
    return [pid for pid in node.pids() if any(m in _cmdline(pid) for m in RUNTIME_MARKERS)]




def _assert_head_runs_the_locked_versions(cli):
    """The head's venv holds exactly the runtime lock's pins for its Python, and this code."""
    version = cli("version")
    assert version.returncode == 0 and version.stderr == "", version.stderr
    mine, head = version.stdout.splitlines()
    assert head.endswith(": " + mine)
    python = cli("exec", "python3 -c 'import platform; print(platform.python_version())'").stdout.strip()
    locked = dict(line.split(" ", 1)[0].split("==")
                  for line in locked_requirements("core", python, "x86_64").splitlines())
    freeze = cli("exec", "~/.cluster/venv/bin/python -m pip list --format=freeze").stdout
    installed = {canonicalize_name(n): v for n, v in (line.split("==") for line in freeze.split())}
    locked = {canonicalize_name(n): v for n, v in locked.items()}
    assert locked.items() <= installed.items()
    seeded_by_venv = {"pip", "setuptools"}  # Python 3.11's venv seeds setuptools, 3.12's does not
    assert set(installed) - set(locked) <= {"cluster-launcher", *seeded_by_venv}


@pytest.fixture
def make_cluster(containers, ssh_key, tmp_path):  # noqa: F811
    """Builds container hosts and a cluster YAML for them; `cluster down` at the end."""
    key_path, _ = ssh_key
    clis = []

    def make(*, head_sshd_delay_s=0.0, workers=2, ssh_timeout_s=None, **config_changes):
        head = containers.start(free_ip(), sshd_delay_s=head_sshd_delay_s)
        hosts = [containers.start(free_ip()) for _ in range(workers)]
        config = {
            "cluster_name": "ssh-e2e",
            "provider": {"type": "ssh", "head_ip": head.ip, "worker_ips": [w.ip for w in hosts]},
            "auth": {"ssh_user": "ubuntu", "ssh_private_key": str(key_path)},
            "max_workers": workers, "idle_timeout_minutes": 0.1, "autoscaler_update_interval_s": 1,
            "available_node_types": {"head": {"resources": {"CPU": 1}},
                                     "worker": {"resources": {"CPU": 2}, "max_workers": workers}},
            "head_node_type": "head",
            "setup_commands": ["echo ran >> ~/setup-runs"],
            "rsync_exclude": ["*.tmp"],
            **config_changes,
        }
        if ssh_timeout_s:
            config["provider"]["ssh_timeout_s"] = ssh_timeout_s
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
        # a private ~ (known_hosts of this run only), the shared cache (wheels are built once)
        env.update(HOME=str(tmp_path / "home"),
                   XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))

        def cli(*args, timeout=300):
            return subprocess.run([CLUSTER, *args[:1], str(path), *args[1:]], env=env,
                                  capture_output=True, text=True, timeout=timeout, cwd=tmp_path)

        cli.popen = lambda *args: subprocess.Popen(
            [CLUSTER, *args[:1], str(path), *args[1:]], env=env, cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        clis.append(cli)
        return cli, head, hosts

    yield make
    for cli in clis:
        cli("down", "-y")


def test_up_scale_up_and_down_reup_and_down_over_ssh(make_cluster, containers, tmp_path):  # noqa: F811
    cli, head, workers = make_cluster(head_sshd_delay_s=20)  # a slow-booting head is waited for
    up = cli("up", "-y")
    assert up.returncode == 0, up.stderr
    assert "installing the runtime" in up.stdout and "running start commands" in up.stdout
    assert _runtime_pids(head) and not any(_runtime_pids(w) for w in workers)
    _assert_head_runs_the_locked_versions(cli)

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "weights.bin").write_bytes(os.urandom(300_000))
    (tree / "notes.txt").write_text("n")
    (tree / "scratch.tmp").write_text("excluded")
    assert cli("rsync-up", str(tree), "~/tree").returncode == 0
    assert cli("rsync-down", "~/tree", str(tmp_path / "back")).returncode == 0
    back = tmp_path / "back"
    assert (back / "sub" / "weights.bin").read_bytes() == (tree / "sub" / "weights.bin").read_bytes()
    assert (back / "notes.txt").exists() and not (back / "scratch.tmp").exists()
    result = cli("exec", "echo from-$(hostname); exit 3")
    assert result.returncode == 3 and result.stdout.startswith("from-")

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
    setup_logs = list((head.root / "home/ubuntu/.cluster/logs/nodes").glob("*.log"))
    assert setup_logs and "==> installing the runtime" in setup_logs[0].read_text()

    wait_for(lambda: not cli("get-worker-ips").stdout.strip(), 60, "idle workers to be released")
    wait_for(lambda: not any(_runtime_pids(w) for w in workers), 15, "worker runtimes to stop")
    assert all(w.pids() for w in workers)  # released, not powered off: the machines are the user's

    cli("exec", "echo '# edited' >> ~/.cluster/venv/lib/python3*/site-packages/launcher/__init__.py")
    stale = cli("version")  # the head's code no longer is this machine's
    assert stale.returncode == 0 and "Warning: the head runs another version" in stale.stderr

    again = cli("up", "-y")
    assert "up to date" in again.stdout
    assert (head.root / "home/ubuntu/setup-runs").read_text() == "ran\n"  # setup ran exactly once

    assert cli("down", "-y").returncode == 0
    assert not any(_runtime_pids(n) for n in [head, *workers])
    assert cli("get-head-ip").returncode != 0

    head.stop()  # the head machine is replaced: same address, new host key
    containers.start(head.ip)
    refused = cli("up", "-y")
    assert refused.returncode != 0 and "host key" in refused.stderr and head.ip in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_worker_whose_sshd_dies_mid_setup_is_reported_and_down_cleans_up(make_cluster, tmp_path):
    cli, head, [worker] = make_cluster(workers=1, ssh_timeout_s=10,
                                       worker_setup_commands=["sleep 8"])
    assert cli("up", "-y").returncode == 0
    driver = tmp_path / "wants_a_worker.py"
    driver.write_text("import runtime as ray\nray.init('auto')\n"
                      "ref = ray.remote(num_cpus=2)(lambda: 1).remote()\n"
                      "try:\n    ray.get(ref, timeout=60)\nexcept ray.GetTimeoutError:\n    pass\n")
    submit = cli.popen("submit", str(driver))
    try:
        wait_for(lambda: any("sleep 8" in _cmdline(p) for p in worker.pids()), 90,
                  "the worker's setup command to run")
        worker.kill_sshd()

        def failure_reported():
            text = cli("status").stdout
            return text if f"setting up {worker.ip} (worker) failed" in text else None

        status = wait_for(failure_reported, 60, "the failed setup in the autoscaler's status")
        assert worker.ip in status.split("failed", 1)[1]  # the reason names the host
    finally:
        submit.kill()
        submit.wait()
    assert cli("down", "-y").returncode == 0
    assert not any(_runtime_pids(n) for n in [head, worker])
    assert cli("get-head-ip").returncode != 0
