"""ray.util.get_current_placement_group(): the group a task runs in (None in the driver)."""
import ray
from ray.util.placement_group import get_current_placement_group, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@ray.remote(num_cpus=1)
def child():
    return get_current_placement_group()


@ray.remote(num_cpus=1)
def parent():
    return get_current_placement_group(), ray.get(child.remote())


pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
ray.get(pg.ready())
strategy = PlacementGroupSchedulingStrategy(placement_group=pg,
                                            placement_group_capture_child_tasks=True)
parent_pg, child_pg = ray.get(parent.options(scheduling_strategy=strategy).remote())
print(parent_pg == pg, child_pg == pg)
print(get_current_placement_group(), ray.util.get_current_placement_group())
