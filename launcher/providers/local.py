"""The `local` provider: every node is a process group on this machine.

A node has its own loopback address (127.0.1.2 and up), its own home directory and a supervisor
process (launcher.providers.local_node) that leads its process group and runs its commands. The
records of all local clusters share one state file, `<root>/nodes.json`, so addresses are unique
machine-wide; every read-modify-write holds `<root>/nodes.lock`, and each write replaces the file
atomically. A node is killed only through its recorded process group, after checking that the
group's leader is still the supervisor that was recorded (pids are reused).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing import AuthenticationError
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import fcntl

from launcher.command_runner import CommandResult, CommandRunner, OutputSink
from launcher.errors import CapacityError, CommandFailed, ConfigError, ProviderError, TransientError
from launcher.providers.base import NodeProvider
from launcher.providers.local_node import (
    boot_id,
    connect,
    leader_alive,
    proc_stat,
    signal_group,
    wait_groups_gone,
    wait_ready,
)
from launcher.runtime_install import node_scripts
from launcher.tags import TAG_CLUSTER_NAME, TAG_NODE_TYPE

STATE_DIR_ENV = "CLUSTER_LOCAL_STATE_DIR"
DEFAULT_STATE_DIR = "~/.cluster-launcher/local"
READY_TIMEOUT_S = 30.0
TERM_GRACE_S = 3.0
KILL_WAIT_S = 1.0
OUTPUT_TAIL_CHARS = 4096
NODE_BIN = "bin"  # in the node's home: its own commands, first on its PATH
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def state_root(provider_config: Mapping) -> str:
    """Where the state of all local clusters lives; nodes get it in CLUSTER_LOCAL_STATE_DIR."""
    root = provider_config.get("state_dir") or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return os.path.abspath(os.path.expanduser(root))


class _State:
    """The records of every local node on this machine: {node_id: record}."""

    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, "nodes.json")

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict]:
        """Hold the machine-wide lock; yield the records. Changes are kept only by save(). The
        directory is made here, not before: loading a provider (a dry run) writes nothing."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.root, "nodes.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with open(self.path) as f:
                    nodes = json.load(f)["nodes"]
            except FileNotFoundError:
                nodes = {}
            yield nodes
        finally:
            os.close(fd)  # releases the lock

    def save(self, nodes: dict) -> None:
        """Replace the file in one step, so a crash never leaves half of it. Hold the lock."""
        tmp = self.path + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump({"nodes": nodes}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class LocalNodeProvider(NodeProvider):
    installs_runtime = False  # nodes run this machine's environment: the runtime is already here

    def __init__(self, provider_config: Mapping, cluster_name: str, auth: Optional[Mapping] = None):
        super().__init__(provider_config, cluster_name, auth)
        if not _CLUSTER_NAME.fullmatch(cluster_name):
            raise ConfigError(
                f"cluster_name: {cluster_name!r} must be letters, digits, '.', '_' or '-'"
            )
        self._state = _State(state_root(provider_config))

    def nodes(self, tag_filters: Mapping[str, str]) -> list[str]:
        """Live nodes; one whose supervisor died is a dead VM: cleaned up and not returned."""
        live, dead = [], []
        for r in self._records():
            alive = leader_alive(r["pgid"], r["start_ticks"], r["boot_id"])
            (live if alive else dead).append(r)
        if dead:
            self._destroy(dead, grace_s=0)
        return [
            r["node_id"] for r in live if all(r["tags"].get(k) == v for k, v in tag_filters.items())
        ]

    def node_tags(self, node_id: str) -> dict[str, str]:
        return dict(self._record(node_id)["tags"])

    def set_tags(self, node_id: str, tags: Mapping[str, str]) -> None:
        with self._state.locked() as nodes:
            self._check_known(nodes, node_id)
            nodes[node_id]["tags"].update(tags)
            self._state.save(nodes)

    def internal_ip(self, node_id: str) -> str:
        return self._record(node_id)["ip"]

    def external_ip(self, node_id: str) -> Optional[str]:
        return self._record(node_id)["ip"]

    def command_runner(self, node_id: str) -> "LocalCommandRunner":
        record = self._record(node_id)
        return LocalCommandRunner(node_id, record["node_dir"], _node_env(record, self._state.root))

    def create(
        self, node_type: str, node_config: Mapping, tags: Mapping[str, str], count: int
    ) -> list[str]:
        """Start `count` nodes and wait until each accepts commands; all or none of them."""
        tags = {**tags, TAG_NODE_TYPE: node_type, TAG_CLUSTER_NAME: self.cluster_name}
        started: list[tuple[dict, subprocess.Popen]] = []
        try:
            for _ in range(count):
                started.append(self._start_node(tags))
            for record, proc in started:
                wait_ready(record["node_id"], record["node_dir"], proc, READY_TIMEOUT_S)
        except BaseException:
            self._destroy([record for record, _ in started], grace_s=0)
            raise
        finally:
            for _, proc in started:  # reap our children whenever they exit
                threading.Thread(target=proc.wait, daemon=True).start()
        return [record["node_id"] for record, _ in started]

    def terminate(self, node_ids: Sequence[str]) -> None:
        wanted = set(node_ids)
        self._destroy([r for r in self._records() if r["node_id"] in wanted], TERM_GRACE_S)

    def _records(self) -> list[dict]:
        with self._state.locked() as nodes:
            return [r for r in nodes.values() if r["cluster_name"] == self.cluster_name]

    def _record(self, node_id: str) -> dict:
        with self._state.locked() as nodes:
            self._check_known(nodes, node_id)
            return nodes[node_id]

    def _check_known(self, nodes: dict, node_id: str) -> None:
        if nodes.get(node_id, {}).get("cluster_name") != self.cluster_name:
            raise ProviderError(f"local: no node {node_id!r} in cluster {self.cluster_name!r}")

    def _start_node(self, tags: dict) -> tuple[dict, subprocess.Popen]:
        """Record the node first, then spawn its supervisor, all under the lock.

        Other processes read only under the lock, so they never see a record without its pgid
        unless its creator crashed; such a record is dead to nodes() and gets cleaned up.
        """
        with self._state.locked() as nodes:
            record = self._new_record(nodes, tags)
            nodes[record["node_id"]] = record
            self._state.save(nodes)
            try:
                proc = self._spawn(record)
            except OSError as e:
                del nodes[record["node_id"]]
                self._state.save(nodes)
                shutil.rmtree(record["node_dir"], ignore_errors=True)
                raise ProviderError(
                    f"local node {record['node_id']}: cannot start its supervisor: {e}"
                ) from e
            record.update(pgid=proc.pid, start_ticks=proc_stat(proc.pid).start_ticks)
            self._state.save(nodes)
            return record, proc

    def _new_record(self, nodes: dict, tags: dict) -> dict:
        """A fresh id and address, and the node's home directory (0700, like its parents)."""
        node_id = _new_node_id(nodes)
        clusters = os.path.join(self._state.root, "clusters")
        node_dir = os.path.join(clusters, self.cluster_name, node_id)
        for d in (clusters, os.path.dirname(node_dir)):
            os.makedirs(d, mode=0o700, exist_ok=True)
        os.mkdir(node_dir, mode=0o700)
        _write_node_commands(node_dir)
        return dict(
            node_id=node_id,
            cluster_name=self.cluster_name,
            ip=_free_ip(nodes),
            tags=tags,
            node_dir=node_dir,
            pgid=None,  # with start_ticks and boot_id: who the supervisor is, despite pid reuse
            start_ticks=None,
            boot_id=boot_id(),
            created_at=time.time(),
        )

    def _spawn(self, record: dict) -> subprocess.Popen:
        """The supervisor leads a new session; it starts in the state root, not in the node's
        home, so files synced into that home never land on its sys.path."""
        with open(os.path.join(record["node_dir"], "supervisor.log"), "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "launcher.providers.local_node", record["node_dir"]],
                cwd=self._state.root,
                env=_node_env(record, self._state.root),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _destroy(self, records: list[dict], grace_s: float) -> None:
        """Kill the nodes' process groups (SIGTERM, then SIGKILL after grace_s), then delete the
        node directories, and only then the records: a crash midway leaves a dead record that
        nodes() finishes, never a directory or process that nothing points to."""
        first = signal.SIGTERM if grace_s else signal.SIGKILL
        if not wait_groups_gone(_signal_nodes(records, first), grace_s):
            wait_groups_gone(_signal_nodes(records, signal.SIGKILL), KILL_WAIT_S)
        for r in records:
            shutil.rmtree(r["node_dir"], ignore_errors=True)
        with self._state.locked() as nodes:
            for r in records:
                nodes.pop(r["node_id"], None)
            self._state.save(nodes)
            with contextlib.suppress(OSError):  # under the lock: create may be making a node here
                os.rmdir(os.path.join(self._state.root, "clusters", self.cluster_name))


def _signal_nodes(records: list[dict], sig: int) -> list[int]:
    """Signal each node's process group; return the groups that may still have processes."""
    return [
        r["pgid"] for r in records if signal_group(r["pgid"], r["start_ticks"], r["boot_id"], sig)
    ]


def _new_node_id(nodes: dict) -> str:
    while (node_id := f"local-{os.urandom(4).hex()}") in nodes:
        pass
    return node_id


def _free_ip(nodes: dict) -> str:
    """The lowest free address from 127.0.1.2 on, skipping .0, .1 and .255 of each /24, and any
    address something already listens on (another state root's cluster, another program).

    127.0.0.0/24 is left to other test harnesses; 127.0.1.1 is Debian's alias of the hostname.
    """
    used = {r["ip"] for r in nodes.values()} | _listening_ips()
    for third in range(1, 256):
        for fourth in range(2, 255):
            if (ip := f"127.0.{third}.{fourth}") not in used:
                return ip
    raise CapacityError("local: every loopback address from 127.0.1.2 to 127.0.255.254 is in use")


def _listening_ips() -> set[str]:
    """IPv4 addresses with a listening TCP socket on this machine (/proc/net/tcp and the
    IPv4-mapped entries of tcp6): a node given one would find its ports taken."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, state = fields[1].split(":")[0], fields[3]
            if state != "0A" or len(address) != width:  # 0A: LISTEN
                continue
            if width == 32 and not address.startswith("0000000000000000FFFF0000"):
                continue
            found.add(socket.inet_ntoa(bytes.fromhex(address[-8:])[::-1]))
    return found


def _write_node_commands(node_dir: str) -> None:
    """The node's own commands (Ray's `ray`, as the runtime install puts on remote nodes), in a
    bin directory first on the node's PATH: never in this machine's venv, where `ray` would
    shadow a real Ray."""
    bin_dir = os.path.join(node_dir, NODE_BIN)
    os.mkdir(bin_dir, mode=0o700)
    path = os.path.join(bin_dir, "ray")  # (python: this venv's, next on the PATH)
    with open(path, "w") as f:
        f.write(node_scripts(sys.executable)["ray"])
    os.chmod(path, 0o700)


def _node_env(record: dict, root: str) -> dict[str, str]:
    """The environment of everything a node runs: ours, minus our own CLUSTER_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env.update(
        HOME=record["node_dir"],
        PWD=record["node_dir"],
        PATH=os.pathsep.join((os.path.join(record["node_dir"], NODE_BIN),
                              os.path.dirname(sys.executable), env.get("PATH", os.defpath))),
        CLUSTER_NODE_IP=record["ip"],
        CLUSTER_NODE_ID=record["node_id"],
        CLUSTER_NODE_TYPE=record["tags"][TAG_NODE_TYPE],
        CLUSTER_LOCAL_STATE_DIR=root,
    )
    return env


class LocalCommandRunner(CommandRunner):
    """Runs commands through the node's supervisor; files are copied directly, since the node's
    filesystem is this machine's."""

    def __init__(self, node_id: str, node_dir: str, node_env: Mapping[str, str]):
        self.node_id = node_id
        self.node_dir = node_dir
        self.node_env = dict(node_env)

    def shell_argv(self, command: Optional[str] = None, port_forwards: Sequence[int] = ()) -> list[str]:
        """A login shell in the node's home and environment; its ports are this machine's
        already, so there is nothing to forward."""
        env = [f"{k}={v}" for k, v in sorted(self.node_env.items())]
        return ["env", "-i", "-C", self.node_dir, *env, "bash", "--login",
                *(["-c", command] if command else [])]

    def run(
        self,
        command: str,
        *,
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        on_output: Optional[OutputSink] = None,
    ) -> CommandResult:
        try:
            conn = connect(self.node_dir)
        except (OSError, EOFError, AuthenticationError) as e:
            raise TransientError(f"local node {self.node_id}: cannot reach its supervisor: {e}")
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tail = ""
        with conn:
            conn.send({"cmd": command, "env": dict(env or {}), "timeout": timeout})
            while True:
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):
                    raise ProviderError(f"local node {self.node_id}: supervisor gone mid-command")
                final = kind == "exit"
                text = decoder.decode(b"" if final else value, final=final)
                if on_output and text:
                    on_output(text)
                tail = (tail + text)[-OUTPUT_TAIL_CHARS:]
                if final:
                    return CommandResult(value, tail)

    def put(self, local_path: str, remote_path: str, *, excludes: Sequence[str] = (),
            filters: Sequence[str] = ()) -> None:
        """A copy on this filesystem; exclude patterns apply, filter rules (rsync-only) do not."""
        _copy(local_path, self._on_node(remote_path), excludes)

    def get(self, remote_path: str, local_path: str) -> None:
        _copy(self._on_node(remote_path), local_path)

    def _on_node(self, path: str) -> str:
        """`~` and relative paths are in the node's home; absolute paths stay as they are."""
        if path == "~" or path.startswith("~/"):
            path = path[2:]
        return os.path.normpath(os.path.join(self.node_dir, path))


def _copy(src: str, dst: str, excludes: Sequence[str] = ()) -> None:
    dst = os.path.abspath(dst)
    try:
        if os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(*excludes) if excludes else None)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)
    except OSError as e:
        raise CommandFailed(f"copy {src} -> {dst}: {e}")
