"""The embedded distributed runtime: tasks, actors, objects and resources across the cluster's nodes.

Ray-compatible names, so `import runtime as ray` runs the core of typical Ray programs.
"""

from runtime.api import (
    ActorClass,
    ActorHandle,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    request_resources,
    shutdown,
    wait,
)
from runtime import util
from runtime.util import (get_placement_group, placement_group, placement_group_table,
                          remove_placement_group)
from runtime.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from runtime.errors import (ActorDiedError, GetTimeoutError, ObjectStoreFullError,
                            TaskCancelledError, TaskError, WorkerCrashedError)
from runtime.serialization import ObjectRef

__all__ = [
    "ActorClass", "ActorDiedError", "ActorHandle", "GetTimeoutError", "ObjectRef",
    "ObjectStoreFullError", "PlacementGroupSchedulingStrategy", "TaskCancelledError", "TaskError",
    "WorkerCrashedError", "available_resources", "cancel", "cluster_resources", "get", "get_actor",
    "get_gpu_ids", "get_placement_group", "init", "is_initialized", "kill", "nodes",
    "placement_group", "placement_group_table", "put", "remote", "remove_placement_group",
    "request_resources", "shutdown", "util", "wait",
]
