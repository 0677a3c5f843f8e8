import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote
def node_id():
    return ray.get_runtime_context().get_node_id()


def pinned(node, soft):
    return node_id.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=soft))


ray.init()
here = ray.get_runtime_context().get_node_id()
alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
print(len(alive), here in alive)
for node in alive:
    print(set(ray.get([pinned(node, soft=False).remote() for _ in range(4)])) == {node})

unknown = "ab" * 28
try:
    ray.get(pinned(unknown, soft=False).remote(), timeout=20)
except ray.exceptions.TaskUnschedulableError:
    print("TaskUnschedulableError")
print(ray.get(pinned(unknown, soft=True).remote(), timeout=20) in alive)
