"""The supervisor of one `local` node: `python -m launcher.providers.local_node NODE_DIR`.

It is the leader of the node's process group, so killing that group ends the node and everything
it started. It serves commands on the unix socket NODE_DIR/node.sock; a client proves it knows the
key in NODE_DIR/node.key (mode 0600). Each connection carries one request
{"cmd": str, "env": dict, "timeout": float | None} and gets ("out", bytes) messages as output
arrives, then ("exit", code). The commands inherit this process's environment, which the provider
prepared as the node's environment.

Below the supervisor are the provider's side of it: connecting, waiting until it is ready, and
finding and killing a node's processes through /proc, knowing that pids get reused.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from typing import Iterator, NamedTuple, Optional

from launcher.errors import ProviderError

SOCKET_NAME = "node.sock"
KEY_NAME = "node.key"
TIMEOUT_EXIT_CODE = 124
OUTPUT_GRACE_S = 0.5  # after bash exits, how long to wait for output still in the pipe
WATCHDOG_PERIOD_S = 1.0


def main(argv: list[str]) -> None:
    node_dir = os.path.abspath(argv[0])
    # Without a controlling terminal nothing should hang us up; a no-op handler (unlike SIG_IGN)
    # is reset to the default in the commands we start, so they still react to SIGHUP.
    signal.signal(signal.SIGHUP, lambda signum, frame: None)
    os.chdir(node_dir)  # the socket is bound by relative name: unix socket paths are short
    key = _write_key(KEY_NAME)
    threading.Thread(target=_watch_node_dir, args=(node_dir,), daemon=True).start()
    with Listener(SOCKET_NAME, family="AF_UNIX", authkey=key) as listener:
        while True:
            try:
                conn = listener.accept()
            except (AuthenticationError, EOFError, OSError) as e:  # a failed or abandoned handshake
                print(f"local_node: rejected a connection: {e!r}", file=sys.stderr, flush=True)
                continue
            threading.Thread(target=_serve, args=(conn, node_dir), daemon=True).start()


def _write_key(path: str) -> bytes:
    """A fresh random key, readable only by the owner: it is the only credential of the node.

    Written under a temporary name and renamed, so a reader finds either no key or all of it.
    """
    key = secrets.token_bytes(32)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    os.replace(path + ".tmp", path)
    return key


def _watch_node_dir(node_dir: str) -> None:
    """End the node when its directory is removed (e.g. its creator crashed before recording it)."""
    while os.path.isdir(node_dir):
        time.sleep(WATCHDOG_PERIOD_S)
    if os.getpgrp() == os.getpid():  # only a group we lead is the node's
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(1)


def _serve(conn: Connection, node_dir: str) -> None:
    """Run one request; a connection that closes without a request was a readiness probe."""
    with conn:
        try:
            request = conn.recv()
        except EOFError:
            return
        try:
            code = _run(request, conn, node_dir)
        except OSError as e:  # bash could not be started
            _Sender(conn).send_output(f"local_node: {e}\n".encode())
            code = 127
        with contextlib.suppress(OSError):  # the client left; the command ran anyway, as over ssh
            conn.send(("exit", code))


class _Sender:
    """Sends output chunks from the pump thread and stops once the exit code went out."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self._lock = threading.Lock()
        self._open = True

    def send_output(self, chunk: bytes) -> None:
        with self._lock:
            if not self._open:
                return
            try:
                self._conn.send(("out", chunk))
            except OSError:
                self._open = False

    def close(self) -> None:
        with self._lock:
            self._open = False


def _run(request: dict, conn: Connection, node_dir: str) -> int:
    proc = subprocess.Popen(
        ["bash", "-c", request["cmd"]],
        cwd=node_dir,
        env={**os.environ, **request.get("env", {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    sender = _Sender(conn)
    pump = threading.Thread(target=_pump, args=(proc.stdout, sender), daemon=True)
    pump.start()
    timed_out = threading.Event()
    timer = None
    if request.get("timeout") is not None:
        timer = threading.Timer(request["timeout"], _kill_tree, args=(proc.pid, timed_out))
        timer.daemon = True
        timer.start()
    code = proc.wait()
    if timer:
        timer.cancel()
    # A background process that kept our stdout open must not hold the command's result hostage.
    pump.join(OUTPUT_GRACE_S)
    sender.close()
    return TIMEOUT_EXIT_CODE if timed_out.is_set() else code


def _pump(stream, sender: _Sender) -> None:
    """Forward output as it arrives; keep draining after the client left so writers never block."""
    with stream:
        while chunk := os.read(stream.fileno(), 65536):
            sender.send_output(chunk)


def _kill_tree(pid: int, timed_out: threading.Event) -> None:
    """Kill a timed-out command and its descendants, but not the rest of the node's group."""
    timed_out.set()
    for victim in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


# --- the provider's side: /proc, then reaching and ending a node ---


class ProcStat(NamedTuple):
    pid: int
    state: str
    ppid: int
    pgrp: int
    start_ticks: int  # clock ticks after boot: with the pid, identifies a process despite reuse


def proc_stat(pid: int) -> Optional[ProcStat]:
    """The process's /proc/PID/stat fields we use, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces and ')'
    return ProcStat(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[19]))


def all_processes() -> Iterator[ProcStat]:
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := proc_stat(int(name))):
            yield stat


def descendants(pid: int) -> list[int]:
    """Pids of the descendants of `pid` (orphans that were reparented are no longer among them)."""
    children: dict[int, list[int]] = {}
    for p in all_processes():
        children.setdefault(p.ppid, []).append(p.pid)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@functools.cache
def boot_id() -> str:
    """Changes on every boot: pids recorded before a reboot mean nothing after it."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def connect(node_dir: str) -> Connection:
    """Connect to the node's supervisor through /proc/self/fd, which keeps the socket path far
    below the 108-byte limit of unix socket addresses however deep node_dir is."""
    with open(os.path.join(node_dir, KEY_NAME)) as f:
        key = bytes.fromhex(f.read())
    dir_fd = os.open(node_dir, os.O_PATH | os.O_DIRECTORY)
    try:
        return Client(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}", family="AF_UNIX", authkey=key)
    finally:
        os.close(dir_fd)


def leader_alive(pgid: Optional[int], start_ticks: Optional[int], boot: str) -> bool:
    """Whether the supervisor recorded as (pgid, start_ticks, boot) still runs."""
    if pgid is None or boot != boot_id():
        return False
    stat = proc_stat(pgid)
    return stat is not None and stat.state not in "ZX" and stat.start_ticks == start_ticks


def signal_group(pgid: Optional[int], start_ticks: Optional[int], boot: str, sig: int) -> bool:
    """Signal the node's process group if anything of it may remain; False if nothing does.

    While any member lives, the kernel does not reuse the group's number, so the only doubt is a
    group that emptied: then the leader's pid may belong to someone else, told by its start time.
    """
    if pgid is None or boot != boot_id():
        return False  # never spawned, or it ended with the previous boot
    leader = proc_stat(pgid)
    if leader is not None and leader.start_ticks != start_ticks:
        return False  # the pid was reused, so the node's group had already emptied
    if pgid <= 1 or pgid == os.getpgrp():
        raise ProviderError(f"local: refusing to kill process group {pgid}, not a node's")
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_groups_gone(pgids: list[int], timeout: float) -> bool:
    """Wait until no live process is left in these groups (zombies do not count)."""
    deadline = time.monotonic() + timeout
    while any(p.pgrp in pgids and p.state not in "ZX" for p in all_processes()):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def wait_ready(node_id: str, node_dir: str, proc: subprocess.Popen, timeout: float) -> None:
    """Return once the supervisor accepts connections; ProviderError if it died or never did."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            connect(node_dir).close()
            return
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
    reason = "did not start" if proc.returncode is None else f"exited with {proc.returncode}"
    raise ProviderError(f"local node {node_id}: supervisor {reason}; see {node_dir}/supervisor.log")


if __name__ == "__main__":
    main(sys.argv[1:])
