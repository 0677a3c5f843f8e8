"""What each `cluster` verb does, as plain functions: the CLI parses, calls one of these, renders.

`echo` receives progress lines; nothing here prints or exits by itself.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

from launcher import docker_runner, tags as T
from launcher.config import (BOOTSTRAP_CONFIG_PATH, BOOTSTRAP_KEY_PATH, ClusterConfig, bootstrap_yaml,
                             config_from_dict, load_config)
from launcher.errors import ClusterNotFound, CommandFailed, LauncherError
from launcher.providers import make_provider
from launcher.providers.base import NodeProvider
from launcher.runtime_install import RuntimeInstaller, release, source_digest
from launcher.updater import NodeUpdater, launch_hash, node_env

Echo = Callable[[str], None]
GCS_PORT = 6379
RAY_BOOTSTRAP_CONFIG_PATH = "~/ray_bootstrap_config.yaml"  # what Ray's head start commands name


def load(config_path: str, cluster_name: Optional[str] = None) -> ClusterConfig:
    """Load and validate the config. Notes on how Ray's keys were read go to stderr, one line
    each."""
    config = load_config(config_path)
    for note in config.notes:
        print(f"note: {config_path}: {note}", file=sys.stderr)
    if cluster_name:
        config = config_from_dict({**config.raw, "cluster_name": cluster_name}, config_path)
    return config


def open_cluster(config_path: str, cluster_name: Optional[str] = None) -> tuple:
    """Load and validate the config; return (config, provider)."""
    config = load(config_path, cluster_name)
    return config, make_provider(config.provider, config.cluster_name, config.auth)


def plan(config: ClusterConfig) -> tuple[ClusterConfig, list[str]]:
    """The config as `cluster up` would resolve it, and what it would do, in words. The
    provider's bootstrap runs read-only: every lookup runs (bad input fails as in `cluster up`),
    what it would create is listed instead, with placeholders in the config for the new ids."""
    provider = make_provider(config.provider, config.cluster_name, config.auth)
    lines: list[str] = []
    config = provider.bootstrap(config, lines.append, dry_run=True)
    lines += [f"head: 1 node of type {config.head_node_type}, created unless cluster "
              f"{config.cluster_name} has one (changed node_config or auth: replaced)",
              f"runtime: installed on every node from this machine's lock "
              f"(cluster-launcher {release()})" if provider.installs_runtime else
              "runtime: this machine's environment, which the nodes share"]
    for name, node_type in config.worker_types().items():
        lines.append(f"workers of type {name}: {node_type.min_workers} at once, up to "
                     f"{min(node_type.max_workers, config.max_workers)} on demand")
    return config, lines


def head_node(provider: NodeProvider, config: ClusterConfig, required: bool = True) -> Optional[str]:
    heads = provider.nodes({T.TAG_NODE_KIND: T.KIND_HEAD})
    if not heads and required:
        raise ClusterNotFound(f"cluster '{config.cluster_name}' is not running (no head node found)")
    return heads[0] if heads else None


def up(config_path: str, echo: Echo, *, no_restart=False, restart_only=False, cluster_name=None,
       confirm: Callable[[str], bool] = lambda _: True) -> str:
    """Create or update the head node and start the runtime there. Returns the head node id.
    The head's lifecycle moves as a worker's do (autoscaler.lifecycle; imported here, as the
    launcher imports the autoscaler only inside functions)."""
    from autoscaler import lifecycle as L

    config, provider = open_cluster(config_path, cluster_name)
    config = provider.bootstrap(config, echo)
    head_type = config.node_types[config.head_node_type]
    wanted_launch = launch_hash(head_type.node_config, config.auth)
    head = head_node(provider, config, required=False)
    if head is not None and provider.node_tags(head).get(T.TAG_LAUNCH_HASH) != wanted_launch:
        if not confirm(f"The head node's node_config or auth changed: replace head {head}?"):
            raise LauncherError("not replacing the head node; nothing changed")
        echo(f"Terminating outdated head {head}")
        provider.terminate([head])
        head = None
    if head is None:
        echo(f"Creating head node (type {config.head_node_type}) for cluster {config.cluster_name}...")
        requested = L.transition(L.NodeLifecycle("head"), L.REQUESTED, "cluster up", time.time())
        head = provider.create(config.head_node_type, head_type.node_config, {
            T.TAG_NODE_KIND: T.KIND_HEAD, T.TAG_NODE_TYPE: config.head_node_type,
            T.TAG_LAUNCH_HASH: wanted_launch, **L.tags_of(requested)}, 1)[0]
    node = L.current(provider, head)
    if node.state == L.REQUESTED:  # created now, or by an `up` that stopped right after
        node = L.record(provider, node, L.ALLOCATED, "created by cluster up", time.time())
    with tempfile.TemporaryDirectory() as tmp:
        updater = _head_updater(provider, head, config, echo, tmp)
        updater.run_setup, updater.run_start = not restart_only, not no_restart
        if node.state == L.RUNNING and updater.stages_done() and not restart_only:
            if _runtime_answers(provider, head, config):
                echo(f"Head {head} is up to date; nothing to do (use --restart-only to restart "
                     "the runtime).")
                return head
            echo(f"Head {head} is up to date but its runtime does not answer (`cluster status` "
                 "there fails): restarting it.")
            updater.run_setup = False  # only the start commands
        echo(f"Updating head {head} at {provider.internal_ip(head)}...")
        started = time.monotonic()
        node = L.record(provider, node, L.INSTALLING, "cluster up", time.time())
        try:
            ran = updater.run()
        except LauncherError as exc:
            if head not in provider.nodes({T.TAG_NODE_KIND: T.KIND_HEAD}):
                raise LauncherError(f"head {head} was terminated while `cluster up` set it up "
                                    "(by `cluster down`?); nothing of it is left") from None
            L.record(provider, node, L.INSTALL_FAILED, str(exc), time.time())
            raise
        L.record(provider, node, L.RUNNING, f"set up ({', '.join(ran) or 'nothing'} ran)",
                 time.time())
    echo(f"Head {head} ready in {time.monotonic() - started:.1f}s ({', '.join(ran) or 'nothing'} ran).")
    return head


def _runtime_answers(provider, head: str, config) -> bool:
    """Whether the head's runtime is up: its GCS answers `cluster status` there."""
    runner = docker_runner.for_node(provider, head, config)
    return runner.run("cluster status > /dev/null 2>&1", timeout=60).exit_code == 0


def _head_updater(provider, head, config, echo, tmp: str) -> NodeUpdater:
    """The head's updater; it also ships the bootstrap config (and the SSH key) the autoscaler uses,
    the config under Ray's name too, for Ray's `ray start --autoscaling-config` to find."""
    bootstrap = os.path.join(tmp, "cluster_bootstrap.yaml")
    with open(bootstrap, "w") as f:
        f.write(bootstrap_yaml(config))
    files = {BOOTSTRAP_CONFIG_PATH: bootstrap, RAY_BOOTSTRAP_CONFIG_PATH: bootstrap}
    if config.auth.get("ssh_private_key"):
        files[BOOTSTRAP_KEY_PATH] = os.path.expanduser(config.auth["ssh_private_key"])
    installer = (RuntimeInstaller(echo, provider.runtime_extras) if provider.installs_runtime
                 else None)
    env = node_env(config, config.head_node_type, head, provider.internal_ip(head),
                   provider.internal_ip(head))
    if config.gcs_storage:  # read by `cluster start --head` (it may hold a Redis password)
        env["CLUSTER_GCS_STORAGE"] = config.gcs_storage
    return NodeUpdater(provider, head, config, T.KIND_HEAD, config.head_node_type, env=env,
                       files=files, installer=installer, on_output=_prefixed(echo, head),
                       on_stage=lambda stage: echo(f"  [{head}] {stage}"))


def _prefixed(echo: Echo, node_id: str) -> Callable[[str], None]:
    def sink(text: str) -> None:
        for line in text.splitlines():
            echo(f"  [{node_id}] {line}")
    return sink


def down(config_path: str, echo: Echo, *, workers_only=False, cluster_name=None) -> list[str]:
    """Terminate the cluster's nodes, the head first. Its runtime is stopped before (as Ray's
    `ray down` runs `ray stop`): a head being terminated lives on for a moment, and its autoscaler
    would replace the workers terminated meanwhile."""
    config, provider = open_cluster(config_path, cluster_name)
    all_nodes = provider.nodes({})
    if not all_nodes:
        raise ClusterNotFound(f"cluster '{config.cluster_name}' is not running (no nodes found)")
    head = None if workers_only else head_node(provider, config, required=False)
    if head is not None:
        echo(f"Stopping the runtime on head {head}")
        try:  # best effort: a head that cannot be reached launches nothing either
            docker_runner.for_node(provider, head, config).run("cluster stop", timeout=60)
        except LauncherError as exc:
            echo(f"  (not reached: {exc}; terminating anyway)")
    removed = []
    kinds = [T.KIND_WORKER] if workers_only else [T.KIND_HEAD, T.KIND_WORKER]
    for kind in kinds:
        for _ in range(3):  # a launch that was in flight may surface one pass later
            ids = provider.nodes({T.TAG_NODE_KIND: kind})
            if not ids:
                break
            echo(f"Terminating {len(ids)} {kind} node(s): {', '.join(ids)}")
            provider.terminate(ids)
            removed += ids
    return removed


def node_runner(config_path: str, node_ip: Optional[str] = None, cluster_name=None) -> tuple:
    """(provider, node id, runner) of the head, or of the node with that IP; the runner works in
    the node's container when it has one (docker_runner), as Ray's exec, submit and attach do."""
    config, provider = open_cluster(config_path, cluster_name)
    head = head_node(provider, config)
    if node_ip is None:
        return provider, head, docker_runner.for_node(provider, head, config)
    for node_id in provider.nodes({}):
        if node_ip in (provider.internal_ip(node_id), provider.external_ip(node_id)):
            return provider, node_id, docker_runner.for_node(provider, node_id, config)
    known = ", ".join(provider.internal_ip(n) for n in provider.nodes({}))
    raise ClusterNotFound(f"cluster '{config.cluster_name}' has no node with IP {node_ip} (nodes: {known})")


def detached(command: str, tmux: bool = False, screen: bool = False) -> str:
    """Wrap a command to run in a new tmux or screen session on the node, surviving disconnects."""
    inner = shlex.quote(f"{command}; exec bash")
    if tmux:
        return f"tmux new-session -d bash -c {inner}"
    if screen:
        return f"screen -dm bash -c {inner}"
    return command


def exec_on_node(config_path: str, command: str, echo: Echo, *, node_ip=None, tmux=False,
                 screen=False, port_forwards=(), cluster_name=None, env=None) -> int:
    """Run a shell command on the head (or the node with node_ip); returns its exit code."""
    _, _, runner = node_runner(config_path, node_ip, cluster_name)
    command = detached(command, tmux, screen)
    if port_forwards:  # the tunnels live as long as an ssh process in this terminal
        return subprocess.call(runner.shell_argv(command, port_forwards))
    return runner.run(command, env=env, on_output=echo).exit_code


def attach_argv(config_path: str, *, tmux=False, node_ip=None, cluster_name=None) -> list[str]:
    """The argv of an interactive shell on the head (in a tmux session that outlives it: --tmux)."""
    _, _, runner = node_runner(config_path, node_ip, cluster_name)
    return runner.shell_argv("tmux attach || tmux new-session" if tmux else None)


def rsync_up(config_path: str, source: str, target: str, echo: Echo, *, all_nodes=False,
             cluster_name=None) -> list[str]:
    """Copy a local file or tree to the head (and every worker with all_nodes); returns node ids."""
    if not os.path.exists(source):
        raise LauncherError(f"{source}: no such file or directory")
    config, provider = open_cluster(config_path, cluster_name)
    nodes = [head_node(provider, config)]
    if all_nodes:
        nodes += provider.nodes({T.TAG_NODE_KIND: T.KIND_WORKER})
    for node_id in nodes:
        echo(f"{source} -> {node_id}:{target}")
        runner = docker_runner.for_node(provider, node_id, config)
        runner.put(source, target, excludes=config.rsync_exclude, filters=config.rsync_filter)
    return nodes


def rsync_down(config_path: str, source: str, target: str, *, node_ip=None, cluster_name=None) -> None:
    """Copy a file or tree from the head (or the node with node_ip) to this machine."""
    _, _, runner = node_runner(config_path, node_ip, cluster_name)
    runner.get(source, target)


def monitor(config_path: str, echo: Echo, *, lines: int = 100, cluster_name=None) -> int:
    """Follow the autoscaler's log on the head until interrupted."""
    return exec_on_node(config_path, f"tail -n {int(lines)} -F ~/.cluster/logs/autoscaler.log", echo,
                        cluster_name=cluster_name)


def submit(config_path: str, script: str, args: list[str], echo: Echo, *, tmux=False,
           screen=False, cluster_name=None) -> int:
    """Copy a script to the head and run it there with python; returns its exit code."""
    if not os.path.isfile(script):
        raise LauncherError(f"{script}: no such file")
    _, _, runner = node_runner(config_path, cluster_name=cluster_name)
    remote = f"~/{os.path.basename(script)}"
    runner.put(script, remote)
    command = " ".join(["python", shlex.quote(remote.replace("~/", "", 1))] + [shlex.quote(a) for a in args])
    return runner.run(detached(command, tmux, screen), on_output=echo).exit_code


def version() -> str:
    """This installation: its release and a digest of its code and locks, which tells two
    installations of one release apart (as `cluster up` does when it decides to reinstall)."""
    return f"cluster-launcher {release()} (code {source_digest()})"


def head_version(config_path: str, *, cluster_name=None) -> tuple[str, str]:
    """(head node id, `cluster --version` as the head answers it)."""
    _, head, runner = node_runner(config_path, cluster_name=cluster_name)
    result = runner.run("cluster --version")
    if result.exit_code != 0:
        raise CommandFailed(f"`cluster --version` on head {head} exited with code {result.exit_code}: "
                            f"{result.output_tail.strip()[-200:]}", result.exit_code)
    return head, result.output_tail.strip().splitlines()[-1]


def head_ip(config_path: str, *, cluster_name=None) -> str:
    config, provider = open_cluster(config_path, cluster_name)
    head = head_node(provider, config)
    return provider.external_ip(head) or provider.internal_ip(head)


def worker_ips(config_path: str, *, cluster_name=None) -> list[str]:
    config, provider = open_cluster(config_path, cluster_name)
    head_node(provider, config)
    return [provider.internal_ip(n) for n in provider.nodes({T.TAG_NODE_KIND: T.KIND_WORKER})]


def on_head(config_path: str, command: str, echo: Echo, *, cluster_name=None) -> int:
    """A `cluster` verb run on the head, which reads its GCS (`cluster status`, `cluster why`)."""
    code = exec_on_node(config_path, command, echo, cluster_name=cluster_name)
    if code != 0:
        raise CommandFailed(f"`{command}` on the head exited with code {code}", code)
    return code
