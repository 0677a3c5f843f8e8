"""A light SSH test fixture: one host sshd per loopback address, each with its own Linux user.

Node N is the user `sshnodeN` (created for the node, deleted with it) served by its own
`/usr/sbin/sshd -D` on 127.0.0.N:22, with N in 200..230, away from the container harness's low
addresses. A lock file holds N for the node's whole life, so pytest sessions running at once never
share an address or a user. Stopping a node kills its sshd by the recorded PID, the sshd processes
of its connections (the listener's children) and whatever its user still runs, then deletes the user.

Run as `python tests/sshd.py relay HOST PORT`, this file is a ProxyCommand for tests: it relays
stdin/stdout to HOST:PORT, which must be a loopback address.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator, Mapping, Optional

import pytest

FIRST_N, LAST_N = 200, 230
SSHD = "/usr/sbin/sshd"
READY_TIMEOUT_S = 10.0
LOCK_PATH = os.path.join(tempfile.gettempdir(), "cluster-launcher-sshnode{}.lock")


def assert_loopback(host: str) -> None:
    """Tests may reach loopback addresses only; a typo must never send SSH traffic elsewhere."""
    assert ipaddress.ip_address(host).is_loopback, f"refusing to connect to non-loopback {host!r}"


def wait_banner(ip: str, port: int = 22, timeout: float = READY_TIMEOUT_S) -> bool:
    """True once something on ip:port answers with an SSH banner."""
    assert_loopback(ip)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with socket.create_connection((ip, port), timeout=1.0) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return True
        time.sleep(0.02)
    return False


def _lock_free_n() -> tuple[int, int]:
    """Take the first free node number; returns (n, fd of its held lock file)."""
    for n in range(FIRST_N, LAST_N + 1):
        path = LOCK_PATH.format(n)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
                return n, fd  # locked the file that is still at the path, not a deleted one
        except BlockingIOError:
            pass
        os.close(fd)
    raise RuntimeError(f"every test sshd address 127.0.0.{FIRST_N}..{LAST_N} is in use")


def _unlock_n(n: int, fd: int) -> None:
    os.unlink(LOCK_PATH.format(n))  # while still holding it: see the inode check above
    os.close(fd)


def _retry_account_tool(argv: list[str]) -> None:
    """useradd/userdel fail at once (exit 10) while another process holds /etc/passwd's lock."""
    for _ in range(50):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 10:
            break
        time.sleep(0.05)
    if proc.returncode not in (0, 6):  # 6: userdel of a user that is already gone
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")


def _pids_where(pred: Callable[[str, str], bool]) -> list[int]:
    """PIDs whose /proc/PID/stat and /proc/PID/status texts satisfy pred."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
            if pred(stat, status):
                found.append(int(entry))
    return found


def children_of(pid: int) -> list[int]:
    return _pids_where(lambda stat, _: int(stat.rsplit(")", 1)[1].split()[1]) == pid)


def processes_of_uid(uid: int) -> list[int]:
    """Live ones: a zombie waits for its reaper (PID 1 for orphans, which may take seconds)."""
    return _pids_where(lambda _, status: f"\nUid:\t{uid}\t" in status and "\nState:\tZ" not in status)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill_uid(uid: int, timeout: float = 5.0) -> None:
    """Kill every process of uid until none is left alive."""
    deadline = time.monotonic() + timeout
    while (pids := processes_of_uid(uid)) and time.monotonic() < deadline:
        _kill(pids)
        time.sleep(0.02)


class SSHDNode:
    """One node: user sshnodeN, its home, and an sshd on 127.0.0.N:22 that trusts key_path."""

    def __init__(self, n: int, lock_fd: int, key_path: str,
                 options: Optional[Mapping[str, str]] = None):
        self.n, self._lock_fd = n, lock_fd
        self.options = dict(options or {})  # sshd_config keywords, in place of the defaults
        self.ip = f"127.0.0.{n}"
        self.user = f"sshnode{n}"
        self.key_path = key_path
        self.dir = tempfile.mkdtemp(prefix=f"sshd-{n}-")
        self._proc: Optional[subprocess.Popen] = None
        self._timer: Optional[threading.Timer] = None

    def setup(self, delay_s: float) -> None:
        """Make the user and the host key; start sshd now or after delay_s seconds."""
        self._make_user()
        self.authorize(self.key_path + ".pub")
        self._new_host_key()
        if delay_s:
            self._timer = threading.Timer(delay_s, self.start)
            self._timer.start()
        else:
            self.start()

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    @property
    def home(self) -> str:
        return pwd.getpwnam(self.user).pw_dir

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.user).pw_uid

    def _make_user(self) -> None:
        """A fresh user with a fresh home; `usermod -p '*'` unlocks it for sshd without PAM."""
        with contextlib.suppress(KeyError):
            pwd.getpwnam(self.user)  # left over by a killed session: start over
            self._delete_user()
        _retry_account_tool(["useradd", "-m", "-s", "/bin/bash", self.user])
        _retry_account_tool(["usermod", "-p", "*", self.user])

    def _delete_user(self) -> None:
        _kill_uid(self.uid)
        _retry_account_tool(["userdel", "-r", "-f", self.user])  # -f: zombies may remain

    def write(self, relpath: str, text: str, mode: int = 0o644) -> str:
        """Write a file into the node's home, owned by its user; returns its path."""
        path = os.path.join(self.home, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        subprocess.run(["chown", "-R", f"{self.user}:", self.home], check=True)
        return path

    def authorize(self, public_key_path: str) -> None:
        with open(public_key_path) as f:
            key = f.read()
        path = os.path.join(self.home, ".ssh", "authorized_keys")
        old = open(path).read() if os.path.exists(path) else ""
        self.write(".ssh/authorized_keys", old + key, 0o600)
        os.chmod(os.path.dirname(path), 0o700)

    def _new_host_key(self) -> None:
        key = os.path.join(self.dir, "host_ed25519")
        for path in (key, key + ".pub"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)

    def _config(self) -> str:
        options = {
            "ListenAddress": self.ip, "Port": "22",
            "HostKey": f"{self.dir}/host_ed25519", "PidFile": f"{self.dir}/sshd.pid",
            "AllowUsers": self.user, "AuthorizedKeysFile": ".ssh/authorized_keys",
            "PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no", "UsePAM": "no",
            "MaxStartups": "100:30:200", "MaxSessions": "64",
            # the default post-quantum KEX is slow here; the runner offers both curve25519 names
            "KexAlgorithms": "curve25519-sha256,curve25519-sha256@libssh.org",
            "PermitUserEnvironment": "PATH",  # lets a test hide rsync from the node's shell
            **self.options,
        }
        path = os.path.join(self.dir, "sshd_config")
        with open(path, "w") as f:
            f.write("".join(f"{name} {value}\n" for name, value in options.items()))
        return path

    def start(self) -> None:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
        with open(os.path.join(self.dir, "sshd.log"), "ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", self._config()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        if not wait_banner(self.ip):  # stop() cleans up
            raise RuntimeError(f"sshd on {self.ip} did not start: {self.log()}")

    def log(self) -> str:
        with open(os.path.join(self.dir, "sshd.log"), errors="replace") as f:
            return f.read()[-2000:]

    def connections(self) -> list[int]:
        """One sshd child of the listener per open TCP connection."""
        return children_of(self.pid) if self.pid else []

    def stop_sshd(self) -> None:
        """Stop the listener by its PID, then its connections and the user's processes."""
        if self._timer:
            self._timer.cancel()
            self._timer.join()
        if self._proc:
            conns = self.connections()
            self._proc.kill()
            self._proc.wait()
            _kill(conns)
            self._proc = None
        with contextlib.suppress(KeyError):
            _kill_uid(self.uid)

    def restart_with_new_host_key(self) -> None:
        """What a replaced machine on the same address looks like to a client."""
        self.stop_sshd()
        self._new_host_key()
        self.start()

    def stop(self) -> None:
        """Stop everything the node runs and delete its user, home and files; idempotent."""
        if self._lock_fd is None:
            return
        try:
            self.stop_sshd()
            with contextlib.suppress(KeyError):
                self._delete_user()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            _unlock_n(self.n, self._lock_fd)
            self._lock_fd = None


def make_key(directory: str, kind: str) -> str:
    """A passphrase-less key pair of `kind` (ed25519, ecdsa, rsa), private part 0600."""
    path = os.path.join(directory, f"id_{kind}")
    extra = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", "test", "-f", path],
                   check=True)
    os.chmod(path, 0o600)
    return path


@pytest.fixture(scope="session")
def key_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="ssh-test-keys-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ssh_key(key_dir) -> str:
    """The session's ed25519 key pair (path of the private half); every node trusts it."""
    return make_key(key_dir, "ed25519")


@pytest.fixture
def sshd_node(ssh_key) -> Iterator[Callable[..., SSHDNode]]:
    """Factory: `sshd_node(delay_s=0, options={})` starts a node (its sshd after delay_s seconds),
    options being sshd_config keywords and values that replace or add to the defaults."""
    nodes: list[SSHDNode] = []

    def start(delay_s: float = 0.0, options: Optional[Mapping[str, str]] = None) -> SSHDNode:
        node = SSHDNode(*_lock_free_n(), ssh_key, options)
        nodes.append(node)  # stopped at the end even if its setup fails halfway
        node.setup(delay_s)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def free_loopback_ip() -> Iterator[str]:
    """A loopback address, from the node range, where nothing listens (held for the test)."""
    n, fd = _lock_free_n()
    yield f"127.0.0.{n}"
    _unlock_n(n, fd)


def _relay(host: str, port: int) -> None:
    """Copy stdin to the socket and the socket to stdout until either side ends."""
    assert_loopback(host)
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError as e:
        sys.exit(f"relay: cannot connect to {host}:{port}: {e}")
    sock.settimeout(None)

    def upstream() -> None:
        while data := os.read(0, 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    while data := sock.recv(65536):
        os.write(1, data)


if __name__ == "__main__" and sys.argv[1:2] == ["relay"]:
    _relay(sys.argv[2], int(sys.argv[3]))
