"""What every cloud's end-to-end test does the same way: run the `cluster` CLI as a user would,
and the CPU-then-GPU scenario that checks the autoscaler picks node types by demand.

    cli = cluster_cli(config_path, tmp_path)          # cli("up", "-y"), cli("submit", path)
    run_cpu_then_gpu_work(cli, kinds, tmp_path)       # kinds() -> sorted (node-kind, node-type)

and what the tests of Ray's own cluster YAMLs (../shared/ray-configs) share:

    path = ray_yaml("aws-example-full.yaml", tmp_path, {"docker": {"image": DROP}, ...})
    ran_on = run_on_every_node(cli, tmp_path)         # the node type of each node a task ran on
    wait_for_autoscaler_tick(cli)                     # the head's autoscaler reached the cloud
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

CLUSTER = str(Path(sys.executable).parent / "cluster")
REPO = Path(__file__).resolve().parents[2]
RAY_CONFIGS = REPO.parent / "shared" / "ray-configs"
DROP = object()  # an override's value that removes the key

CPU_DRIVER = """import runtime as ray, os
ray.init('auto')
cpu = ray.remote(num_cpus=1)(lambda: os.environ['CLUSTER_NODE_TYPE'])
print('cpu-on', sorted(set(ray.get([cpu.remote() for _ in range(2)]))))
"""
# One task pinned to each node the GCS knows: every node (workers too) runs work.
NODES_DRIVER = """import runtime as ray, os
from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init('auto')
where = ray.remote(num_cpus=1)(lambda: os.environ['CLUSTER_NODE_TYPE'])
pinned = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n['NodeID'], soft=False))
          for n in ray.nodes() if n['Alive']]
print('ran-on', sorted(ray.get([f.remote() for f in pinned], timeout=120)))
"""
GPU_DRIVER = """import runtime as ray, os
ray.init('auto')
gpu = ray.remote(num_gpus=1)(lambda: os.environ['CLUSTER_NODE_TYPE'])
print('gpu-on', sorted(set(ray.get([gpu.remote() for _ in range(2)], timeout=240))))
"""


def e2e_config(example: str, tmp_path: Path, cluster_name: str, key_path: Path, head_env: str,
                provider: dict, keep_setup: bool = False) -> Path:
    """cluster-configs/<example> made fit for a test: a small, fast-scaling cluster, the test's SSH
    key, `head_env` (the cloud endpoint and credentials) exported to the head's start command,
    `provider` merged into the provider section, no min_workers, and a 2-CPU head (the machine's
    cores). Written to tmp_path; returns its path."""
    config = yaml.safe_load((REPO / "cluster-configs" / example).read_text())
    config.update(
        cluster_name=cluster_name, max_workers=2, idle_timeout_minutes=0.15,
        autoscaler_update_interval_s=1, auth={"ssh_user": "ubuntu", "ssh_private_key": str(key_path)},
        head_start_commands=[
            "cluster stop",
            f"{head_env} cluster start --head --port=6379 --autoscaling-config=~/cluster_bootstrap.yaml"])
    if not keep_setup:
        config["setup_commands"] = []
    config["provider"].update(provider, use_internal_ips=True, ssh_timeout_s=60)
    for node_type in config["available_node_types"].values():
        node_type.pop("min_workers", None)
    config["available_node_types"]["head"]["resources"] = {"CPU": 2}
    path = tmp_path / example
    path.write_text(yaml.safe_dump(config))
    return path


def cluster_cli(config: Path, tmp_path: Path) -> Callable:
    """`cli(VERB, *args)` runs `cluster VERB <config> *args` with a private HOME (its keys and
    known_hosts) and no inherited cluster; it prints the output tails for the test's log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env.update(HOME=str(tmp_path / "home"),
               XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))

    def cli(*args, timeout=300):
        result = subprocess.run([CLUSTER, args[0], str(config), *args[1:]], env=env, text=True,
                                capture_output=True, timeout=timeout, cwd=tmp_path)
        print(result.stdout[-3000:], result.stderr[-3000:])
        return result

    return cli


def up_twice(cli) -> None:
    """`cluster up`, then again: the second finds everything up to date (bootstrap reuses what
    it made, so the launch hash is the same)."""
    up = cli("up", "-y")
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr
    again = cli("up", "-y")
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr


def run_cpu_then_gpu_work(cli, kinds: Callable[[], list], tmp_path: Path) -> None:
    """CPU work runs on the head and launches nothing; GPU work makes the head's autoscaler
    launch workers of the type named `gpu`, where it runs."""
    for name, driver in (("cpu.py", CPU_DRIVER), ("gpu.py", GPU_DRIVER)):
        (tmp_path / name).write_text(driver)
    run = cli("submit", str(tmp_path / "cpu.py"))
    assert run.returncode == 0 and "cpu-on ['head']" in run.stdout, run.stdout + run.stderr
    time.sleep(3)  # a few autoscaler ticks: CPU work launches no (GPU) worker
    assert kinds() == [("head", "head")]
    run = cli("submit", str(tmp_path / "gpu.py"))
    assert run.returncode == 0 and "gpu-on ['gpu']" in run.stdout, run.stdout + run.stderr


def merged(base: dict, override: dict) -> dict:
    """`override` merged into a copy of `base`: mappings key by key, anything else replaced; a
    DROP value removes the key."""
    out = dict(base)
    for key, value in override.items():
        if value is DROP:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def ray_yaml(name: str, tmp_path: Path, overrides: dict) -> Path:
    """Ray's own ../shared/ray-configs/<name> with `overrides` merged in (see merged), written to
    tmp_path/<name>; returns its path."""
    config = merged(yaml.safe_load((RAY_CONFIGS / name).read_text()), overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_on_every_node(cli, tmp_path: Path) -> list[str]:
    """Submit NODES_DRIVER: the sorted node types of the nodes where its tasks ran."""
    (tmp_path / "nodes.py").write_text(NODES_DRIVER)
    run = cli("submit", str(tmp_path / "nodes.py"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
    [line] = [line for line in run.stdout.splitlines() if line.startswith("ran-on ")]
    return ast.literal_eval(line.removeprefix("ran-on "))


def wait_for_autoscaler_tick(cli, timeout: float = 30) -> None:
    """Until `cluster status` shows an autoscaler update: a tick lists the cloud's nodes first, and
    only a tick that got through publishes its status, so the head's autoscaler reached the cloud
    with its own credentials."""
    deadline = time.monotonic() + timeout
    while "Autoscaler: last update" not in cli("status").stdout:
        assert time.monotonic() < deadline, "the head's autoscaler never completed a tick"
        time.sleep(1)
