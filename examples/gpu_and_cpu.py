"""Mixed work: CPU-only preprocessing and a GPU training step.

On cluster-configs/local-gpu.yaml the CPU tasks make the autoscaler launch `cpu-4` workers (never a
GPU node), then the GPU task makes it launch one `gpu-a10` worker. Prints where each ran.
"""

import os
import sys

import runtime as ray


@ray.remote(num_cpus=2)
def preprocess(shard: int) -> tuple:
    return [shard * 10 + i for i in range(10)], os.environ.get("CLUSTER_NODE_TYPE")


@ray.remote(num_gpus=1)
def train(*shards: list) -> tuple:
    # a real job would find its device through CUDA_VISIBLE_DEVICES here
    return sum(sum(s) for s in shards), os.environ.get("CLUSTER_NODE_TYPE")


def main() -> int:
    ray.init("auto")
    results = ray.get([preprocess.remote(i) for i in range(4)])
    print(f"preprocessing ran on {sorted({node_type for _, node_type in results})}")
    total, gpu_node_type = ray.get(train.remote(*[shard for shard, _ in results]))
    print(f"trained on {gpu_node_type}; total {total}")
    return 0 if total == sum(range(40)) else 1


if __name__ == "__main__":
    sys.exit(main())
