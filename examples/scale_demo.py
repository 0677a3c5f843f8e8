"""A driver whose tasks need more CPUs than the head has, so the cluster must grow to run them.

Run it on a cluster with `cluster submit cluster-configs/local.yaml examples/scale_demo.py`.
Each task needs 2 CPUs; the demo head offers 1, so every task waits as demand until the autoscaler
has launched 2-CPU workers. The results are checked, and the script exits non-zero if any is wrong.
"""

import socket
import sys
import time

import runtime as ray


@ray.remote(num_cpus=2)
def sum_of_squares(start: int, stop: int) -> tuple:
    time.sleep(2)  # long enough that the work visibly queues and spreads over several workers
    return sum(i * i for i in range(start, stop)), socket.gethostname(), _node_ip()


def _node_ip() -> str:
    import os
    return os.environ.get("CLUSTER_NODE_IP", "?")


@ray.remote(num_cpus=0)
def combine(*partials: tuple) -> int:
    return sum(p[0] for p in partials)


def main(num_tasks: int = 6, chunk: int = 100_000) -> int:
    ray.init(address="auto")
    started = time.time()
    print(f"Submitting {num_tasks} tasks of 2 CPUs each; cluster has {ray.cluster_resources()}")
    parts = [sum_of_squares.remote(i * chunk, (i + 1) * chunk) for i in range(num_tasks)]
    total_ref = combine.remote(*parts)
    results = ray.get(parts)
    total = ray.get(total_ref)
    expected = sum(i * i for i in range(num_tasks * chunk))
    nodes = sorted({ip for _, _, ip in results})
    print(f"Ran {num_tasks} tasks on {len(nodes)} node(s) {nodes} in {time.time() - started:.1f}s")
    print(f"Sum of squares below {num_tasks * chunk}: {total} (expected {expected})")
    if total != expected or any(r[0] != sum(i * i for i in range(k * chunk, (k + 1) * chunk))
                                for k, r in enumerate(results)):
        print("WRONG RESULT", file=sys.stderr)
        return 1
    print("All results correct.")
    return 0


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:])))
