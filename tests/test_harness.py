"""The container-node harness behaves like a set of cloud VMs reachable over SSH on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from tests.conftest import pid_alive
from tests.harness.containers import (  # noqa: F401  (fixtures)
    ContainerCluster,
    assert_loopback,
    containers,
    free_ip,
    ssh_key,
)

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]


def ssh_argv(node, key: Path, command: str) -> list[str]:
    assert_loopback(node.ip)
    return ["ssh", "-i", str(key), *SSH_OPTIONS, f"{node.user}@{node.ip}", command]


def ssh(node, key: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(ssh_argv(node, key, command), capture_output=True, text=True, timeout=30)


def host_key(ip: str) -> str:
    assert_loopback(ip)
    out = subprocess.run(["ssh-keyscan", "-t", "ed25519", ip], capture_output=True, text=True,
                         timeout=10).stdout
    return out.split()[-1]


def commands(node) -> list[bytes]:
    """The command lines of the node's processes (a process may exit while we read)."""
    found = []
    for pid in node.pids():
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            pass
    return found


def wait_for_command(node, cmdline: bytes, timeout: float = 10) -> None:
    """Wait until the node runs cmdline: `nohup cmd &` over ssh may return before cmd is exec'd."""
    deadline = time.monotonic() + timeout
    while cmdline not in commands(node):
        assert time.monotonic() < deadline, f"{cmdline!r} never ran on {node.ip}"
        time.sleep(0.02)


def test_assert_loopback_refuses_anything_else():
    assert_loopback("127.0.0.9")
    for target in ["2222", "localhost", "10.0.0.1", "8.8.8.8", "::1"]:
        with pytest.raises(ValueError):
            assert_loopback(target)


def test_node_answers_ssh_with_debian_python_and_sudo(containers, ssh_key):
    node = containers.start(free_ip())
    assert ssh(node, ssh_key[0], "python3 --version").stdout.startswith("Python 3.11")
    assert ssh(node, ssh_key[0], "sudo -n id -u").stdout.strip() == "0"
    assert ssh(node, ssh_key[0], "hostname").stdout.strip() == "node-" + node.ip.replace(".", "-")


def test_paramiko_connects(containers, ssh_key):
    node = containers.start(free_ip())
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    assert_loopback(node.ip)
    client.connect(node.ip, username=node.user, key_filename=str(ssh_key[0]), timeout=5,
                   look_for_keys=False, allow_agent=False)
    try:
        _, stdout, _ = client.exec_command("echo ok")
        assert stdout.read() == b"ok\n"
    finally:
        client.close()


def test_filesystems_are_private(containers, ssh_key):
    a, b = containers.start(free_ip()), containers.start(free_ip())
    assert ssh(a, ssh_key[0], "echo hello > ~/marker").returncode == 0
    assert (a.root / "home/ubuntu/marker").read_text() == "hello\n"
    assert not Path("/home/ubuntu/marker").exists()
    assert not (b.root / "home/ubuntu/marker").exists()
    assert ssh(b, ssh_key[0], "test -e ~/marker").returncode == 1


def test_stop_kills_every_process_and_leaves_nothing(containers, ssh_key):
    node = containers.start(free_ip())
    assert ssh(node, ssh_key[0], "nohup sleep 300 >/dev/null 2>&1 &").returncode == 0
    wait_for_command(node, b"sleep\x00300\x00")
    pids, node_dir = node.pids(), containers.base_dir / node.ip
    node.stop()
    node.stop()  # idempotent
    assert node.pids() == [] and not [p for p in pids if pid_alive(p)]
    assert str(node_dir) not in Path("/proc/mounts").read_text() and not node_dir.exists()


def test_host_keys_differ_per_node_and_follow_the_seed(containers):
    a, b = containers.start(free_ip(), host_key_seed="vm-a"), containers.start(free_ip())
    key_a = host_key(a.ip)
    assert key_a != host_key(b.ip)
    a.stop()
    rebooted = containers.start(a.ip, host_key_seed="vm-a")
    assert host_key(rebooted.ip) == key_a
    a.stop()  # stopping the old node again leaves its successor on the same address alone
    assert rebooted.pids() and (containers.base_dir / a.ip / "upper").is_dir()


def test_delayed_sshd_refuses_then_accepts(containers, ssh_key):
    started = time.monotonic()
    node = containers.start(free_ip(), sshd_delay_s=1.5)
    assert (node.root / "etc/debian_version").exists()  # booted, sshd not yet up
    assert_loopback(node.ip)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((node.ip, 22), timeout=1).close()
    while ssh(node, ssh_key[0], "true").returncode != 0:
        assert time.monotonic() - started < 10
        time.sleep(0.1)
    assert time.monotonic() - started >= 1.4


def test_rsync_over_ssh(containers, ssh_key, tmp_path):
    node = containers.start(free_ip())
    (tmp_path / "src/sub").mkdir(parents=True)
    (tmp_path / "src/sub/data.bin").write_bytes(os.urandom(100_000))
    remote_shell = " ".join(["ssh", "-i", str(ssh_key[0]), *SSH_OPTIONS])
    assert_loopback(node.ip)
    subprocess.run(["rsync", "-a", "-e", remote_shell, f"{tmp_path}/src/", f"ubuntu@{node.ip}:dst/"],
                   check=True, timeout=30)
    copied = node.root / "home/ubuntu/dst/sub/data.bin"
    assert copied.read_bytes() == (tmp_path / "src/sub/data.bin").read_bytes()
    assert copied.stat().st_uid == (node.root / "home/ubuntu").stat().st_uid


def test_kill_sshd_drops_sessions_but_node_lives_on(containers, ssh_key):
    node = containers.start(free_ip())
    assert ssh(node, ssh_key[0], "nohup sleep 301 >/dev/null 2>&1 &").returncode == 0
    session = subprocess.Popen(ssh_argv(node, ssh_key[0], "sleep 302"), stdin=subprocess.DEVNULL)
    try:
        wait_for_command(node, b"sleep\x00302\x00")
        wait_for_command(node, b"sleep\x00301\x00")
        node.kill_sshd()
        assert session.wait(timeout=10) == 255  # the open session dropped
    finally:
        session.kill()
        session.wait()
    assert ssh(node, ssh_key[0], "true").returncode == 255  # new connections refused
    assert b"sleep\x00301\x00" in commands(node) and b"sleep\x00302\x00" not in commands(node)


def test_node_left_by_a_crashed_run_is_reclaimed(tmp_path, ssh_key):
    if os.geteuid() != 0:
        pytest.skip("container nodes need root")
    base, ip = tmp_path / "nodes", free_ip()
    crash = ("import os, sys; from tests.harness.containers import ContainerCluster as C;"
             "n = C(sys.argv[1], sys.argv[2]).start(sys.argv[3]); print(n.pids()); os._exit(0)")
    crashed = subprocess.run([sys.executable, "-c", crash, str(base), ssh_key[1], ip], check=True,
                             capture_output=True, text=True, cwd=Path(__file__).parents[1])
    orphans = [int(p) for p in crashed.stdout.strip("[]\n").split(", ")]
    cluster = ContainerCluster(base, ssh_key[1])
    try:
        node = cluster.start(ip)  # powers the orphan off and takes its place
        assert not [p for p in orphans if pid_alive(p)]
        assert ssh(node, ssh_key[0], "true").returncode == 0
    finally:
        cluster.stop_all()
