"""The embedded distributed runtime: tasks, actors, objects and resources across the cluster's nodes.

Ray-compatible names, so `import runtime as ray` runs the core of typical Ray programs.
"""

from runtime.api import (
    ActorClass,
    ActorHandle,
    available_resources,
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
    shutdown,
    wait,
)
from runtime.errors import ActorDiedError, GetTimeoutError, TaskError, WorkerCrashedError
from runtime.serialization import ObjectRef

__all__ = [
    "ActorClass", "ActorDiedError", "ActorHandle", "GetTimeoutError", "ObjectRef", "TaskError",
    "WorkerCrashedError", "available_resources", "cluster_resources", "get", "get_actor",
    "get_gpu_ids", "init", "is_initialized", "kill", "nodes", "put", "remote", "shutdown", "wait",
]
