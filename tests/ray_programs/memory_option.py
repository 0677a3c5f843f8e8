import ray

MiB = 1024 * 1024


@ray.remote(memory=100 * MiB)
def task():
    return "task ran"


@ray.remote(memory=100 * MiB)
class Holder:
    def ping(self):
        return "actor ran"


print(ray.get(task.remote()))
print(ray.get(task.options(memory=50 * MiB).remote()))
print(ray.get(Holder.remote().ping.remote()))
print(ray.get(Holder.options(memory=200 * MiB).remote().ping.remote()))
