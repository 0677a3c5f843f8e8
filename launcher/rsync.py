"""rsync driven over an ssh command line: the argv, paths, and failures as one line naming the node.

It knows nothing of SSH beyond the argv it is handed for `-e`; launcher.ssh builds that argv from
an SSHTarget (launcher.ssh.rsync) and gives SSHCommandRunner.put/get their directory semantics.

Filtering, as in Ray's cluster YAML: `rsync_exclude` patterns become `--exclude=PATTERN`;
`rsync_filter` entries become `--filter=RULE`, where the rule `dir-merge,- .gitignore` makes rsync
skip what each directory's .gitignore lists, and a bare file name (`.gitignore`, Ray's form) means
exactly that rule. Never `--delete`: files that exist only on the destination stay.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import subprocess
from typing import Sequence

from launcher.errors import RsyncError


def home_relative(remote_path: str) -> str:
    """`~` and `~/x` as paths relative to the login directory, the user's home: neither rsync nor
    a quoted shell word would expand the tilde."""
    if remote_path == "~":
        return "."
    if remote_path.startswith("~/"):
        return remote_path[2:] or "./"
    return remote_path


def filter_rule(entry: str) -> str:
    """A filter rule has a space between the rule and its pattern; a bare name is a file of
    patterns to merge per directory, as Ray's rsync_filter means it."""
    return entry if " " in entry else f"dir-merge,- {entry}"


def rsync_argv(
    ssh_argv: Sequence[str],
    src: str,
    dst: str,
    excludes: Sequence[str] = (),
    filters: Sequence[str] = (),
    rsync_path: str = "rsync",
) -> list[str]:
    """Archive mode, compressed. rsync_path is what the remote shell runs for rsync."""
    argv = ["rsync", "-az", "-e", shlex.join(ssh_argv), f"--rsync-path={rsync_path}"]
    argv += [f"--exclude={pattern}" for pattern in excludes]
    argv += [f"--filter={filter_rule(entry)}" for entry in filters]
    return [*argv, "--", src, dst]


def transfer(
    ssh_argv: Sequence[str],
    login: str,
    src: str,
    dst: str,
    *,
    node: str,
    upload: bool,
    excludes: Sequence[str] = (),
    filters: Sequence[str] = (),
) -> None:
    """Copy src to dst; the remote one (dst when upload, else src) is a path on `login`
    (user@host), relative to the home directory unless absolute. Paths as rsync takes them: a
    trailing slash on a directory copies its contents. The parent of dst is created."""
    remote_path = home_relative(dst if upload else src)
    local_path = _local(src if upload else dst)
    if upload:
        if not os.path.lexists(local_path):
            raise RsyncError(node, f"cannot upload {src}: no such file or directory")
        parent = remote_path if remote_path.endswith("/") else posixpath.dirname(remote_path)
        mkdir = f"mkdir -p {shlex.quote(parent or '.')} && rsync"
        argv = rsync_argv(ssh_argv, local_path, f"{login}:{remote_path}", excludes, filters, mkdir)
    else:
        os.makedirs(os.path.dirname(local_path.rstrip("/")), exist_ok=True)
        argv = rsync_argv(ssh_argv, f"{login}:{remote_path}", local_path, excludes, filters)
    _run(argv, node, f"{src} -> {dst}")


def _local(path: str) -> str:
    """Absolute, so rsync never reads `a:b` as a host; a trailing slash is kept."""
    return os.path.abspath(os.path.expanduser(path)) + ("/" if path.endswith("/") else "")


def _run(argv: list[str], node: str, what: str) -> None:
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace")
    except FileNotFoundError:
        raise RsyncError(node, "rsync is not installed on this machine; install it "
                         "(apt-get install rsync, brew install rsync)") from None
    if proc.returncode == 0:
        return
    if proc.returncode == 127 or "rsync: command not found" in proc.stderr:
        raise RsyncError(node, "rsync is not installed on the node; install it there first, e.g. "
                         "with `sudo apt-get install -y rsync` in initialization_commands")
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    # rsync's last line sums up ("rsync error: ... (code 23)"); an earlier one says what failed
    detail = next((line for line in lines if not line.startswith("rsync error:")), None)
    detail = detail or (lines[-1] if lines else "no message")
    raise RsyncError(node, f"rsync {what} failed (exit {proc.returncode}): {detail}")
