"""Ray merges env_vars: a task's runtime_env adds to (and overrides) the job's, and nested
tasks inherit their parent's."""
import os

import ray

ray.init(runtime_env={"env_vars": {"GREETING": "hello", "TARGET": "job"}})


@ray.remote
def read(*names):
    return [os.environ.get(name) for name in names]


@ray.remote
def nested():
    return ray.get(read.remote("GREETING", "TARGET", "EXTRA"))


only_target = {"env_vars": {"TARGET": "task", "EXTRA": "1"}}
print(ray.get(read.options(runtime_env=only_target).remote("GREETING", "TARGET", "EXTRA")))
print(ray.get(nested.options(runtime_env=only_target).remote()))
