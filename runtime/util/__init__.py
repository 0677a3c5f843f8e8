"""Ray's `ray.util` names: placement groups, scheduling strategies, ActorPool, and the
`queue` submodule (`ray.util.queue.Queue`)."""

from runtime.util import queue
from runtime.serialization import deregister_serializer, register_serializer
from runtime.util.actor_pool import ActorPool
from runtime.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

# not `queue`: `from runtime.util import *` would hide the standard library's
__all__ = ["ActorPool", "PlacementGroup", "deregister_serializer", "register_serializer", "get_current_placement_group", "get_placement_group", "placement_group",
           "placement_group_table", "remove_placement_group"]
