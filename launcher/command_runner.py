"""How the launcher runs commands and copies files on a node, whatever the provider.

`local` nodes run commands through their node supervisor; SSH-reached nodes (ssh, aws, gcp, azure)
through a persistent SSH connection. Callers see only this interface.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

OutputSink = Callable[[str], None]
"""Receives a command's combined stdout/stderr as it arrives, in text chunks."""


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    output_tail: str  # the last few KiB of combined output, for error messages


class CommandRunner(abc.ABC):
    """Runs shell commands on one node and moves files to and from it."""

    @abc.abstractmethod
    def run(
        self,
        command: str,
        *,
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        on_output: Optional[OutputSink] = None,
    ) -> CommandResult:
        """Run `command` with bash on the node (cwd = the node user's home) and wait for it.

        `env` is added to the node's environment. A command still running after `timeout` seconds
        is killed and reported with exit code 124. Never raises for a non-zero exit.
        """

    @abc.abstractmethod
    def shell_argv(self, command: Optional[str] = None, port_forwards: Sequence[int] = ()) -> list[str]:
        """An argv that, run in this terminal, executes `command` on the node (an interactive login
        shell when None) with a terminal attached; each port in `port_forwards` on this machine
        then reaches the same port on the node while it runs. For `cluster attach` and `exec -p`."""

    def wait_ready(self, timeout: float) -> None:
        """Block until the node accepts commands (e.g. its sshd answers), at most `timeout` seconds.

        Raises a LauncherError carrying the last connection error. Default: ready at once.
        """

    @abc.abstractmethod
    def put(self, local_path: str, remote_path: str, *, excludes: Sequence[str] = (),
            filters: Sequence[str] = ()) -> None:
        """Copy a local file or directory onto the node. `~` in remote_path is the node's home.

        A directory is copied as a tree to remote_path (remote_path becomes that directory).
        `excludes` are rsync exclude patterns (the config's rsync_exclude); `filters` are rsync
        filter rules (rsync_filter, e.g. ".gitignore" means "dir-merge,- .gitignore").
        """

    @abc.abstractmethod
    def get(self, remote_path: str, local_path: str) -> None:
        """Copy a file or directory from the node to the local machine (same semantics as put)."""
