"""The embedded distributed runtime: tasks, objects and resources across the cluster's nodes.

Ray-compatible names, so `import runtime as ray` runs the core of typical Ray programs.
"""

from runtime.api import (
    available_resources,
    cluster_resources,
    get,
    init,
    is_initialized,
    nodes,
    put,
    remote,
    shutdown,
)
from runtime.errors import GetTimeoutError, TaskError, WorkerCrashedError
from runtime.serialization import ObjectRef

__all__ = [
    "GetTimeoutError", "ObjectRef", "TaskError", "WorkerCrashedError", "available_resources",
    "cluster_resources", "get", "init", "is_initialized", "nodes", "put", "remote", "shutdown",
]
