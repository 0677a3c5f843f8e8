"""How long the local cluster's lifecycle steps take, through the real CLI.

    python bench/bench_cluster_up.py [--repeats 3]

Prints, per repeat: cold `cluster up` until the head's runtime is ready, an unchanged re-`up`,
the time for a 2-CPU task to get a result when only a new worker can run it (autoscaler tick +
node launch + runtime start + task), and `cluster down`. Uses a private state dir; leaves nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = str(Path(sys.executable).parent / "cluster")
DRIVER = """
import time, runtime as ray
ray.init("auto")
start = time.time()
ray.get(ray.remote(num_cpus=2)(lambda: 1).remote())
print(f"SCALEUP {time.time() - start:.3f}")
"""


def _timed(env, *args) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([CLUSTER, *args], env=env, capture_output=True, text=True, check=True,
                         timeout=300).stdout
    return time.perf_counter() - start, out


def run_once(workdir: Path, index: int) -> dict:
    config = yaml.safe_load((REPO / "cluster-configs" / "local.yaml").read_text())
    config.update(cluster_name=f"bench-{os.getpid()}-{index}", autoscaler_update_interval_s=1)
    path = workdir / f"cluster-{index}.yaml"
    path.write_text(yaml.safe_dump(config))
    driver = workdir / "driver.py"
    driver.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env["CLUSTER_LOCAL_STATE_DIR"] = str(workdir / "state")
    try:
        cold, _ = _timed(env, "up", "-y", str(path))
        warm, _ = _timed(env, "up", "-y", str(path))
        _, out = _timed(env, "submit", str(path), str(driver))
        scale_up = float(out.split("SCALEUP")[1].split()[0])
    finally:
        down, _ = _timed(env, "down", "-y", str(path))
    return {"cold up": cold, "re-up": warm, "task needing a new worker": scale_up, "down": down}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_once(Path(tmp), i) for i in range(args.repeats)]
    print(f"local provider, cluster-configs/local.yaml, {args.repeats} runs (seconds)")
    print(f"{'step':<28}{'median':>8}{'min':>8}{'max':>8}")
    for step in runs[0]:
        values = [r[step] for r in runs]
        print(f"{step:<28}{statistics.median(values):>8.2f}{min(values):>8.2f}{max(values):>8.2f}")


if __name__ == "__main__":
    main()
