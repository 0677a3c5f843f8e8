import ray


@ray.remote
def f():
    return 1


@ray.remote
class A:
    def ping(self):
        return "pong"


attempts = {
    "max_calls": lambda: f.options(max_calls=2),
    "include_dashboard": lambda: ray.init(include_dashboard=True),
    "local_mode": lambda: ray.init(local_mode=True),
    "concurrency_groups": lambda: A.options(concurrency_groups={"io": 2}),
    "pip": lambda: f.options(runtime_env={"pip": ["requests"]}),
}
for option, attempt in attempts.items():
    try:
        attempt()
        print(option, "accepted")
    except NotImplementedError as e:
        print(option, "NotImplementedError", option in str(e))

print(ray.get(f.options(max_calls=0).remote()))
print(ray.get(f.remote()))
