import ray


@ray.remote
def f():
    return 1


@ray.remote
class A:
    def ping(self):
        return "pong"


attempts = {
    "label_selector": lambda: f.options(label_selector={"zone": "a"}),
    "include_dashboard": lambda: ray.init(include_dashboard=True),
    "local_mode": lambda: ray.init(local_mode=True),
    "_system_config": lambda: ray.init(_system_config={"object_spilling_threshold": 0.9}),
    "max_pending_calls": lambda: A.options(max_pending_calls=10),
    "pip": lambda: f.options(runtime_env={"pip": ["requests"]}),
}
for option, attempt in attempts.items():
    try:
        attempt()
        print(option, "accepted")
    except NotImplementedError as e:
        print(option, "NotImplementedError", option in str(e))

print(ray.get(f.options(label_selector=None).remote()), ray.get(A.remote().ping.remote()))
