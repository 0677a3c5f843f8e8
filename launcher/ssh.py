"""The SSH command runner for nodes reached over SSH (ssh, aws, gcp, azure providers).

One persistent paramiko connection per node carries every command, each on its own channel, so a
command costs a round trip instead of a handshake. Host keys are trusted on first use into the
cluster's own known_hosts file, which OpenSSH (rsync, `cluster attach`) then checks strictly. Every
failure becomes one SSHError line naming the node and the cause, within the connect timeout.
"""

from __future__ import annotations

import codecs
import os
import re
import shlex
import socket
import threading
import time
from typing import Callable, Mapping, Optional, Sequence

import paramiko

from launcher.command_runner import CommandResult, CommandRunner, OutputSink
from launcher.errors import (
    RsyncError, SSHAuthRefused, SSHUnreachable,
)
from launcher.rsync import home_relative, transfer

from launcher.ssh_connect import CONNECT_TIMEOUT_S, SSHTarget, open_transport, ssh_command_line, ssh_options

OUTPUT_TAIL_CHARS = 4096
MAX_CHANNELS = 8  # commands at once per connection; sshd's default MaxSessions is 10
POLL_S = 0.25
EXIT_DRAIN_S = 1.0  # output still open this long after the command exited: a background child
REMOTE_KILL_GRACE_S = 5
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 5.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def rsync(target: SSHTarget, src: str, dst: str, *, upload: bool, excludes: Sequence[str] = (),
          filters: Sequence[str] = (), connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Copy src to dst with rsync over OpenSSH; the remote path is dst when upload, else src.

    Paths as rsync takes them: a trailing slash on a directory copies its contents. The parent of
    dst is created; `~` in the remote path is the user's home. The host must be in known_hosts
    already (connect an SSHCommandRunner first). launcher.rsync explains excludes and filters
    (`dir-merge,- .gitignore` skips what .gitignore files list).
    """
    host = f"[{target.host}]" if ":" in target.host else target.host
    transfer(ssh_options(target, connect_timeout), f"{target.user}@{host}", src, dst,
             node=target.who, upload=upload, excludes=excludes, filters=filters)


def remote_command(
    command: str, env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None
) -> tuple[str, bytes]:
    """The line sshd hands to the user's shell, and what to send on its stdin.

    A bash login shell, so the node's PATH applies. env is exported by that shell from lines sent
    on stdin: sshd refuses most variables sent through the protocol (AcceptEnv), and on stdin the
    values (tokens) show in no argv on the node. GNU timeout, so a command that times out dies on
    the node too, not only its channel.
    """
    for name in env or {}:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}")
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
    line = "bash --login -c " + shlex.quote(('eval "$(cat)"; ' if exports else "") + command)
    if timeout is not None:
        line = f"timeout -k {REMOTE_KILL_GRACE_S} {max(timeout, 0.001):.3f} {line}"
    return line, exports.encode()


def _stream(channel: paramiko.Channel, deadline: Optional[float], on_output: Optional[OutputSink]):
    """Pass output on as it arrives until EOF; returns (exit status, or None past the deadline;
    the output's tail)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    while True:
        exited = channel.exit_status_ready()
        wait = EXIT_DRAIN_S if exited else POLL_S
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                if exited:
                    break
                return None, tail
        channel.settimeout(wait)
        try:
            data = channel.recv(65536)
        except socket.timeout:
            if exited:  # it exited, and something it started in the background holds its output
                break
            continue
        text = decoder.decode(data, final=not data)
        if text and on_output:
            on_output(text)
        tail = (tail + text)[-OUTPUT_TAIL_CHARS:]
        if not data:
            break
    left = None if deadline is None else max(deadline - time.monotonic(), 0)
    return (channel.exit_status if channel.status_event.wait(left) else None), tail


def _short(command: str) -> str:
    lines = command.strip().splitlines() or [""]
    return lines[0][:80] + (" ..." if len(lines[0]) > 80 or len(lines) > 1 else "")


class SSHCommandRunner(CommandRunner):
    """Runs commands on one node over one persistent SSH connection; copies files with rsync.

    Thread-safe: threads share the connection, each command on its own channel (at most
    MAX_CHANNELS at once; more wait their turn). A dead connection is replaced by the next
    command; a command that was running on it raises SSHUnreachable.
    """

    def __init__(self, target: SSHTarget, connect_timeout: float = CONNECT_TIMEOUT_S):
        self.target = target
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._transport: Optional[paramiko.Transport] = None
        self._channels = threading.BoundedSemaphore(MAX_CHANNELS)

    def connect(self, timeout: Optional[float] = None) -> paramiko.Transport:
        """The open connection, made now (one attempt) if there is none or it died."""
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                if self._transport is not None:
                    self._transport.close()
                    self._transport = None
                self._transport = open_transport(self.target, timeout or self.connect_timeout)
            return self._transport

    def wait_for_ssh(self, timeout: float,
                     on_attempt: Optional[Callable[[int, str], None]] = None) -> None:
        """Connect, retrying with backoff (0.5 s doubling to 5 s) for up to `timeout` seconds.

        Retries what a booting node shows: no answer, refusal, a dropped connection, a refused key
        (cloud-init installs it late). A bad key file or a changed host key fail at once.
        on_attempt(n, cause) hears of each failed attempt.
        """
        deadline = time.monotonic() + timeout
        delay = BACKOFF_FIRST_S
        attempt = 0
        while True:
            attempt += 1
            try:
                self.connect(min(self.connect_timeout, max(deadline - time.monotonic(), 0.5)))
                return
            except (SSHUnreachable, SSHAuthRefused) as e:
                last = e.cause
            if on_attempt:
                on_attempt(attempt, last)
            left = deadline - time.monotonic()
            if left <= 0:
                raise SSHUnreachable(
                    self.target.who,
                    f"no SSH connection after {timeout:g}s ({attempt} attempts); last error: {last}",
                )
            time.sleep(min(delay, left))
            delay = min(delay * 2, BACKOFF_MAX_S)

    def wait_ready(self, timeout: float) -> None:
        self.wait_for_ssh(timeout)

    def shell_argv(self, command: Optional[str] = None, port_forwards: Sequence[int] = ()) -> list[str]:
        """`ssh -t` to the node, running `command` in a login shell (or an interactive one).

        Connects first, so the host key is known to OpenSSH and SSH failures read as one line.
        ExitOnForwardFailure: a local port already in use fails the command instead of silently
        forwarding nothing. Ports are forwarded to the node's own address, where the runtime
        listens (it never binds localhost or 0.0.0.0).
        """
        self.connect()
        forwards = [f"-L{port}:{self.target.host}:{port}" for port in port_forwards]
        options = ["-t", *forwards, *(["-o", "ExitOnForwardFailure=yes"] if forwards else [])]
        remote = [remote_command(command)[0]] if command else []
        return [*ssh_command_line(self.target, options, connect_timeout=self.connect_timeout), *remote]

    def run(
        self,
        command: str,
        *,
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        on_output: Optional[OutputSink] = None,
    ) -> CommandResult:
        line, stdin = remote_command(command, env, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._channels:
            channel = self._start(command, line)
            try:
                channel.sendall(stdin)
                channel.shutdown_write()  # stdin at EOF: a command that reads it must not hang
                code, tail = _stream(channel, deadline, on_output)
            except (paramiko.SSHException, EOFError):  # the connection died under us
                code, tail = -1, ""
            finally:
                channel.close()
        if code is None:
            return CommandResult(124, tail)
        if code == -1 and not channel.eof_received:  # closed with neither exit status nor EOF
            raise SSHUnreachable(
                self.target.who, f"connection lost while running `{_short(command)}`")
        return CommandResult(255 if code == -1 else code, tail)  # -1: killed by a signal, as ssh

    def _start(self, command: str, line: str) -> paramiko.Channel:
        """A channel running `line`. A connection that fails before the command starts is
        replaced once: nothing ran on it yet."""
        for _ in range(2):
            transport = self.connect()
            try:
                channel = transport.open_session(timeout=self.connect_timeout)
                channel.set_combine_stderr(True)
                channel.exec_command(line)
                return channel
            except paramiko.ChannelException as e:  # refused by sshd; the connection is fine
                raise SSHUnreachable(self.target.who, f"sshd refused a new session: {e}") from None
            except (paramiko.SSHException, EOFError, OSError) as e:
                error = " ".join(str(e).split()) or type(e).__name__
                self._drop(transport)
        raise SSHUnreachable(
            self.target.who, f"cannot start `{_short(command)}`: connection failed: {error}")

    def _drop(self, transport: paramiko.Transport) -> None:
        """Forget a broken connection, unless another thread replaced it already."""
        with self._lock:
            if self._transport is transport:
                self._transport = None
        transport.close()

    def put(self, local_path: str, remote_path: str, *, excludes: Sequence[str] = (),
            filters: Sequence[str] = ()) -> None:
        """A directory becomes remote_path itself (files only there stay); parents are created.
        excludes and filters: see launcher.rsync."""
        if os.path.isdir(os.path.expanduser(local_path)):
            local_path, remote_path = local_path.rstrip("/") + "/", remote_path.rstrip("/") + "/"
        self.connect()  # records the host key for OpenSSH, or says in one line why it cannot
        rsync(self.target, local_path, remote_path, upload=True, excludes=excludes,
              filters=filters, connect_timeout=self.connect_timeout)

    def get(self, remote_path: str, local_path: str) -> None:
        """A directory becomes local_path itself (files only there stay); parents are created."""
        kind = self._remote_kind(remote_path)
        if kind == "missing":
            raise RsyncError(
                self.target.who, f"cannot download {remote_path}: no such file or directory there")
        if kind == "dir":
            remote_path, local_path = remote_path.rstrip("/") + "/", local_path.rstrip("/") + "/"
        rsync(self.target, remote_path, local_path, upload=False,
              connect_timeout=self.connect_timeout)

    def _remote_kind(self, remote_path: str) -> str:
        """dir, file or missing."""
        path = shlex.quote(home_relative(remote_path))
        result = self.run(f"if [ -d {path} ]; then echo dir; elif [ -e {path} ]; then echo file; "
                          "else echo missing; fi")
        words = result.output_tail.split()  # the last word: a login profile may print before it
        if result.exit_code != 0 or not words:
            output = " ".join(result.output_tail.split())[-200:]
            raise RsyncError(self.target.who, f"cannot inspect {remote_path}: {output}")
        return words[-1]

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None


KNOWN_HOSTS_DIR = "~/.cluster-launcher/known_hosts"


def known_hosts_path(cluster_name: str) -> str:
    """Per-cluster known_hosts: a replaced machine in one cluster never affects another."""
    return os.path.join(os.path.expanduser(KNOWN_HOSTS_DIR), cluster_name)


class SSHRunners:
    """One persistent runner per node, built from the cluster's `auth`: what every provider whose
    nodes are reached over SSH hands out from command_runner()."""

    def __init__(self, cluster_name: str, auth: Mapping):
        self._cluster_name = cluster_name
        self._auth = auth
        self._runners: dict[str, SSHCommandRunner] = {}
        self._lock = threading.Lock()

    def get(self, node_id: str, host: str, key_path: str, node_name: str) -> SSHCommandRunner:
        with self._lock:
            if node_id not in self._runners:
                self._runners[node_id] = SSHCommandRunner(SSHTarget(
                    host=host, user=self._auth.get("ssh_user", "ubuntu"),
                    key_path=os.path.expanduser(key_path),
                    known_hosts=known_hosts_path(self._cluster_name),
                    proxy_command=self._auth.get("ssh_proxy_command"), node_name=node_name))
            return self._runners[node_id]

    def close(self, node_id: str) -> None:
        """Drop the node's connection (it is being terminated)."""
        with self._lock:
            runner = self._runners.pop(node_id, None)
        if runner is not None:
            runner.close()
