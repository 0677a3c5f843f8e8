"""Keeps a node's runtime processes running: `python -m runtime.supervisor --children JSON`.

`cluster start` starts one supervisor per node (runtime.node), which starts the node's processes
(on the head the GCS, the node agent and the autoscaler; on a worker its agent) and starts again,
within half a second, any that exits while the supervisor is not stopping. One that keeps failing
is started again after a delay that doubles with each quick failure (up to MAX_DELAY_S); each exit
and its reason go to the supervisor's log, ~/.cluster/logs/supervisor.log.

A child listed as held (the autoscaler) starts only once `cluster start` sends SIGUSR1, when the
GCS and the agent are up, so its first look at the cluster already sees the head.
SIGTERM stops the children one by one in the reverse of their start order (the autoscaler first,
so it launches nothing while the rest goes down; the GCS last, so the agent can unregister), and
then the supervisor. Its children are tied to it with PR_SET_PDEATHSIG: if the supervisor is
killed outright, the kernel sends each of them SIGTERM, so nothing runs on unsupervised. The
supervisor's status file (`supervisor.json` in the runtime dir: each child's pid, starts and last
exit) lets `cluster stop` find the children even then, and `cluster start` wait for them.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from runtime.session import logs_dir, runtime_dir

log = logging.getLogger("supervisor")

POLL_S = 0.1
MIN_DELAY_S = 0.2  # a child that exits is started again after this long...
MAX_DELAY_S = 30.0  # ...doubled after each exit within STABLE_S of its start, up to this
STABLE_S = 5.0  # a child that ran this long was not failing at its start: no back-off
STOP_GRACE_S = 5.0  # children still running this long after SIGTERM are killed
STATUS_FILE = "supervisor.json"
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def spawn(name: str, argv: list, env: Optional[dict] = None, preexec_fn=None) -> subprocess.Popen:
    """`python -m argv...` with its output appended to logs/<name>.log."""
    logs_dir().mkdir(parents=True, exist_ok=True)
    with open(logs_dir() / f"{name}.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", *argv], env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)


def read_status(directory: Path) -> dict:
    """The supervisor's status file in a runtime dir: {"pid": N, "children": {name: {"pid",
    "starts", "last_exit"}}}, or {} when there is none."""
    try:
        return json.loads((Path(directory) / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def child_pids(directory: Path) -> dict:
    """name -> pid of the children the supervisor of this runtime dir runs now."""
    children = read_status(directory).get("children", {})
    return {name: c["pid"] for name, c in children.items() if c.get("pid")}


@dataclass
class _Child:
    name: str
    argv: list
    held: bool = False  # not started before SIGUSR1
    process: Optional[subprocess.Popen] = None
    starts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    delay: float = MIN_DELAY_S
    last_exit: Optional[int] = None


class Supervisor:
    def __init__(self, children: list):
        self._children = [_Child(*child) for child in children]
        self._stopping = False
        self._status_path = runtime_dir() / STATUS_FILE

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop_requested)
        signal.signal(signal.SIGINT, self._stop_requested)
        signal.signal(signal.SIGUSR1, self._release)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by the children: they outlive SSH
        while not self._stopping:
            if any([self._tend(child) for child in self._children]):
                self._write_status()
            time.sleep(POLL_S)
        self._stop_children()

    def _stop_requested(self, signum, frame) -> None:
        self._stopping = True

    def _release(self, signum, frame) -> None:
        for child in self._children:
            child.held = False

    def _tend(self, child: _Child) -> bool:
        """Start the child if it is due, note its exit if it exited; True if anything changed."""
        now = time.monotonic()
        if child.process is None:
            if child.held or now < child.next_start or self._stopping:
                return False
            child.process = spawn(child.name, child.argv, preexec_fn=_die_with(os.getpid()))
            child.starts += 1
            child.started_at = now
            log.info("started %s (pid %d)%s", child.name, child.process.pid,
                     f", start {child.starts}" if child.starts > 1 else "")
            return True
        code = child.process.poll()
        if code is None or self._stopping:
            return False
        ran = now - child.started_at
        if ran >= STABLE_S:
            child.delay = MIN_DELAY_S
        child.process, child.last_exit, child.next_start = None, code, now + child.delay
        log.warning("%s exited with %s after %.1fs; starting it again in %.1fs%s%s", child.name,
                    _describe(code), ran, child.delay,
                    " (failing repeatedly: backing off)" if child.delay > MIN_DELAY_S else "",
                    _last_line(child.name))
        child.delay = min(child.delay * 2, MAX_DELAY_S)
        return True

    def _stop_children(self) -> None:
        running = [c for c in reversed(self._children) if c.process is not None]
        deadline = time.monotonic() + STOP_GRACE_S
        for child in running:
            child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time: killing it", child.name)
                child.process.kill()
                child.process.wait()
        self._status_path.unlink(missing_ok=True)
        log.info("stopped %s", ", ".join(c.name for c in running) or "nothing")

    def _write_status(self) -> None:
        status = {"pid": os.getpid(), "children": {
            c.name: {"pid": c.process.pid if c.process else None, "starts": c.starts,
                     "last_exit": c.last_exit} for c in self._children}}
        tmp = self._status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self._status_path)


def _die_with(parent: int):
    """A preexec_fn: the child gets SIGTERM when the supervisor dies (Linux), even by SIGKILL."""
    def tie() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the tie was made
            os._exit(1)
    return tie


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def _last_line(name: str) -> str:
    try:
        with open(logs_dir() / f"{name}.log", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return f"; its log ends: {lines[-1][:300]}" if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description="Start this node's runtime processes and keep "
                                                 "them running.")
    parser.add_argument("--children", required=True,
                        help='JSON list of [name, argv after "python -m", held until SIGUSR1], '
                             'in start order')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Supervisor(json.loads(args.children)).run()


if __name__ == "__main__":
    main()
