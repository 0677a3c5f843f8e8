"""No ray.init(): the first .remote() connects to the cluster (here, the one $CLUSTER_RUNTIME_DIR names)."""
import ray


@ray.remote
def square(x):
    return x * x


print("initialized before:", ray.is_initialized())
refs = [square.remote(i) for i in range(5)]
print("initialized after:", ray.is_initialized())
print(ray.get(refs))
print("CPU" in ray.cluster_resources())
