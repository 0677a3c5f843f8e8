"""Brings one node from "created" to "running the runtime": setup commands, then start commands.

The node's status tag follows each stage, so `cluster status` and a restarted autoscaler see where
a node is. Both `cluster up` (the head) and the autoscaler (workers) use it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from launcher import tags as T
from launcher.errors import LauncherError
from launcher.providers.base import NodeProvider

RUNTIME_VERSION = "0.1.0"


class UpdateFailed(LauncherError):
    """A node's setup or start failed; the message names the node, the command and its output."""


def launch_hash(node_config: Mapping, auth: Mapping) -> str:
    """Changes when the node itself must be replaced (its machine config or login)."""
    return _digest({"node_config": node_config, "auth": auth})


def runtime_hash(config, kind: str, node_type: str) -> str:
    """Changes when a node's setup or start must run again."""
    return _digest({
        "setup": setup_commands(config, kind, node_type),
        "start": start_commands(config, kind),
        "file_mounts": dict(config.file_mounts),
        "version": RUNTIME_VERSION,
    })


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    on_output: Optional[Callable[[str], None]] = None
    run_setup: bool = True
    run_start: bool = True

    def run(self) -> None:
        """Run every stage; on failure tag the node update-failed and raise UpdateFailed."""
        try:
            self._run_stages()
        except UpdateFailed:
            self.provider.set_tags(self.node_id, {T.TAG_NODE_STATUS: T.STATUS_UPDATE_FAILED})
            raise
        self.provider.set_tags(self.node_id, {
            T.TAG_NODE_STATUS: T.STATUS_UP_TO_DATE,
            T.TAG_RUNTIME_HASH: runtime_hash(self.config, self.kind, self.node_type)})

    def _run_stages(self) -> None:
        runner = self.provider.command_runner(self.node_id)
        self.provider.set_tags(self.node_id, {T.TAG_NODE_STATUS: T.STATUS_SYNCING_FILES})
        for remote, local in {**self.config.file_mounts, **self.files}.items():
            runner.put(local, remote)
        commands = []
        if self.run_setup:
            commands += setup_commands(self.config, self.kind, self.node_type)
        if self.run_start:
            commands += start_commands(self.config, self.kind)
        self.provider.set_tags(self.node_id, {T.TAG_NODE_STATUS: T.STATUS_SETTING_UP})
        for command in commands:
            result = runner.run(command, env=self.env, on_output=self.on_output)
            if result.exit_code != 0:
                tail = result.output_tail.strip().splitlines()[-5:]
                raise UpdateFailed(
                    f"node {self.node_id}: `{command}` exited with code {result.exit_code}"
                    + (f"; last output: {' | '.join(tail)}" if tail else ""))


def node_env(config, node_type: str, node_id: str, head_ip: str, token: Optional[str] = None) -> dict:
    """What a node's start commands need to know: where the head is, what this node offers."""
    env = {
        "CLUSTER_HEAD_IP": head_ip,
        "CLUSTER_NODE_TYPE": node_type,
        "CLUSTER_NODE_ID": node_id,
        "CLUSTER_NODE_RESOURCES": json.dumps(dict(config.node_types[node_type].resources)),
    }
    if token:
        env["CLUSTER_AUTH_TOKEN"] = token
    return env
