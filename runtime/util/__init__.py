"""Ray's `ray.util` names: placement groups, ActorPool, serialization helpers, and the `queue`,
`scheduling_strategies`, `accelerators`, `state` and `multiprocessing` submodules."""

from runtime.util import queue
from runtime.serialization import deregister_serializer, register_serializer
from runtime.util.actor_pool import ActorPool
from runtime.util.check_serialize import inspect_serializability
from runtime.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

# not `queue`: `from runtime.util import *` would hide the standard library's
__all__ = ["ActorPool", "PlacementGroup", "deregister_serializer", "get_current_placement_group",
           "get_placement_group", "inspect_serializability", "placement_group",
           "placement_group_table", "register_serializer", "remove_placement_group"]
