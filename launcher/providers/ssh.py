"""The `ssh` provider: machines the user already has, listed in the config.

`provider.head_ip` is the head; `provider.worker_ips` are the hosts the autoscaler may claim for
workers; Ray's `provider.external_head_ip` is the head's address from this machine (outside the
hosts' network), which the launcher then SSHes to. Creating a node claims a free host;
terminating one stops the runtime there and releases the claim — the machine itself is left
alone. Claims and tags live on the head in a file under a lock (see ssh_claims), so the laptop
and the head's autoscaler share one truth.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
from typing import Callable, Mapping, Optional, Sequence

from launcher import tags as T
from launcher.errors import CapacityError, ProviderError
from launcher.providers import ssh_claims
from launcher.providers.base import NodeProvider
from launcher.ssh import SSHCommandRunner, SSHRunners
from launcher.updater import ssh_timeout_s

class SSHNodeProvider(NodeProvider):
    def __init__(self, provider_config: Mapping, cluster_name: str, auth: Optional[Mapping] = None):
        super().__init__(provider_config, cluster_name, auth)
        self.head_ip = provider_config["head_ip"]
        self.worker_ips = list(provider_config["worker_ips"])
        self.external_head_ip = provider_config.get("external_head_ip")
        self._state_path = f"~/.cluster/ssh-claims-{cluster_name}.json"
        # processes on the head (the autoscaler) were started with the head's node id
        self._on_head = os.environ.get("CLUSTER_NODE_ID") == self.head_ip
        self._runners = SSHRunners(cluster_name, self.auth)

    def bootstrap(self, config, echo: Callable[[str], None] = lambda _: None,
                  dry_run: bool = False):
        """The head host keeps the cluster's claims: wait until it answers SSH (it may be booting).
        A dry run contacts no host: the hosts are the user's, nothing is created on them."""
        if dry_run:
            echo("provider ssh: nothing to bootstrap (hosts are used as they are)")
            return config

        def attempt(n: int, cause: str) -> None:
            if n == 1 or n % 5 == 0:
                echo(f"Waiting for SSH on head {self.head_ip}: {cause}")

        self.command_runner(self.head_ip).wait_for_ssh(ssh_timeout_s(self.provider_config),
                                                       on_attempt=attempt)
        return config

    def _claims(self, op: dict) -> dict:
        op = {**op, "path": self._state_path}
        if self._on_head:
            return ssh_claims.apply(op)
        if op["op"] == "read":  # the file is replaced atomically: a plain read needs no lock
            command = f'cat {self._state_path} 2>/dev/null || echo {{}}'
        else:
            source = inspect.getsource(ssh_claims)
            command = f"python3 -c {shlex.quote(source)} {shlex.quote(json.dumps(op))}"
        chunks: list[str] = []
        result = self.command_runner(self.head_ip).run(command, on_output=chunks.append)
        if result.exit_code != 0:
            raise ProviderError(f"head {self.head_ip}: reading the cluster's host claims failed "
                                f"(exit {result.exit_code}): {result.output_tail.strip()[-200:]}")
        answer = json.loads("".join(chunks).strip().splitlines()[-1])
        return answer if op["op"] != "read" else {"nodes": answer, "claimed": []}

    def nodes(self, tag_filters: Mapping[str, str]) -> list[str]:
        nodes = self._claims({"op": "read"})["nodes"]
        return [ip for ip, node in sorted(nodes.items())
                if all(node["tags"].get(k) == v for k, v in tag_filters.items())]

    def node_tags(self, node_id: str) -> dict[str, str]:
        node = self._claims({"op": "read"})["nodes"].get(node_id)
        if node is None:
            raise ProviderError(f"host {node_id} is not a node of cluster {self.cluster_name}")
        return dict(node["tags"])

    def create(self, node_type: str, node_config: Mapping, tags: Mapping[str, str],
               count: int) -> list[str]:
        is_head = tags.get(T.TAG_NODE_KIND) == T.KIND_HEAD
        candidates = [self.head_ip] if is_head else [ip for ip in self.worker_ips if ip != self.head_ip]
        tags = {**tags, T.TAG_CLUSTER_NAME: self.cluster_name, T.TAG_NODE_TYPE: node_type}
        claimed = self._claims({"op": "claim", "candidates": candidates, "count": count,
                                "tags": tags})["claimed"]
        if len(claimed) < count:
            raise CapacityError(f"no free host for {count} {node_type} node(s): every address in "
                                f"provider.{'head_ip' if is_head else 'worker_ips'} is in use")
        return claimed

    def terminate(self, node_ids: Sequence[str]) -> None:
        """Stop the runtime on each host (best effort: it may be down) and release it."""
        for node_id in node_ids:
            try:
                self.command_runner(node_id).run(
                    "command -v cluster >/dev/null && cluster stop || true", timeout=60)
            except Exception:  # an unreachable host is released all the same
                pass
            self._runners.close(node_id)
        self._claims({"op": "release", "ips": list(node_ids)})

    def set_tags(self, node_id: str, tags: Mapping[str, str]) -> None:
        self._claims({"op": "set_tags", "ip": node_id, "tags": dict(tags)})

    def internal_ip(self, node_id: str) -> str:
        return node_id

    def external_ip(self, node_id: str) -> Optional[str]:
        return (self.external_head_ip or node_id) if node_id == self.head_ip else node_id

    def command_runner(self, node_id: str) -> SSHCommandRunner:
        address = node_id if self._on_head else self.external_ip(node_id)
        return self._runners.get(node_id, address, self.auth["ssh_private_key"], f"host {node_id}")
