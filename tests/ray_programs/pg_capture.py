import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@ray.remote(num_cpus=1)
def child():
    return ray.get_runtime_context().get_placement_group_id()


@ray.remote(num_cpus=1)
def parent():
    return ray.get_runtime_context().get_placement_group_id(), ray.get(child.remote())


ray.init()
pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
ray.get(pg.ready())
group = pg.id.hex()

capturing = PlacementGroupSchedulingStrategy(placement_group=pg,
                                             placement_group_capture_child_tasks=True)
parent_pg, child_pg = ray.get(parent.options(scheduling_strategy=capturing).remote())
print("captured:", parent_pg == group, child_pg == group)

plain = PlacementGroupSchedulingStrategy(placement_group=pg)
parent_pg, child_pg = ray.get(parent.options(scheduling_strategy=plain).remote())
print("not captured:", parent_pg == group, child_pg)
print("driver:", ray.get_runtime_context().get_placement_group_id())
remove_placement_group(pg)
