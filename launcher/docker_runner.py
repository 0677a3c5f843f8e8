"""Nodes whose commands run in a container, as Ray's `docker:` section asks.

A node whose type has an image (`head_image` / `worker_image`, else `image`) is set up as Ray does
it: file mounts are synced to a directory on the host and initialization_commands run on the
host; then the container starts (`run -d -it --rm --name NAME --network host` with the file mounts
bind-mounted at their targets, `run_options`, `IMAGE bash`), and everything after it (setup
commands, the runtime's install from the shipped wheelhouse, start commands, and `cluster exec`,
`submit`, `attach`, `rsync-up/down`) runs inside it through `exec`. `~` is the home of the image's
user. The engine is the node's own: docker when its daemon answers, else podman (`use_podman:
true` skips docker); through `sudo -n` when the login user is not root. As Ray does, /dev/shm is
sized to a third of the host's available memory (the object store lives there) unless
`run_options` size it or `disable_shm_size_detection` is set, and GPUs are passed with docker's
nvidia runtime when the host has it (`disable_automatic_runtime_detection` turns that off).
A container whose image, options or mounts differ from the config's is replaced, and a new one is
set up from scratch: the updater reruns setup and the runtime's install in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from dataclasses import asdict, dataclass
from shlex import quote
from typing import Mapping, Optional, Sequence

from launcher import tags as T
from launcher.command_runner import CommandResult, CommandRunner, OutputSink
from launcher.errors import LauncherError

# Ray's docker keys and defaults; a node type's own docker section may set NODE_TYPE_KEYS.
DEFAULTS = {"image": "", "head_image": "", "worker_image": "", "container_name": "ray_container",
            "pull_before_run": True, "run_options": [], "head_run_options": [],
            "worker_run_options": [], "disable_automatic_runtime_detection": False,
            "disable_shm_size_detection": False, "use_podman": False}
NODE_TYPE_KEYS = ("worker_image", "pull_before_run", "worker_run_options",
                  "disable_automatic_runtime_detection", "disable_shm_size_detection")
MOUNT_ROOT = "/tmp/cluster-launcher-mounts"  # host side of file mounts (Ray: /tmp/ray_tmp_mount)
SPEC_LABEL = "cluster-launcher.spec"  # on the container: what it was started with
SHM_FRACTION = 0.33  # of MemAvailable: Ray's object store share (30%) plus 10%
# Our runtime's commands (`cluster`, `ray`, `python`) are in ~/.local/bin, which the login profile
# of a root user or of an image's user need not put on PATH.
_PATH = 'export PATH="$HOME/.local/bin:$PATH"; cd ~ || exit 1; '


@dataclass(frozen=True)
class DockerSettings:
    """One node's container, Ray's keys resolved for its role."""

    image: str
    container_name: str
    pull_before_run: bool
    run_options: tuple
    use_podman: bool
    detect_gpus: bool
    size_shm: bool


def settings(config, kind: str, node_type: str) -> Optional[DockerSettings]:
    """The node's container, or None when its type has no image (it runs on the host)."""
    docker = {**DEFAULTS, **config.docker, **config.node_types[node_type].docker}
    role = "head" if kind == T.KIND_HEAD else "worker"
    image = docker[f"{role}_image"] or docker["image"]
    if not image:
        return None
    options = tuple(docker["run_options"]) + tuple(docker[f"{role}_run_options"])
    return DockerSettings(image, docker["container_name"], docker["pull_before_run"], options,
                          docker["use_podman"], not docker["disable_automatic_runtime_detection"],
                          not docker["disable_shm_size_detection"] and
                          not any("--shm-size" in option for option in options))


def wrap(host: CommandRunner, config, kind: str, node_type: str,
         mounts: Mapping[str, str]) -> CommandRunner:
    """The runner for the node's commands: in its container if its type has an image."""
    docker = settings(config, kind, node_type)
    return host if docker is None else DockerCommandRunner(host, docker, config.cluster_name, mounts)


def for_node(provider, node_id: str, config) -> CommandRunner:
    """wrap() for a running node, its role read from its tags (`cluster exec`, `submit`, ...)."""
    if not config.docker:
        return provider.command_runner(node_id)
    tags = provider.node_tags(node_id)
    return wrap(provider.command_runner(node_id), config, tags[T.TAG_NODE_KIND],
                tags[T.TAG_NODE_TYPE], config.file_mounts)


class DockerCommandRunner(CommandRunner):
    """Runs commands in the node's container through `exec` over the host's runner."""

    def __init__(self, host: CommandRunner, docker: DockerSettings, cluster_name: str,
                 mounts: Mapping[str, str]):
        self.host = host
        self.docker = docker
        self.mounts = sorted({_norm(remote) for remote in mounts})
        self._stage = f"{MOUNT_ROOT}/{T.dns_name(cluster_name)}"
        self._name = quote(docker.container_name)
        self._engine: Optional[str] = None
        self._home: Optional[str] = None

    def spec(self) -> str:
        """Changes when the container must be replaced."""
        value = json.dumps([asdict(self.docker), self.mounts], sort_keys=True)
        return hashlib.sha256(value.encode()).hexdigest()[:16]

    def engine(self) -> str:
        """The node's engine command, e.g. `sudo -n podman`; found once per runner."""
        if self._engine is None:
            names = "podman" if self.docker.use_podman else "docker podman"
            found = self._host(f'[ "$(id -u)" = 0 ] || s="sudo -n "; for e in {names}; do '
                               'command -v $e >/dev/null && ${s}$e info >/dev/null 2>&1 && '
                               '{ echo "${s}$e"; exit 0; }; done; echo "no working container '
                               f'engine ({names.replace(" ", " or ")}) on the host"; exit 3',
                               "looking for a container engine")
            self._engine = found.strip().splitlines()[-1]
        return self._engine

    def start_container(self) -> bool:
        """Start the container unless it runs with this spec already; True when started now."""
        engine, spec, image = self.engine(), self.spec(), quote(self.docker.image)
        state = self._host(f"{engine} inspect -f '{{{{.State.Running}}}} {{{{index .Config.Labels "
                           f"\"{SPEC_LABEL}\"}}}}' {self._name} 2>/dev/null || true", "inspect")
        if state.split()[-2:] == ["true", spec]:
            return False
        volumes = " ".join(f"-v {quote(self._staged(m) + ':')}{self._target_sh(m)}"
                           for m in self.mounts)
        shm = ("shm=$(awk '/MemAvailable/ {printf \"--shm-size=%.0fb\", $2 * 1024 * "
               f"{SHM_FRACTION}}}' /proc/meminfo)" if self.docker.size_shm else "shm=")
        gpus = (f"gpus=$({engine} info -f '{{{{.Runtimes}}}}' 2>/dev/null | grep -q nvidia && "
                "nvidia-smi >/dev/null 2>&1 && echo --runtime=nvidia || true)"
                if self.docker.detect_gpus else "gpus=")
        script = ["set -e", f"{engine} rm -f {self._name} >/dev/null 2>&1 || true",
                  *([f"{engine} pull {image}"] if self.docker.pull_before_run else []),
                  f"home=$({engine} run --rm {image} sh -c 'echo $HOME')", shm, gpus,
                  f"{engine} run -d -it --rm --name {self._name} --label {SPEC_LABEL}={spec} "
                  f"--network host -e LC_ALL=C.UTF-8 -e LANG=C.UTF-8 {volumes} $shm $gpus "
                  f"{' '.join(self.docker.run_options)} {image} bash >/dev/null",
                  'echo "$home"']
        self._home = self._host("\n".join(script), f"starting it from {self.docker.image}"
                                ).strip().splitlines()[-1]
        return True

    def run(self, command: str, *, env: Optional[Mapping[str, str]] = None,
            timeout: Optional[float] = None, on_output: Optional[OutputSink] = None) -> CommandResult:
        """Values of `env` stay off command lines: the host's runner sets them, exec passes them."""
        names = sorted(env or {})
        engine = self.engine()
        if names and engine.startswith("sudo -n "):
            engine = f"sudo -n --preserve-env={','.join(names)} {engine[len('sudo -n '):]}"
        flags = "".join(f" -e {name}" for name in names)
        return self.host.run(f"{engine} exec{flags} {self._name} bash -lc {quote(_PATH + command)}",
                             env=env, timeout=timeout, on_output=on_output)

    def shell_argv(self, command: Optional[str] = None, port_forwards: Sequence[int] = ()) -> list[str]:
        shell = _PATH + (command if command else "exec bash -i")
        return self.host.shell_argv(f"{self.engine()} exec -it {self._name} bash -lc {quote(shell)}",
                                    port_forwards)

    def wait_ready(self, timeout: float) -> None:
        self.host.wait_ready(timeout)

    def put(self, local_path: str, remote_path: str, *, excludes: Sequence[str] = (),
            filters: Sequence[str] = ()) -> None:
        """Synced to the host side of the mounts first. Under a bind-mounted directory that is
        all; a bind-mounted file is rewritten in place (rsync replaced the host's file, the
        mount still shows the old one); anything else is copied into the running container."""
        staged = self._staged(remote_path)
        self.host.put(local_path, staged, excludes=excludes, filters=filters)
        running, mounted = self._state()
        if not running:
            if _norm(remote_path) in self.mounts:
                return  # bind-mounted when the container starts
            raise LauncherError(f"cannot copy {remote_path} into container "
                                f"{self.docker.container_name}: it is not running")
        target = self._target(remote_path)
        engine, directory = self.engine(), os.path.isdir(os.path.expanduser(local_path))
        if any(target == m or target.startswith(m.rstrip("/") + "/") for m in mounted):
            if target in mounted and not directory:
                self._host(f"{engine} exec -i {self._name} sh -c 'cat > \"$1\"' sh {quote(target)} "
                           f"< {quote(staged)}", f"updating {remote_path} in it")
            return
        source = staged + "/." if directory else staged
        self._host(f"{engine} exec {self._name} mkdir -p {quote(posixpath.dirname(target))} && "
                   f"{engine} cp {quote(source)} {self._name}:{quote(target)}",
                   f"copying {remote_path} into it")

    def get(self, remote_path: str, local_path: str) -> None:
        """Copied out of the container to the host (owned by the login user), then fetched."""
        engine, temp = self.engine(), f"{self._stage}/.get-{uuid.uuid4().hex[:12]}"
        owner = 'sudo -n chown -R "$(id -u):$(id -g)" ' + quote(temp) if engine.startswith("sudo") \
            else "true"
        self._host(f"mkdir -p {quote(self._stage)} && {engine} cp "
                   f"{self._name}:{quote(self._target(remote_path))} {quote(temp)} && {owner}",
                   f"copying {remote_path} out of it")
        try:
            self.host.get(temp, local_path)
        finally:
            self.host.run(f"rm -rf {quote(temp)}")

    def _state(self) -> tuple[bool, list[str]]:
        """Whether the container runs, and where its mounts are (targets inside it)."""
        out = self._host(f"{self.engine()} inspect -f '{{{{.State.Running}}}} {{{{range .Mounts}}}}"
                         f"{{{{.Destination}}}} {{{{end}}}}' {self._name} 2>/dev/null || true",
                         "inspect")
        words = out.split()
        return (bool(words) and words[0] == "true"), words[1:]

    def _home_dir(self) -> str:
        if self._home is None:
            self._home = self._host(f"{self.engine()} exec {self._name} sh -c 'echo $HOME'",
                                    "reading its home").strip().splitlines()[-1]
        return self._home

    def _target(self, remote: str) -> str:
        """The path in the container: `~` is the image user's home."""
        path = _norm(remote)
        return self._home_dir() + path[1:] if path.startswith("~") else path

    def _target_sh(self, remote: str) -> str:
        """_target() as a shell word, the home taken from $home (the container is not up yet)."""
        path = _norm(remote)
        return '"$home"' + quote(path[1:]) if path.startswith("~") else quote(path)

    def _staged(self, remote: str) -> str:
        path = _norm(remote)
        return f"{self._stage}/home{path[1:]}" if path.startswith("~") else f"{self._stage}/root{path}"

    def _host(self, command: str, what: str) -> str:
        """Run on the host: its output, or one line naming the container and what failed."""
        chunks: list[str] = []
        result = self.host.run(command, on_output=chunks.append)
        if result.exit_code != 0:
            tail = " | ".join(result.output_tail.strip().splitlines()[-3:])
            raise LauncherError(f"container {self.docker.container_name}: {what} failed "
                                f"(exit {result.exit_code}): {tail}")
        return "".join(chunks)


def _norm(remote: str) -> str:
    """`~`, `~/x` or `/x`; a relative path is relative to the home, as for every runner."""
    path = posixpath.normpath(remote)
    if path == "~" or path.startswith("~/") or path.startswith("/"):
        return path
    return "~" if path == "." else f"~/{path}"
