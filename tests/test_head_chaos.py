"""The head's GCS and autoscaler killed with SIGKILL at random moments while a driver's work scales a
`local` cluster up: the head's supervisor brings each back, every result the driver gets is
right, the cluster scales down when idle, and `cluster down` leaves no node and no process.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

from runtime.supervisor import STABLE_S, child_pids
from tests.conftest import pid_alive, wait_for
from tests.test_e2e_local import REPO, _group_pids, _nodes, local_cluster  # noqa: F401

KILLS = 20
TASKS = 80  # of 2 s each on at most 3 two-CPU workers: about a minute of work


def test_gcs_and_autoscaler_killed_during_a_scale_up(local_cluster):  # noqa: F811
    cli, config, state = local_cluster
    cli("up", "-y", config)
    [head] = [n for n in _nodes(state).values() if n["tags"]["node-kind"] == "head"]
    runtime_dir = Path(head["node_dir"]) / ".cluster"
    driver = {}
    thread = threading.Thread(target=lambda: driver.update(run=cli(
        "submit", config, str(REPO / "examples" / "scale_demo.py"), str(TASKS), "1000",
        check=False, timeout=600)))
    thread.start()

    # Random moments, but each process lives STABLE_S between kills: a process killed sooner
    # is one failing at its start, which its supervisor restarts more and more slowly.
    rng, pgids = random.Random(20261203), {head["pgid"]}
    killed_at = {"gcs": 0.0, "autoscaler": 0.0}
    kills = 0
    while kills < KILLS:
        time.sleep(rng.uniform(0.2, 1.0))
        pgids |= {n["pgid"] for n in _nodes(state).values()}
        ready = [n for n, at in killed_at.items() if time.monotonic() - at > STABLE_S + 0.5]
        pid = child_pids(runtime_dir).get(rng.choice(ready)) if ready else None
        if pid is None:
            continue
        name = next(n for n, p in child_pids(runtime_dir).items() if p == pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it was just being restarted
            continue
        killed_at[name], kills = time.monotonic(), kills + 1
    assert thread.is_alive(), "the driver ended before the last kill: make its work longer"
    thread.join(600)

    run = driver["run"]
    assert run.returncode == 0 and "All results correct." in run.stdout, run.stdout + run.stderr
    wait_for(lambda: len(child_pids(runtime_dir)) == 3  # gcs, agent, autoscaler
             and all(pid_alive(p) for p in child_pids(runtime_dir).values()), 30,
             "every head process to run again")
    assert "Usage:" in cli("status", config).stdout
    wait_for(lambda: len(_nodes(state)) == 1, 90, "the idle workers to be removed")
    cli("down", "-y", config)
    assert _nodes(state) == {}
    wait_for(lambda: not _group_pids(pgids), 15, "every process of every node to end")
