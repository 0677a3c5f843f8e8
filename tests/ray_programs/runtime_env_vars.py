import os

import ray

ray.init(runtime_env={"env_vars": {"GREETING": "hello", "TARGET": "job"}})


@ray.remote
def read(*names):
    return [os.environ.get(name) for name in names]


@ray.remote
class Reader:
    def read(self, *names):
        return [os.environ.get(name) for name in names]


print(ray.get(read.remote("GREETING", "TARGET")))
print(ray.get(Reader.remote().read.remote("GREETING", "TARGET")))
task_env = {"env_vars": {"GREETING": "hi", "TARGET": "task"}}
print(ray.get(read.options(runtime_env=task_env).remote("GREETING", "TARGET")))
actor_env = {"env_vars": {"GREETING": "hey", "TARGET": "actor"}}
print(ray.get(Reader.options(runtime_env=actor_env).remote().read.remote("GREETING", "TARGET")))
print(os.environ.get("TARGET"))
