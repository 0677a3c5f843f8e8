"""Runtime figures on this machine: init time, no-op task throughput (1k, 10k), a 1000-task chain,
single-task round trip, sequential actor calls/s, actor calls/s with 1000 in flight, a tree of
255 tasks that wait for their children, streamed generator items/s, put/get of a 1 MB bytes object, and put/get throughput of 1 MB and 100 MB numpy arrays (GB/s; a get maps shared
memory, no copy).

Each workload runs on the embedded runtime (a private single-node cluster started by `init`), and on
Ray too when `import ray` works (Ray is not a dependency: nothing installs it), each system in a
process of its own. Run:
python bench/bench_runtime.py [--num-cpus N]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def measure(ray, num_cpus: int) -> dict:
    figures = {}
    t = time.perf_counter()
    ray.init(num_cpus=num_cpus)
    figures["init_s"] = time.perf_counter() - t
    try:
        @ray.remote
        def noop():
            return None

        ray.get([noop.remote() for _ in range(50)])  # warm the worker processes
        t = time.perf_counter()
        ray.get([noop.remote() for _ in range(1000)])
        figures["noop_tasks_per_s_1k"] = 1000 / (time.perf_counter() - t)
        t = time.perf_counter()
        ray.get([noop.remote() for _ in range(10_000)])
        figures["noop_tasks_per_s_10k"] = 10_000 / (time.perf_counter() - t)

        @ray.remote
        def inc(x):
            return x + 1

        t = time.perf_counter()
        ref = 0
        for _ in range(1000):
            ref = inc.remote(ref)
        assert ray.get(ref) == 1000
        figures["chain_1000_tasks_s"] = time.perf_counter() - t

        trips = []
        for _ in range(200):
            t = time.perf_counter()
            ray.get(noop.remote())
            trips.append(time.perf_counter() - t)
        figures["task_round_trip_ms_median"] = statistics.median(trips) * 1000

        @ray.remote
        class Counter:
            def __init__(self):
                self.n = 0

            def inc(self):
                self.n += 1
                return self.n

        counter = Counter.remote()
        ray.get(counter.inc.remote())
        t = time.perf_counter()
        for _ in range(500):
            ray.get(counter.inc.remote())
        figures["actor_calls_per_s_sync"] = 500 / (time.perf_counter() - t)
        t = time.perf_counter()
        ray.get([counter.inc.remote() for _ in range(1000)])
        figures["actor_calls_per_s_1000_in_flight"] = 1000 / (time.perf_counter() - t)

        payload = os.urandom(1 << 20)
        puts, gets = [], []
        for _ in range(20):
            t = time.perf_counter()
            ref = ray.put(payload)
            puts.append(time.perf_counter() - t)
            t = time.perf_counter()
            assert len(ray.get(ref)) == len(payload)
            gets.append(time.perf_counter() - t)
        figures["put_1MB_ms_median"] = statistics.median(puts) * 1000
        figures["get_1MB_ms_median"] = statistics.median(gets) * 1000
        for label, size, rounds in (("1MB", 1 << 20, 50), ("100MB", 100 << 20, 5)):
            figures.update(numpy_put_get(ray, label, size, rounds))

        @ray.remote
        def tree(depth):  # each task waits for its two children: its CPU must be lent out
            if depth == 0:
                return 1
            return sum(ray.get([tree.remote(depth - 1), tree.remote(depth - 1)]))

        t = time.perf_counter()
        assert ray.get(tree.remote(7)) == 128
        figures["tree_of_255_nested_tasks_s"] = time.perf_counter() - t

        @ray.remote
        def stream(n):
            for i in range(n):
                yield i

        t = time.perf_counter()
        assert sum(ray.get(ref) for ref in stream.remote(2000)) == 1999 * 2000 // 2
        figures["generator_items_per_s_streamed"] = 2000 / (time.perf_counter() - t)
    finally:
        ray.shutdown()
    return figures


def numpy_put_get(ray, label: str, size: int, rounds: int) -> dict:
    """GB/s of put and of get of a float64 array of `size` bytes (median of `rounds`)."""
    array = np.random.default_rng(0).random(size // 8)
    puts, gets = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        ref = ray.put(array)
        puts.append(time.perf_counter() - t)
        t = time.perf_counter()
        got = ray.get(ref)
        gets.append(time.perf_counter() - t)
        assert got.shape == array.shape
        del ref, got
    return {f"put_{label}_numpy_GB_per_s": size / statistics.median(puts) / 1e9,
            f"get_{label}_numpy_GB_per_s": size / statistics.median(gets) / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--only", choices=["runtime", "ray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:  # one system, in a process of its own: print its figures as JSON
        os.environ["CLUSTER_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="bench-runtime-")
        os.environ.pop("CLUSTER_ADDRESS", None)
        print(json.dumps(measure(importlib.import_module(args.only), args.num_cpus)))
        return
    results = {}
    for name in ("runtime", "ray"):
        if name == "ray" and importlib.util.find_spec("ray") is None:
            print("(ray is not importable: runtime figures only)")
            continue
        run = subprocess.run([sys.executable, __file__, "--only", name,
                              f"--num-cpus={args.num_cpus}"], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"the {name} run failed:\n{run.stderr[-3000:]}")
        results[name] = json.loads(run.stdout.strip().splitlines()[-1])
    names = list(results["runtime"])
    print(f"{'workload':36s}" + "".join(f"{k:>12s}" for k in results)
          + ("   runtime vs ray (>1: runtime better)" if "ray" in results else ""))
    for name in names:
        row = f"{name:36s}" + "".join(f"{r[name]:12.2f}" for r in results.values())
        ours, theirs = results["runtime"][name], results.get("ray", {}).get(name)
        if theirs and ours:
            lower_is_better = "_per_s" not in name and name.endswith(("_s", "_ms_median"))
            better = theirs / ours if lower_is_better else ours / theirs
            row += f"   {better:.2f}x"
        print(row)


if __name__ == "__main__":
    main()
