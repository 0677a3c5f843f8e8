"""Brings one node from "created" to "running the runtime", stage by stage, skipping what is done.

Stages: wait until the node accepts commands, sync file mounts, run setup commands, install the
runtime, run start commands. Each stage's inputs are hashed into a tag on the node; a stage whose
hash is unchanged is skipped, so re-running `cluster up` on an unchanged cluster runs nothing,
editing a setup command re-runs setup, and editing a file under a file mount re-syncs files only.
Start commands run when anything before them ran, when their own hash changed, or on request.
The node's install-stage tag follows each stage, for `cluster status`. The updater moves no
lifecycle state: its callers do (`cluster up` for the head, the autoscaler's actuators for workers;
see autoscaler.lifecycle), since only they know why the node is being set up.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from launcher import docker_runner, tags as T
from launcher.errors import LauncherError
from launcher.providers.base import NodeProvider

SSH_TIMEOUT_S = 600.0


def ssh_timeout_s(provider_config: Mapping) -> float:
    """How long to wait for a node's SSH: `provider.ssh_timeout_s`, 10 minutes by default."""
    return float(provider_config.get("ssh_timeout_s", SSH_TIMEOUT_S))


class UpdateFailed(LauncherError):
    """A node's setup or start failed; the message names the node, the command and its output."""


def launch_hash(node_config: Mapping, auth: Mapping) -> str:
    """Changes when the node itself must be replaced (its machine config or login)."""
    return _digest({"node_config": node_config, "auth": auth})


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def files_digest(mounts: Mapping[str, str]) -> str:
    """Files by content; directories by each file's path, size and modification time (fast on
    large trees, and an edit changes the modification time)."""
    h = hashlib.sha256()
    for remote, local in sorted(mounts.items()):
        h.update(f"{remote}\0".encode())  # where it goes and what it holds, not where it came from
        if os.path.isfile(local):
            with open(local, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
            continue
        for root, dirs, files in os.walk(local):
            dirs.sort()
            for name in sorted(files):
                stat = os.stat(os.path.join(root, name))
                h.update(f"{os.path.relpath(os.path.join(root, name), local)}\0{stat.st_size}\0"
                         f"{stat.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def setup_commands(config, kind: str, node_type: str) -> list[str]:
    commands = list(config.initialization_commands) + list(config.setup_commands)
    if kind == T.KIND_HEAD:
        return commands + list(config.head_setup_commands)
    return (commands + list(config.worker_setup_commands)
            + list(config.node_types[node_type].worker_setup_commands))


def start_commands(config, kind: str) -> list[str]:
    return list(config.head_start_commands if kind == T.KIND_HEAD else config.worker_start_commands)


@dataclass
class NodeUpdater:
    provider: NodeProvider
    node_id: str
    config: object  # ClusterConfig
    kind: str
    node_type: str
    env: Mapping[str, str] = field(default_factory=dict)  # added to every command (head IP, token...)
    files: Mapping[str, str] = field(default_factory=dict)  # remote path -> local path, besides file_mounts
    installer: object = None  # RuntimeInstaller, for providers whose nodes need the runtime installed
    on_output: Optional[Callable[[str], None]] = None
    on_stage: Callable[[str], None] = lambda stage: None
    run_setup: bool = True
    run_start: bool = True

    def wanted_hashes(self) -> dict[str, str]:
        """The tag each stage writes when done, and the value it must have for the stage to skip."""
        docker = docker_runner.settings(self.config, self.kind, self.node_type)
        setup = setup_commands(self.config, self.kind, self.node_type)
        hashes = {
            T.TAG_FILES_HASH: files_digest({**self.config.file_mounts, **self.files}),
            T.TAG_SETUP_HASH: _digest(setup + [repr(docker)] if docker else setup),
            T.TAG_START_HASH: _digest(start_commands(self.config, self.kind)),
        }
        if self.installer is not None:
            hashes[T.TAG_RUNTIME_HASH] = self.installer.version()
        return hashes

    def stages_done(self) -> bool:
        """Every stage ran with the inputs it would have now: nothing to do."""
        tags = self.provider.node_tags(self.node_id)
        return all(tags.get(k) == v for k, v in self.wanted_hashes().items())

    def run(self) -> list[str]:
        """Run the stages that are due; returns their names. On failure UpdateFailed (one line:
        node, step, cause) is raised."""
        try:
            return self._run_stages()
        except UpdateFailed:
            raise
        except LauncherError as exc:
            raise UpdateFailed(f"node {self.node_id}: {exc}") from None

    def _run_stages(self) -> list[str]:
        host = self.provider.command_runner(self.node_id)
        runner = docker_runner.wrap(host, self.config, self.kind, self.node_type,
                                    {**self.config.file_mounts, **self.files})
        done = self.provider.node_tags(self.node_id)
        wanted = self.wanted_hashes()
        fresh = False  # a new container: everything after the files is due, even on --restart-only
        due = lambda tag: (self.run_setup or fresh) and done.get(tag) != wanted[tag]  # noqa: E731
        ran = []
        self._stage(T.STAGE_WAITING_FOR_SSH)
        runner.wait_ready(ssh_timeout_s(self.config.provider))
        if due(T.TAG_FILES_HASH):
            self._stage(T.STAGE_SYNCING_FILES, "syncing files")
            for remote, local in {**self.config.file_mounts, **self.files}.items():
                runner.put(local, remote, excludes=self.config.rsync_exclude,
                           filters=self.config.rsync_filter)
            ran.append(self._mark(T.TAG_FILES_HASH, wanted, "files"))
        commands = setup_commands(self.config, self.kind, self.node_type)
        if runner is not host:  # as Ray: initialization commands on the host, then the container
            initialization = len(self.config.initialization_commands)
            if due(T.TAG_SETUP_HASH):
                self._stage(T.STAGE_SETTING_UP, "running initialization commands on the host")
                self._run_commands(host, commands[:initialization])
            commands = commands[initialization:]
            self._stage(T.STAGE_SETTING_UP)
            if runner.start_container():
                self.on_stage(f"started container {runner.docker.container_name}")
                ran.append("container")
                fresh, done = True, {}
        if due(T.TAG_SETUP_HASH):
            self._stage(T.STAGE_SETTING_UP, "running setup commands")
            self._run_commands(runner, commands)
            ran.append(self._mark(T.TAG_SETUP_HASH, wanted, "setup"))
        if self.installer is not None and due(T.TAG_RUNTIME_HASH):
            self._stage(T.STAGE_INSTALLING_RUNTIME, "installing the runtime")
            self.installer.install(runner, f"node {self.node_id}", on_output=self.on_output)
            ran.append(self._mark(T.TAG_RUNTIME_HASH, wanted, "runtime"))
        start_due = ran or done.get(T.TAG_START_HASH) != wanted[T.TAG_START_HASH] or not self.run_setup
        if self.run_start and start_due:
            self._stage(T.STAGE_STARTING, "running start commands")
            self._run_commands(runner, start_commands(self.config, self.kind))
            ran.append(self._mark(T.TAG_START_HASH, wanted, "start"))
        self._stage(T.STAGE_DONE)
        return ran

    def _stage(self, tag: str, stage: Optional[str] = None) -> None:
        self.provider.set_tags(self.node_id, {T.TAG_INSTALL_STAGE: tag})
        if stage:
            self.on_stage(stage)

    def _mark(self, tag: str, wanted: dict, stage: str) -> str:
        self.provider.set_tags(self.node_id, {tag: wanted[tag]})
        return stage

    def _run_commands(self, runner, commands: list[str]) -> None:
        for command in commands:
            result = runner.run(command, env=self.env, on_output=self.on_output)
            if result.exit_code != 0:
                tail = result.output_tail.strip().splitlines()[-5:]
                raise UpdateFailed(
                    f"node {self.node_id}: `{command}` exited with code {result.exit_code}"
                    + (f"; last output: {' | '.join(tail)}" if tail else ""))


def node_env(config, node_type: str, node_id: str, node_ip: str, head_ip: str,
             token: Optional[str] = None) -> dict:
    """What a node's start commands need to know: where the head is, which address is this node's
    (the provider knows; guessing from routes fails when nodes share a host), what it offers.
    The head's address also as Ray's $RAY_HEAD_IP, which Ray's worker start commands use."""
    env = {
        "CLUSTER_HEAD_IP": head_ip,
        "RAY_HEAD_IP": head_ip,
        "CLUSTER_NODE_IP": node_ip,
        "CLUSTER_NODE_TYPE": node_type,
        "CLUSTER_NODE_ID": node_id,
        "CLUSTER_NODE_RESOURCES": json.dumps(dict(config.node_types[node_type].resources)),
    }
    if token:
        env["CLUSTER_AUTH_TOKEN"] = token
    return env
