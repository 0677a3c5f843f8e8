import os
import tempfile

import ray

scratch = tempfile.mkdtemp()


def attempt(name):
    """Counts the attempts of `name` in a file (tasks may run in any worker process)."""
    path = os.path.join(scratch, name)
    with open(path, "a") as f:
        f.write(".")
    return os.path.getsize(path)


@ray.remote(max_retries=3, retry_exceptions=True)
def flaky(name):
    n = attempt(name)
    if n < 3:
        raise RuntimeError(f"attempt {n} failed")
    return f"{name}: ok on attempt {n}"


@ray.remote(max_retries=2, retry_exceptions=[ValueError])
def picky(name, error):
    n = attempt(name)
    if n == 1:
        raise error(f"attempt {n} failed")
    return f"{name}: ok on attempt {n}"


@ray.remote(max_retries=1, retry_exceptions=True)
def hopeless(name):
    raise ValueError(f"attempt {attempt(name)} failed")


@ray.remote
def no_retry_by_default(name):
    raise ValueError(f"attempt {attempt(name)} failed")


@ray.remote(max_retries=1)
def crashes_once(name):
    if attempt(name) == 1:
        os._exit(1)  # a worker crash: retried by max_retries without retry_exceptions
    return f"{name}: survived the crash"


def attempts(name):
    return os.path.getsize(os.path.join(scratch, name))


print(ray.get(flaky.remote("flaky")))
print(ray.get(picky.remote("picky-value", ValueError)))
try:
    ray.get(picky.remote("picky-key", KeyError))
except KeyError:
    print("KeyError not retried, attempts:", attempts("picky-key"))
for task, name in [(hopeless, "hopeless"), (no_retry_by_default, "default")]:
    try:
        ray.get(task.remote(name))
    except ValueError:
        print(f"{name} raised ValueError, attempts:", attempts(name))
print(ray.get(crashes_once.remote("crash")))
