"""max_calls=N: a worker process runs the function at most N times, then exits."""
import os

import ray


@ray.remote(max_calls=1)
def worker_pid():
    return os.getpid()


pids = [ray.get(worker_pid.remote()) for _ in range(3)]
print(len(set(pids)))
twice = worker_pid.options(max_calls=2)
print(len({ray.get(twice.remote()) for _ in range(4)}) >= 2)
