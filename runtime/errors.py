"""Errors the runtime raises to user programs."""


class RuntimeClusterError(Exception):
    """Base of the runtime's own errors."""


class NotConnected(RuntimeClusterError):
    """An API call needs `runtime.init()` first."""


class GetTimeoutError(RuntimeClusterError, TimeoutError):
    """`get(..., timeout=)` expired before the objects were ready."""


class ObjectStoreFullError(RuntimeClusterError):
    """A `put` found no room in its node's object store, even after spilling what could be."""


class TaskError(RuntimeClusterError):
    """A remote task raised. Carries the remote traceback text; `cause` is the original exception
    when it could be pickled."""

    def __init__(self, task_name: str, traceback_text: str, cause: BaseException | None = None):
        super().__init__(f"task {task_name} failed:\n{traceback_text}")
        self.task_name = task_name
        self.traceback_text = traceback_text
        self.cause = cause

    def __reduce__(self):
        return (TaskError, (self.task_name, self.traceback_text, self.cause))


class WorkerCrashedError(TaskError):
    """The worker process running a task died before the task finished."""

    def __init__(self, task_name: str, detail: str, cause=None):
        super().__init__(task_name, detail, cause)

    def __reduce__(self):
        return (WorkerCrashedError, (self.task_name, self.traceback_text, self.cause))


class ActorDiedError(TaskError):
    """The actor a call was made on is dead (its worker exited, it was killed, or its node died)."""

    def __init__(self, actor: str, detail: str, cause=None):
        RuntimeClusterError.__init__(self, f"actor {actor} died: {detail}")
        self.task_name = actor
        self.traceback_text = detail
        self.cause = cause
        self.actor = actor

    def __reduce__(self):
        return (ActorDiedError, (self.actor, self.traceback_text, self.cause))


class TaskCancelledError(TaskError):
    """The task was cancelled (`cancel()`) before it finished."""

    def __init__(self, task_name: str, detail: str = "it was cancelled", cause=None):
        RuntimeClusterError.__init__(self, f"task {task_name} was cancelled")
        self.task_name = task_name
        self.traceback_text = detail
        self.cause = cause

    def __reduce__(self):
        return (TaskCancelledError, (self.task_name, self.traceback_text, self.cause))


class ObjectLostError(TaskError):
    """Every copy of an object was on nodes that died, and it could not be made again."""

    def __init__(self, object_id: str, detail: str, cause=None):
        RuntimeClusterError.__init__(self, f"object {object_id} was lost: {detail}")
        self.task_name = object_id
        self.traceback_text = detail
        self.cause = cause

    def __reduce__(self):
        return (ObjectLostError, (self.task_name, self.traceback_text, self.cause))
