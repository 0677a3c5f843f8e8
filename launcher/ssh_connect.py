"""Opening an SSH connection to a node, and the OpenSSH command line that reaches it the same way.

Keys are read as OpenSSH would (a key others may read is refused), host keys are trusted on first
use into the cluster's own known_hosts file, a ProxyCommand (bastion) is honoured, curve25519 is
offered under its RFC 8731 name too, and every failure becomes one SSHError line naming the node
and the cause, within the connect timeout.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import select
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import paramiko

from launcher.errors import (
    SSHAuthRefused, SSHHostKeyChanged, SSHKeyFileError, SSHNoCommonAlgorithm, SSHUnreachable,
)


CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 15  # with TCP_USER_TIMEOUT: a dead peer breaks the connection in about a minute
TCP_USER_TIMEOUT_MS = 45_000

# paramiko logs each failed handshake with a traceback; our errors say it in one line.
# To debug a connection, set propagate back to True and configure logging.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


@dataclass(frozen=True, kw_only=True)
class SSHTarget:
    """How to reach one node: what a paramiko connection and an OpenSSH command line both need."""

    host: str
    user: str
    key_path: str
    known_hosts: str  # the cluster's own known_hosts file; unknown hosts are trusted into it
    port: int = 22
    proxy_command: Optional[str] = None  # as OpenSSH's ProxyCommand: %h %p %r %% are substituted
    node_name: str = ""  # for messages, e.g. "head local-ab12 (127.0.0.5)"

    @property
    def who(self) -> str:
        """The node as messages name it, always with its address."""
        if not self.node_name:
            return self.host
        return self.node_name if self.host in self.node_name else f"{self.node_name} ({self.host})"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The host's name in known_hosts, written as OpenSSH writes it."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def ssh_command_line(target: SSHTarget, extra_options: Sequence[str] = (), *,
                     connect_timeout: float = CONNECT_TIMEOUT_S) -> list[str]:
    """The OpenSSH argv that reaches the node as the runner does, ending with the host.

    Same key, user, port, proxy and known_hosts; the host key is checked strictly, since the runner
    recorded it on first use (connect a runner first). Never prompts (BatchMode) and ignores
    ssh_config files, as paramiko does. `cluster attach` appends a remote command; port forwarding
    passes e.g. ["-N", "-L", "8265:localhost:8265"] as extra_options.
    """
    return [*ssh_options(target, connect_timeout), *extra_options, target.host]


def ssh_options(target: SSHTarget, connect_timeout: float = CONNECT_TIMEOUT_S) -> list[str]:
    """ssh_command_line without the host: what rsync's -e takes."""
    options = {
        "IdentitiesOnly": "yes",
        "BatchMode": "yes",
        "UserKnownHostsFile": f'"{os.path.expanduser(target.known_hosts)}"',
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "ConnectTimeout": str(max(1, round(connect_timeout))),
        "ServerAliveInterval": str(KEEPALIVE_S),
        "ServerAliveCountMax": "4",
    }
    if target.proxy_command:
        options["ProxyCommand"] = target.proxy_command  # OpenSSH substitutes %h %p itself
    argv = ["ssh", "-F", "/dev/null", "-i", os.path.expanduser(target.key_path)]
    argv += ["-p", str(target.port), "-l", target.user]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    return argv


def load_private_key(target: SSHTarget) -> paramiko.PKey:
    """Read the key as OpenSSH would, refusing a key file that others may read."""
    path = os.path.expanduser(target.key_path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SSHKeyFileError(
            target.who, f"SSH private key {path} not found; set auth.ssh_private_key to a key file"
        ) from None
    if mode & 0o077:
        raise SSHKeyFileError(
            target.who,
            f"SSH private key {path} is accessible by others (mode {mode & 0o777:03o}), which "
            f"OpenSSH refuses too; run: chmod 600 {path}",
        )
    try:
        return paramiko.PKey.from_path(path)
    except (TypeError, paramiko.PasswordRequiredException):
        cause = "is protected by a passphrase; auth.ssh_private_key needs a key without one"
    except OSError as e:
        cause = f"cannot be read: {e.strerror}"
    except (ValueError, paramiko.SSHException, paramiko.pkey.UnknownKeyType):
        cause = "is not an OpenSSH or PEM private key (ed25519, ecdsa or rsa)"
    raise SSHKeyFileError(target.who, f"SSH private key {path} {cause} (auth.ssh_private_key)")


def check_host_key(target: SSHTarget, key: paramiko.PKey) -> None:
    """Trust on first use: record an unknown host's key; refuse a known host that shows another."""
    path = os.path.expanduser(target.known_hosts)
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # the runners of a cluster share the file
        known = paramiko.HostKeys(path).lookup(target.known_hosts_name)
        if known is None:
            f.write(f"{target.known_hosts_name} {key.get_name()} {key.get_base64()}\n")
            return
        if known.get(key.get_name()) == key:
            return
    old = ", ".join(f"{k.get_name()} {k.fingerprint}" for k in known.values())
    raise SSHHostKeyChanged(
        target.who,
        f"{path} has {old}, the node now shows {key.get_name()} {key.fingerprint} (or someone "
        f"is intercepting the connection); if the machine was replaced, remove its line from "
        f"{path}: ssh-keygen -R '{target.known_hosts_name}' -f {path}",
    )


class _ProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand, but run by the shell as OpenSSH runs it, ending at EOF instead of
    spinning until the timeout, reaped when closed, and able to say why it failed."""

    def __init__(self, command: str):  # paramiko's would pipe stderr and never read it
        self.cmd = command
        self.timeout = None
        self._lock = threading.Lock()  # paramiko's thread may close it while failure() reads
        self._killed = False
        self._last_line = ""
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [os.environ.get("SHELL") or "/bin/sh", "-c", f"exec {command}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0,
        )

    def recv(self, size: int) -> bytes:
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        if not ready:
            raise socket.timeout()
        return os.read(self.process.stdout.fileno(), size)  # b"" at EOF: paramiko sees EOF

    def close(self) -> None:
        with self._lock:
            if self._stderr.closed:
                return
            self.process.stdin.close()  # `ssh -W` ends at EOF; a proxy that failed is ending
            try:
                self.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self._killed = True
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()
            self._last_line = self._stderr_line()
            self._stderr.close()

    def failure(self) -> Optional[str]:
        """How the command ended by itself, if it did: its exit code and last line of stderr."""
        try:
            code = self.process.wait(timeout=0.5)  # it sent EOF: exiting
        except subprocess.TimeoutExpired:
            return None
        with self._lock:
            if self._killed:
                return None
            line = self._last_line if self._stderr.closed else self._stderr_line()
        return f"exited with code {code}" + (f": {line}" if line else "")

    def _stderr_line(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else ""


def _with_rfc_curve25519(kex: tuple[str, ...]) -> tuple[str, ...]:
    """kex with curve25519-sha256 (RFC 8731) before curve25519-sha256@libssh.org, the same
    algorithm under its older name, which is all paramiko (to 5.1 at least) offers: a server
    configured with the RFC name alone would refuse us."""
    if "curve25519-sha256@libssh.org" not in kex or "curve25519-sha256" in kex:
        return kex
    i = kex.index("curve25519-sha256@libssh.org")
    return kex[:i] + ("curve25519-sha256",) + kex[i:]


# KEXINIT's eight name-lists in order (RFC 4253 7.1): what each negotiates, and our offer of it
_NEGOTIATED = (
    ("key-exchange", "preferred_kex"), ("host key", "preferred_keys"),
    ("cipher", "preferred_ciphers"), ("cipher", "preferred_ciphers"),
    ("MAC", "preferred_macs"), ("MAC", "preferred_macs"),
    ("compression", "preferred_compression"), ("compression", "preferred_compression"),
)


class _Transport(paramiko.Transport):
    """paramiko's Transport, for our connections only: it also offers curve25519 by its RFC name,
    and keeps the server's offer so that a failed negotiation can say what the server wanted."""

    _preferred_kex = _with_rfc_curve25519(paramiko.Transport._preferred_kex)
    _kex_info = {**paramiko.Transport._kex_info}
    if "curve25519-sha256@libssh.org" in _kex_info:
        _kex_info.setdefault("curve25519-sha256", _kex_info["curve25519-sha256@libssh.org"])

    server_offer: Optional[list[list[str]]] = None

    def _parse_kex_init(self, m: paramiko.Message) -> None:
        offer = paramiko.Message(m.asbytes())  # a copy: paramiko reads m itself
        offer.get_bytes(16)  # the cookie
        self.server_offer = [offer.get_list() for _ in _NEGOTIATED]
        super()._parse_kex_init(m)

    def no_common_algorithm(self, server: str) -> Optional[str]:
        """The first kind of algorithm the server's offer and ours share none of, in words."""
        for (kind, attribute), offered in zip(_NEGOTIATED, self.server_offer or ()):
            theirs = [a for a in offered if not a.startswith(("ext-info-", "kex-strict-"))]
            ours = getattr(self, attribute)
            if not set(theirs) & set(ours):
                return (f"no common {kind} algorithm with {server}: the server offers "
                        f"{', '.join(theirs)}; we offer {', '.join(ours)}")
        return None


def _expand_proxy(target: SSHTarget) -> str:
    values = {"h": target.host, "p": str(target.port), "r": target.user, "%": "%"}
    return re.sub(r"%([hpr%])", lambda m: values[m.group(1)], target.proxy_command)


def _open_socket(target: SSHTarget, timeout: float):
    """A TCP connection to the node, or the proxy command's pipes."""
    if target.proxy_command:
        return _ProxyCommand(_expand_proxy(target))
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except socket.gaierror as e:
        raise SSHUnreachable(
            target.who, f"cannot resolve host name {target.host}: {e.strerror}") from None
    except ConnectionRefusedError:
        raise SSHUnreachable(
            target.who, f"connection refused by {target.address} (sshd not running yet, or a "
            f"firewall rejects port {target.port})") from None
    except TimeoutError:
        raise SSHUnreachable(
            target.who, f"no answer from {target.address} within {timeout:g}s (node still "
            f"booting, wrong address, or a firewall drops port {target.port})") from None
    except OSError as e:
        raise SSHUnreachable(
            target.who, f"cannot connect to {target.address}: {e.strerror or e}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else ~40 ms per command
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: data unacknowledged this long = dead peer
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
    return sock


def _handshake_cause(
    transport: paramiko.Transport, target: SSHTarget, error: Optional[Exception], timeout: float
) -> str:
    """Why the SSH handshake failed, in words; error None: start_client ran out of time."""
    sock = transport.sock
    if isinstance(sock, _ProxyCommand) and (why := sock.failure()):
        return f"proxy command `{sock.cmd}` {why}"
    root = error and (error.__context__ or error)  # paramiko wraps the socket error it met
    if error is None or isinstance(root, TimeoutError):
        if not transport.remote_version:
            return (f"no SSH banner from {target.address} within {timeout:.3g}s (the port is "
                    "open but sshd does not answer: node still booting?)")
        return f"SSH handshake with {target.address} did not finish within {timeout:.3g}s"
    if isinstance(root, (EOFError, ConnectionError)):
        return (f"{target.address} closed the connection during the SSH handshake (sshd still "
                "starting, or too many connections at once)")
    return f"SSH handshake with {target.address} failed: {' '.join(str(error).split())}"


def _handshake(transport: _Transport, target: SSHTarget, timeout: float) -> None:
    transport.banner_timeout = transport.handshake_timeout = timeout
    try:
        transport.start_client(timeout=timeout)
    except (paramiko.SSHException, EOFError, OSError) as e:
        if mismatch := transport.no_common_algorithm(target.address):
            raise SSHNoCommonAlgorithm(target.who, mismatch) from None
        raise SSHUnreachable(target.who, _handshake_cause(transport, target, e, timeout)) from None
    if not transport.initial_kex_done:  # start_client gives up silently at its timeout
        raise SSHUnreachable(target.who, _handshake_cause(transport, target, None, timeout))


def _authenticate(transport: paramiko.Transport, target: SSHTarget, key: paramiko.PKey) -> None:
    login = f"{target.user}@{target.address}"
    try:
        more = transport.auth_publickey(target.user, key)
    except paramiko.BadAuthenticationType as e:
        raise SSHAuthRefused(
            target.who, f"{login} accepts no SSH keys (only {', '.join(e.allowed_types)})"
        ) from None
    except paramiko.AuthenticationException as e:
        if transport.is_active() and "timeout" not in str(e):
            raise SSHAuthRefused(
                target.who, f"{login} refused the key {target.key_path}: check auth.ssh_user, and "
                f"that the node authorizes this key (~{target.user}/.ssh/authorized_keys)"
            ) from None
        raise SSHUnreachable(target.who, f"{login}: connection lost during authentication") from None
    if more:
        raise SSHAuthRefused(target.who, f"{login} accepted the key but also wants {', '.join(more)}")


def open_transport(target: SSHTarget, timeout: float = CONNECT_TIMEOUT_S) -> paramiko.Transport:
    """An authenticated connection to the node, or an SSHError, within about `timeout` seconds."""
    deadline = time.monotonic() + timeout
    key = load_private_key(target)
    transport = _Transport(_open_socket(target, timeout))
    try:
        _handshake(transport, target, max(deadline - time.monotonic(), 0.1))
        check_host_key(target, transport.get_remote_server_key())
        transport.auth_timeout = max(deadline - time.monotonic(), 0.1)
        _authenticate(transport, target, key)
    except BaseException:
        transport.close()
        raise
    transport.set_keepalive(KEEPALIVE_S)
    return transport
