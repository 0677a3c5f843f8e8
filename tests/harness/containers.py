"""Container nodes: local stand-ins for cloud VMs, each with its own filesystem, processes and sshd.

A node is a mount+PID+UTS namespace (unshare) whose root (pivot_root, not chroot: a process
entering its mount namespace, as `podman exec` does, must land in the node, not on the host) is an
overlay of a cached Debian bookworm rootfs (tests/harness/rootfs.py), serving SSH on its own address 127.0.0.N:22 to user
"ubuntu" (passwordless sudo). Its mounts live only in its private mount namespace, so the kernel
drops them with the node's last process: nothing is mounted on the host. Like a VM with a container
engine, a node has podman (with runc; crun cannot set rlimits here), the host's /sys (read-only but
for the cgroup hierarchies runc needs) and /var/lib/containers on the host's disk (overlay storage
cannot stack on the node's overlay root); powering off removes the cgroups its containers left.
Its PID 1 is a tiny reaping init (Debian's python3) that starts sshd, so sshd can die while the
node stays up; killing PID 1 powers the node off. Nodes share the host's network stack: a service
on a node should bind the node's own address, not 0.0.0.0 (and a container on a node must use
`--network host`: podman's bridge networking would leave iptables chains on the host).

Use from a test module (the rootfs is built on first use, about a minute, then cached):

    from tests.harness.containers import containers, free_ip, ssh_key  # noqa: F401

    def test_x(containers, ssh_key):
        node = containers.start(free_ip())
        key_path, public_key = ssh_key   # ssh -i key_path ubuntu@node.ip ...

or expose the fixtures to every module with `pytest_plugins = ["tests.harness.containers"]` in the
top-level conftest. Requires root; without root the `containers` fixture skips.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.harness.rootfs import PATH_ENV, ensure_rootfs, remove_tree, tail

NODES_DIR = Path(tempfile.gettempdir()) / "cluster-launcher-nodes"
# 127.0.0.200-254 and 127.0.1.x+ belong to other harnesses (tests/sshd.py uses 200-230).
NODE_IPS = [f"127.0.0.{n}" for n in range(2, 200)]
# The node's PID 1, /run/node-init (runs chrooted): waits, starts sshd, then reaps every orphan.
# If sshd dies before writing its pid file (it could not start), the node powers off at once.
INIT = """import os, signal, time
signal.signal(signal.SIGCHLD, lambda *_: None)
time.sleep({delay!r})
sshd = os.posix_spawn({sshd[0]!r}, {sshd!r}, {{"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}})
while True:
    try:
        pid, _ = os.wait()
    except ChildProcessError:
        signal.pause()
        continue
    if pid == sshd and not os.path.exists("/run/sshd.pid"):
        raise SystemExit("sshd failed to start")
"""

# Runs as PID 1 of the new namespaces: $1 rootfs, $2 node dir, $3 ip, $4 hostname.
BOOT = """
set -eu
M="$2/merged"
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/upper,workdir=$2/work" "$M"
mount -t proc proc "$M/proc"
mount --rbind /dev "$M/dev"
mount -t tmpfs -o mode=755 tmpfs "$M/run"
mount -t tmpfs -o mode=1777 tmpfs "$M/tmp"
mount -t tmpfs -o mode=1777 tmpfs "$M/dev/shm"
mount --rbind /sys "$M/sys" && mount -o remount,bind,ro "$M/sys"
mkdir -p "$2/containers" "$M/var/lib/containers"
mount --bind "$2/containers" "$M/var/lib/containers"
mkdir -p "$M/run/sshd"
install -m 755 "$2/init.py" "$M/run/node-init"
install -m 600 "$2/host_key" "$M/etc/ssh/ssh_host_ed25519_key"
install -m 644 "$2/host_key.pub" "$M/etc/ssh/ssh_host_ed25519_key.pub"
install -d -m 700 "$M/home/ubuntu/.ssh"
install -m 600 "$2/authorized_keys" "$M/home/ubuntu/.ssh/authorized_keys"
chroot "$M" chown -R ubuntu:ubuntu /home/ubuntu/.ssh
hostname "$4" && echo "$4" > "$M/etc/hostname"
printf '127.0.0.1 localhost\\n%s %s\\n' "$3" "$4" > "$M/etc/hosts"
cd "$M" && pivot_root . mnt && umount -l /mnt
exec /usr/bin/python3 /run/node-init
"""

SSHD_OPTIONS = {
    "Port": "22",
    "HostKey": "/etc/ssh/ssh_host_ed25519_key",
    "PasswordAuthentication": "no",
    "KbdInteractiveAuthentication": "no",
    "UsePAM": "no",  # with PAM off the account needs a password of '*', set in the rootfs
    "MaxStartups": "100:30:200",
    "MaxSessions": "64",
    # The default post-quantum KEX costs ~250 ms per connection here; the @libssh.org name is paramiko's.
    "KexAlgorithms": "curve25519-sha256,curve25519-sha256@libssh.org",
    "AllowUsers": "ubuntu",
}

_claimed: set[str] = set()  # addresses handed out by free_ip() or used by a node of this process


def assert_loopback(ip: str) -> None:
    """Refuse any target outside 127.0.0.0/8: a slip must never reach a real machine."""
    try:
        ok = ipaddress.ip_address(ip) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"refusing to connect to {ip!r}: tests may only reach 127.0.0.0/8")


def ssh_keypair(directory: Path) -> tuple[Path, str]:
    """An ed25519 key made by ssh-keygen (reused if present): (private key path, public key text)."""
    key = Path(directory) / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cluster-launcher-test",
                        "-f", str(key)], check=True, stdin=subprocess.DEVNULL)
    return key, key.with_suffix(".pub").read_text().strip()


def free_ip() -> str:
    """A random 127.0.0.N (2..199) not claimed in this process and with nothing listening on port 22."""
    for ip in random.sample(NODE_IPS, len(NODE_IPS)):
        if ip not in _claimed and not _listening(ip):
            _claimed.add(ip)
            return ip
    raise RuntimeError("no free address in 127.0.0.2-199 (does a host sshd listen on 0.0.0.0:22?)")


@dataclass
class ContainerNode:
    """One running node. root (/proc/<its PID 1>/root) is its filesystem as the host sees it, valid
    while the node runs; absolute symlinks inside it resolve on the host, so read through real paths."""

    ip: str
    user: str
    root: Path
    _dir: Path = field(repr=False)
    _proc: subprocess.Popen = field(repr=False)
    _init: int = field(repr=False)  # host pid of the node's PID 1
    _ns: str = field(repr=False)  # its PID namespace, e.g. "pid:[4026532301]"
    _stopped: bool = field(default=False, repr=False)

    def pids(self) -> list[int]:
        """Host pids of every live process of the node: those in its PID namespace."""
        members = [p for p in _all_pids() if _pid_ns(p) == self._ns and _alive(p)]
        return members if self._init in members else []  # init gone: the namespace id may be reused

    def stop(self) -> None:
        """Power off: kill PID 1 (the kernel then kills the rest), reap, remove the node's files."""
        if self._stopped:  # its address and dir may already serve a newer node
            return
        if self._init in self.pids():
            os.kill(self._init, signal.SIGKILL)
        self._proc.wait(timeout=10)  # unshare exits once its child, the node's PID 1, is gone
        if self.pids():
            raise RuntimeError(f"node {self.ip}: processes survived stop(): {self.pids()}")
        _remove_container_cgroups(self._dir)
        remove_tree(self._dir)
        _claimed.discard(self.ip)
        self._stopped = True

    def kill_sshd(self) -> None:
        """Kill sshd with its open sessions and their commands; the node and detached processes live on.

        New connections are then refused, as on a VM whose sshd died. Needs sshd to have started.
        """
        nspid = int((self.root / "run/sshd.pid").read_text())
        parents = {pid: _stat(pid)[1] for pid in self.pids()}
        doomed = {pid for pid in parents if _nspid(pid) == nspid}
        while grown := {p for p, pp in parents.items() if pp in doomed and p not in doomed}:
            doomed |= grown
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):  # some exit on their own meanwhile
                os.kill(pid, signal.SIGKILL)


class ContainerCluster:
    """Starts nodes under base_dir/<ip>, each accepting public_key for user ubuntu."""

    def __init__(self, base_dir: Path, public_key: str, rootfs: Path | None = None):
        self.base_dir = Path(base_dir)
        self.public_key = public_key
        self.rootfs = rootfs or ensure_rootfs()
        self.nodes: list[ContainerNode] = []

    def start(self, ip: str, *, sshd_delay_s: float = 0.0, host_key_seed: str | None = None,
              timeout_s: float = 15.0) -> ContainerNode:
        """Boot a node on ip:22. Returns once the SSH banner is readable, or at once after boot if
        sshd_delay_s > 0 (sshd listens only after that delay: a slow VM). The same host_key_seed gives
        the same host key (a rebooted VM); None gives a fresh one (a replaced VM)."""
        assert_loopback(ip)
        ndir = self.base_dir / ip
        _reclaim(ndir)
        if _listening(ip):  # else the banner wait could read another server's banner
            raise RuntimeError(f"{ip}:22 is already taken")
        self._prepare(ndir, ip, sshd_delay_s, host_key_seed)
        with open(ndir / "boot.log", "wb") as log:
            proc = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--fork", "--uts", "--propagation", "private",
                 "sh", "-c", BOOT, "boot", str(self.rootfs), str(ndir), ip, "node-" + ip.replace(".", "-")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=PATH_ENV,
                start_new_session=True)
        _claimed.add(ip)
        deadline = time.monotonic() + timeout_s
        try:
            init = _wait_booted(proc, deadline)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)  # unshare leads the group, the node's PID 1 is in it
            proc.wait()
            message = f"node {ip} failed to boot:\n{tail(ndir / 'boot.log')}"
            remove_tree(ndir)
            _claimed.discard(ip)
            raise RuntimeError(message) from None
        (ndir / "owner").write_text(f"{_identity(os.getpid())} {_identity(init)}")
        node = ContainerNode(ip, "ubuntu", Path(f"/proc/{init}/root"), ndir, proc, init, _pid_ns(init))
        self.nodes.append(node)
        if sshd_delay_s <= 0 and not _wait_banner(ip, node, deadline):
            message = f"node {ip}: sshd did not start within {timeout_s} s:\n{tail(ndir / 'boot.log')}"
            node.stop()
            raise RuntimeError(message)
        return node

    def _prepare(self, ndir: Path, ip: str, sshd_delay_s: float, host_key_seed: str | None) -> None:
        """The node's private dirs and the files BOOT installs: host key, authorized_keys, init."""
        for sub in ("upper", "work", "merged"):
            (ndir / sub).mkdir(parents=True)
        _write_host_key(ndir, host_key_seed)
        (ndir / "authorized_keys").write_text(self.public_key.strip() + "\n")
        sshd = ["/usr/sbin/sshd", "-D", "-e", "-o", f"ListenAddress={ip}"]
        sshd += [arg for k, v in SSHD_OPTIONS.items() for arg in ("-o", f"{k}={v}")]
        (ndir / "init.py").write_text(INIT.format(delay=max(sshd_delay_s, 0.0), sshd=sshd))

    def stop_all(self) -> None:
        """Power off every node this cluster started (stopping a node twice is harmless)."""
        for node in self.nodes:
            node.stop()

    def leftover_pids(self) -> list[int]:
        """Processes of this cluster's nodes still alive (by their recorded PID namespaces)."""
        return [pid for node in self.nodes for pid in node.pids()]


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory) -> tuple[Path, str]:
    """(private key path, public key text), shared by the whole session."""
    return ssh_keypair(tmp_path_factory.mktemp("ssh-key"))


@pytest.fixture
def containers(request, ssh_key) -> Iterator[ContainerCluster]:
    """A ContainerCluster whose nodes are all powered off, and checked gone, after the test."""
    if os.geteuid() != 0:
        pytest.skip("container nodes need root (unshare, mount, chroot)")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        rootfs = ensure_rootfs()
    cluster = ContainerCluster(NODES_DIR, ssh_key[1], rootfs)
    yield cluster
    cluster.stop_all()
    assert cluster.leftover_pids() == [], "node processes outlived stop_all()"


def _wait_booted(proc: subprocess.Popen, deadline: float) -> int:
    """Host pid of the node's PID 1 once its root is the node's filesystem (after pivot_root its
    /proc/PID/root no longer reads as the overlay's host path, but its files are there)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("node exited while booting")
        for pid in _all_pids():
            if _stat(pid)[1] == proc.pid and os.path.exists(f"/proc/{pid}/root/run/node-init"):
                return pid
        time.sleep(0.005)
    raise TimeoutError("node did not boot")


def _wait_banner(ip: str, node: ContainerNode, deadline: float) -> bool:
    """True once the node's own sshd (it wrote its pid file) sends a banner on ip:22."""
    while time.monotonic() < deadline and node.pids():
        if (node.root / "run/sshd.pid").exists():
            try:
                with socket.create_connection((ip, 22), timeout=1) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
        time.sleep(0.01)
    return False


def _listening(ip: str) -> bool:
    assert_loopback(ip)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((ip, 22)) == 0


def _write_host_key(ndir: Path, seed: str | None) -> None:
    """An ed25519 host key for the node: derived from seed, or random."""
    if seed is None:
        key = Ed25519PrivateKey.generate()
    else:
        key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    (ndir / "host_key").write_bytes(private)
    (ndir / "host_key.pub").write_bytes(public + b" root@node\n")


def _reclaim(ndir: Path) -> None:
    """Clear a node dir left by an earlier run: power its node off if the test process that started
    it is dead (processes named by recorded pid + start time); refuse if that process still runs."""
    record = (ndir / "owner").read_text().split() if (ndir / "owner").exists() else []
    if len(record) == 4 and _identity(int(record[2])) == " ".join(record[2:]):
        if _identity(int(record[0])) == " ".join(record[:2]):
            raise RuntimeError(f"{ndir.name} is in use by a node of live process {record[0]}")
        os.kill(int(record[2]), signal.SIGKILL)  # the node's PID 1: the kernel kills the rest
        deadline = time.monotonic() + 10
        while _alive(int(record[2])) and time.monotonic() < deadline:
            time.sleep(0.01)  # PID 1 dies last, after every other process of the node
    _remove_container_cgroups(ndir)
    remove_tree(ndir)


def _remove_container_cgroups(ndir: Path) -> None:
    """runc made a cgroup per container of the node in the host's hierarchies (podman's cgroupfs
    manager: libpod_parent/libpod-<id>); a powered-off node cannot remove them, so this does."""
    for container in (ndir / "containers/storage/overlay-containers").glob("*/"):
        for pattern in ("libpod_parent", "*/libpod_parent"):  # cgroup v2, v1 hierarchies
            groups = Path("/sys/fs/cgroup").glob(f"{pattern}/libpod-{container.name}")
            for group in groups:
                with contextlib.suppress(OSError):  # still populated: a process outlived the node
                    group.rmdir()


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat(pid: int) -> tuple[str, int, str]:
    """(state, ppid, start time) from /proc/pid/stat; ("X", 0, "") once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return "X", 0, ""
    return fields[0], int(fields[1]), fields[19]


def _alive(pid: int) -> bool:
    """Exists and is not a zombie: this machine's PID 1 does not reap orphans."""
    return _stat(pid)[0] not in ("X", "Z")


def _identity(pid: int) -> str:
    """"pid starttime": names a process without confusing it with a later one that reuses the pid."""
    return f"{pid} {_stat(pid)[2]}"


def _pid_ns(pid: int) -> str | None:
    return _readlink(f"/proc/{pid}/ns/pid")


def _nspid(pid: int) -> int | None:
    """The pid as seen inside its own (innermost) PID namespace."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
