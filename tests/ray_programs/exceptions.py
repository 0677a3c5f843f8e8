import time

import ray


class QuotaError(Exception):
    def __init__(self, message, code):
        super().__init__(message, code)
        self.code = code


@ray.remote
def parse(text):
    return int(text)


@ray.remote
def over_quota():
    raise QuotaError("over quota", 429)


@ray.remote
def slow():
    time.sleep(60)


@ray.remote
class Pinger:
    def ping(self):
        return "pong"

    def check(self, value):
        if value < 0:
            raise ValueError(f"negative: {value}")
        return value


try:
    ray.get(parse.remote("not a number"))
except ValueError as e:
    print("ValueError:", isinstance(e, ray.exceptions.RayTaskError), "not a number" in str(e))

try:
    ray.get(over_quota.remote())
except QuotaError as e:
    print("QuotaError:", e.code, isinstance(e, ray.exceptions.RayTaskError))

ref = slow.remote()
try:
    ray.get(ref, timeout=0.1)
except ray.exceptions.GetTimeoutError as e:
    print("GetTimeoutError", isinstance(e, TimeoutError))
ray.cancel(ref)
try:
    ray.get(ref, timeout=20)
except ray.exceptions.TaskCancelledError as e:
    print("TaskCancelledError", isinstance(e, ray.exceptions.RayError))

actor = Pinger.remote()
print(ray.get(actor.ping.remote()))
try:
    ray.get(actor.check.remote(-1))
except ValueError as e:
    print("actor ValueError:", isinstance(e, ray.exceptions.RayTaskError), "negative: -1" in str(e))
print(ray.get(actor.check.remote(3)))
ray.kill(actor)
try:
    ray.get(actor.ping.remote(), timeout=20)
except ray.exceptions.RayActorError:
    print("RayActorError")
