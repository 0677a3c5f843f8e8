"""The embedded distributed runtime: tasks, actors, objects and resources across the cluster's nodes.

Ray's names and semantics, so `import runtime as ray` runs Ray programs unchanged (see
docs/ray-compat.md for what differs).
"""

from runtime.api import (
    ActorClass,
    ActorHandle,
    RemoteFunction,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    method,
    nodes,
    put,
    remote,
    request_resources,
    shutdown,
    wait,
)
from runtime import exceptions, util
from runtime.util import (get_placement_group, placement_group, placement_group_table,
                          remove_placement_group)
from runtime.util.scheduling_strategies import (NodeAffinitySchedulingStrategy,
                                                PlacementGroupSchedulingStrategy)
from runtime.exceptions import (ActorDiedError, GetTimeoutError, ObjectLostError,
                                ObjectStoreFullError, RayActorError, RayError, RayTaskError,
                                TaskCancelledError, WorkerCrashedError)
from runtime.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from runtime.serialization import ObjectRef

__all__ = [
    "ActorClass", "ActorDiedError", "ActorHandle", "DynamicObjectRefGenerator", "GetTimeoutError",
    "NodeAffinitySchedulingStrategy", "ObjectLostError", "ObjectRef", "ObjectRefGenerator",
    "ObjectStoreFullError", "PlacementGroupSchedulingStrategy", "RayActorError", "RayError",
    "RayTaskError", "RemoteFunction", "TaskCancelledError", "WorkerCrashedError",
    "available_resources", "cancel", "cluster_resources", "exceptions", "get", "get_actor",
    "get_gpu_ids", "get_placement_group", "get_runtime_context", "init", "is_initialized", "kill",
    "method", "nodes", "placement_group", "placement_group_table", "put", "remote",
    "remove_placement_group", "request_resources", "shutdown", "util", "wait",
]
