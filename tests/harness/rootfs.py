"""The cached Debian root filesystem that container nodes (tests/harness/containers.py) boot from.

Built once per recipe with debootstrap plus the packages a node needs (sshd, rsync, python3,
sudo, and podman with runc, so a node can run containers as a cloud VM with an engine does), in a
private mount namespace, into a temporary directory renamed when complete; cached in
~/.cache/cluster-launcher under a name that hashes the recipe. A file lock keeps concurrent builds
(parallel test processes) apart.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

CACHE_DIR = Path.home() / ".cache" / "cluster-launcher"
PATH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
# podman and runc: 4 s and 114 MB more; only tests that import an image pay more (about 12 s).
PACKAGES = "openssh-server rsync python3 python3-venv procps sudo podman runc"

DEBOOTSTRAP = "debootstrap --variant=minbase bookworm \"$1\""
# Runs in a private mount namespace, so the /proc and /dev mounts vanish even if the build is killed.
CUSTOMIZE = f"""
mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev"
printf '#!/bin/sh\\nexit 101\\n' > "$1/usr/sbin/policy-rc.d" && chmod +x "$1/usr/sbin/policy-rc.d"
chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {PACKAGES}
chroot "$1" apt-get clean && rm -f "$1/usr/sbin/policy-rc.d"
chroot "$1" useradd -m -s /bin/bash ubuntu && chroot "$1" usermod -p '*' ubuntu
echo 'ubuntu ALL=(ALL) NOPASSWD:ALL' > "$1/etc/sudoers.d/ubuntu" && chmod 440 "$1/etc/sudoers.d/ubuntu"
chroot "$1" ssh-keygen -A
"""


class RootfsError(RuntimeError):
    """The node rootfs could not be built; tests that need nodes must fail, not skip."""


def ensure_rootfs(progress: Callable[[str], None] = print) -> Path:
    """The cached node rootfs, built once per recipe; a lock keeps concurrent builds apart."""
    key = hashlib.sha256(f"{DEBOOTSTRAP}\n{CUSTOMIZE}".encode()).hexdigest()[:16]
    final = CACHE_DIR / f"rootfs-{key}"
    if final.is_dir():
        return final
    if not shutil.which("debootstrap", path=PATH_ENV["PATH"]):
        raise RootfsError("debootstrap is missing: apt-get install debootstrap (scripts/bootstrap.sh does)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"rootfs-{key}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("[rootfs] waiting for another process that is building it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.is_dir():
            _build_rootfs(final, lock.fileno(), progress)
    return final


def _build_rootfs(final: Path, lock_fd: int, progress: Callable[[str], None]) -> None:
    """Build into a temp dir and rename it: an interrupted build never looks complete."""
    for stale in CACHE_DIR.glob(f".{final.name}-*"):  # left by an interrupted build (we hold the lock)
        remove_tree(stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=CACHE_DIR))
    log = CACHE_DIR / f"{final.name}.log"
    started = time.monotonic()
    steps = [("debootstrap bookworm (about 30 s)", DEBOOTSTRAP), (f"installing {PACKAGES}", CUSTOMIZE)]
    with open(log, "wb") as out:
        for what, script in steps:
            progress(f"[rootfs] {what} into {tmp}")
            # pass_fds: the lock stays held while a build process lives, even if this process dies.
            done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script,
                                   "build", str(tmp)], stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env={**os.environ, **PATH_ENV},
                                  pass_fds=(lock_fd,))
            if done.returncode:
                remove_tree(tmp)
                raise RootfsError(f"rootfs build failed at {what!r}:\n{tail(log)}\n(full log: {log})")
    tmp.chmod(0o755)
    tmp.rename(final)
    progress(f"[rootfs] ready in {time.monotonic() - started:.0f} s: {final}")


def remove_tree(path: Path) -> None:
    """rmtree, first unmounting (lazily) anything mounted below, so it never deletes through a mount."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    mounts = [m.replace("\\040", " ") for m in mounts]
    for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=True)
    shutil.rmtree(path, ignore_errors=True)


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log, or "" when it cannot be read."""
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return ""
