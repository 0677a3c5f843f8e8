import ray


@ray.remote
def answer():
    return 42


@ray.remote
def add_one(x):
    return x + 1


stored = ray.put({"key": "value"})
rebuilt = ray.ObjectRef(bytes.fromhex(stored.hex()))
print(ray.get(rebuilt))
print(rebuilt == stored, rebuilt.hex() == stored.hex(), isinstance(rebuilt, ray.ObjectRef))

result = answer.remote()
again = ray.ObjectRef(bytes.fromhex(result.hex()))
print(ray.get(again))
print(ray.get(add_one.remote(again)))
