"""ray.init() on a node that already runs a cluster connects to it; sizing options such as
num_cpus describe a new cluster, so Ray refuses them there with a ValueError."""
import ray

for sizing in [{"num_cpus": 2}, {"resources": {"custom": 1}}]:
    try:
        ray.init(**sizing)
        print(sorted(sizing), "accepted")
        ray.shutdown()
    except ValueError:
        print(sorted(sizing), "ValueError")
ray.init()
print(ray.is_initialized(), len(ray.nodes()))
