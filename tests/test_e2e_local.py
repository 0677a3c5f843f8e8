"""The whole path on the `local` provider, through the real `cluster` CLI in subprocesses:
config -> provider -> head -> runtime -> demand -> autoscaler -> workers -> results -> idle -> removal.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLUSTER, pid_alive, wait_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def local_cluster(tmp_path, request):
    """A config (local.yaml unless parametrized) with a short idle timeout; `down` at the end."""
    name = getattr(request, "param", "local.yaml")
    config = yaml.safe_load((REPO / "cluster-configs" / name).read_text())
    config.update(cluster_name=f"e2e-{os.getpid()}", idle_timeout_minutes=0.1,
                  autoscaler_update_interval_s=1)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env["CLUSTER_LOCAL_STATE_DIR"] = str(tmp_path / "state")

    def cli(*args, check=True, timeout=120):
        result = subprocess.run([CLUSTER, *args], env=env, capture_output=True, text=True,
                                timeout=timeout, cwd=tmp_path)
        if check and result.returncode != 0:
            raise AssertionError(f"cluster {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    cli.env = env  # for commands a test runs in the background
    yield cli, str(path), tmp_path / "state"
    cli("down", "-y", str(path), check=False)


def _nodes(state_dir: Path) -> dict:
    return json.loads((state_dir / "nodes.json").read_text())["nodes"]


def _group_pids(pgids) -> list[int]:
    """Every live process in the given process groups (each local node is one group)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) in pgids and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids




def test_scale_up_for_demand_then_down_when_idle(local_cluster):
    cli, config, state = local_cluster
    out = cli("up", "-y", config).stdout
    assert "Cluster is up" in out
    assert len(_nodes(state)) == 1

    run = cli("submit", config, str(REPO / "examples" / "scale_demo.py"), "4", "1000")
    assert "All results correct." in run.stdout
    assert "on 2 node(s)" in run.stdout or "on 3 node(s)" in run.stdout or "on 4 node(s)" in run.stdout

    workers = {i: n for i, n in _nodes(state).items() if n["tags"]["node-kind"] == "worker"}
    assert 1 <= len(workers) <= 3
    assert {w["tags"]["node-type"] for w in workers.values()} == {"cpu-2"}
    status = cli("status", config).stdout
    assert "launched" in status and "cpu-2" in status

    wait_for(lambda: len(_nodes(state)) == 1, 40, "idle workers to be terminated")

    def scale_down_story():
        text = cli("status", config).stdout
        return text if text.count("-> terminated") == len(workers) else None

    story = wait_for(scale_down_story, 10, "the scale-down in the autoscaler's status")
    for worker in workers:  # each went the same way: drained when idle, then removed
        assert f"{worker} -> draining: idle for" in story
        assert f"{worker} -> terminated: terminated" in story


def test_placement_group_launches_the_nodes_its_bundles_need(local_cluster, tmp_path):
    cli, config, state = local_cluster
    cli("up", "-y", config)
    driver = tmp_path / "pg_driver.py"
    driver.write_text(
        "import os, runtime as ray\n"
        "ray.init('auto')\n"
        "pg = ray.placement_group([{'CPU': 2}] * 2, strategy='STRICT_SPREAD')\n"
        "ray.get(pg.ready(), timeout=90)\n"
        "where = ray.remote(num_cpus=2)(lambda: os.environ['CLUSTER_NODE_ID'])\n"
        "nodes = ray.get([where.options(placement_group=pg, placement_group_bundle_index=i)"
        ".remote() for i in range(2)])\n"
        "print('bundles on', len(set(nodes)), 'nodes')\n")
    assert "bundles on 2 nodes" in cli("submit", config, str(driver)).stdout
    workers = [n for n in _nodes(state).values() if n["tags"]["node-kind"] == "worker"]
    assert len(workers) == 2  # one 2-CPU worker per spread bundle, nothing more


def test_infeasible_demand_is_reported_and_launches_nothing(local_cluster, tmp_path):
    cli, config, state = local_cluster
    cli("up", "-y", config)
    driver = tmp_path / "gpu_driver.py"
    driver.write_text(
        "import runtime as ray\n"
        "ray.init('auto')\n"
        "ref = ray.remote(num_gpus=1)(lambda: 1).remote()\n"
        "try:\n    ray.get(ref, timeout=15)\nexcept ray.GetTimeoutError:\n    print('still waiting')\n")
    submitted = {}
    thread = threading.Thread(target=lambda: submitted.update(run=cli("submit", config, str(driver))))
    thread.start()  # the driver waits: its task stays queued (demand) while it lives

    def infeasible_status():
        text = cli("status", config).stdout
        return text if "Infeasible" in text else None

    status = wait_for(infeasible_status, 20, "infeasible demand in status")
    assert "GPU: 1}" in status
    assert len(_nodes(state)) == 1  # no worker was launched for it
    why = cli("why", config, "GPU=1").stdout
    assert "No node type can hold {GPU: 1}" in why and "cpu-2: {CPU: 2" in why
    thread.join(60)
    output = submitted["run"].stdout + submitted["run"].stderr
    assert "still waiting" in output
    # the driver was told, while it waited, that its work can never be placed
    assert "Warning: work needing {CPU: 1, GPU: 1} cannot be scheduled" in output


def test_up_restarts_a_head_runtime_that_is_down(local_cluster):
    cli, config, _ = local_cluster
    cli("up", "-y", config)
    cli("exec", config, "cluster stop")  # the whole runtime, its supervisor too
    assert cli("status", config, check=False).returncode != 0
    again = cli("up", "-y", config).stdout
    assert "its runtime does not answer" in again and "restarting it" in again
    assert "Usage:" in cli("status", config).stdout


def test_gcs_storage_says_where_the_heads_gcs_keeps_its_tables(local_cluster, tmp_path):
    cli, config, state = local_cluster
    store = tmp_path / "tables" / "gcs.sqlite3"
    store.parent.mkdir()
    data = yaml.safe_load(Path(config).read_text())
    Path(config).write_text(yaml.safe_dump({**data, "gcs_storage": f"sqlite://{store}"}))
    cli("up", "-y", config)
    [head] = _nodes(state).values()
    session = json.loads((Path(head["node_dir"]) / ".cluster" / "session.json").read_text())
    assert session["gcs_storage"] == f"sqlite://{store}" and store.stat().st_size > 0


def test_up_again_changes_nothing_and_down_leaves_nothing(local_cluster):
    cli, config, state = local_cluster
    cli("up", "-y", config)
    first = _nodes(state)
    session = json.loads((Path(next(iter(first.values()))["node_dir"]) / ".cluster" / "session.json")
                         .read_text())
    again = cli("up", "-y", config).stdout
    assert "up to date" in again
    assert _nodes(state) == first  # same head, same tags
    assert all(pid_alive(p) for p in session["pids"].values())  # runtime not restarted

    pgids = {n["pgid"] for n in first.values()}
    pids = _group_pids(pgids)
    assert set(session["pids"].values()) <= set(pids)
    cli("down", "-y", config)
    assert not [p for p in pids if pid_alive(p)]
    assert _nodes(state) == {}
    assert not any((state / "clusters").glob("*/*"))


@pytest.mark.parametrize("stage,commands", [("setting-up", "setup_commands"),
                                            ("starting", "head_start_commands")])
def test_down_during_up_leaves_no_node_and_no_process(local_cluster, stage, commands):
    cli, config, state = local_cluster
    data = yaml.safe_load(Path(config).read_text())  # a stage long enough to be caught in
    data[commands] = data.get(commands, []) + ["sleep 30"]
    Path(config).write_text(yaml.safe_dump(data))
    up = subprocess.Popen([CLUSTER, "up", "-y", config], env=cli.env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)

    def head_at_stage():
        nodes = _nodes(state) if (state / "nodes.json").exists() else {}
        return [n for n in nodes.values() if n["tags"].get("install-stage") == stage]

    [head] = wait_for(head_at_stage, 60, f"the head at stage {stage}")
    cli("down", "-y", config)
    _, err = up.communicate(timeout=120)
    assert up.returncode != 0 and "Traceback" not in err  # up says why it stopped, in one line
    assert "was terminated while `cluster up` set it up" in err
    assert len(err.strip().splitlines()) == 1, err
    assert _nodes(state) == {}
    wait_for(lambda: not _group_pids({head["pgid"]}), 10, "every process of the head to end")


@pytest.mark.parametrize("local_cluster", ["local-gpu.yaml"], indirect=True)
def test_gpu_work_launches_gpu_workers_and_cpu_work_does_not(local_cluster):
    cli, config, state = local_cluster
    cli("up", "-y", config)
    out = cli("submit", config, str(REPO / "examples" / "gpu_and_cpu.py")).stdout
    assert "trained on gpu-a10" in out
    workers = [n["tags"]["node-type"] for n in _nodes(state).values()
               if n["tags"]["node-kind"] == "worker"]
    assert workers.count("gpu-a10") == 1  # one GPU task: one GPU node
    assert "preprocessing ran on ['cpu-4']" in out  # CPU-only work launched no GPU node


@pytest.mark.parametrize("verb", [["down", "-y"], ["status"], ["exec"], ["get-head-ip"]],
                         ids=["down", "status", "exec", "get-head-ip"])
def test_commands_on_a_cluster_that_does_not_exist_fail_clearly(local_cluster, verb):
    cli, config, _ = local_cluster
    args = verb + [config] + (["echo hi"] if verb == ["exec"] else [])
    result = cli(*args, check=False)
    assert result.returncode != 0
    assert "is not running" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_config_is_one_line_with_the_key_path_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\nprovider: {type: local}\n"
                   "available_node_types:\n  head: {resources: {CPU: -1}}\nhead_node_type: head\n")
    result = subprocess.run([CLUSTER, "up", "-y", str(bad)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "available_node_types.head.resources.CPU" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""
