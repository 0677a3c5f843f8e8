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
    """A remote task raised. Carries the remote traceback text (or what else went wrong, for the
    subclasses); `cause` is the original exception when it could be pickled. `subject` names the
    task, actor or object the message is about."""

    def __init__(self, subject: str, detail: str, cause: BaseException | None = None):
        super().__init__(self.describe(subject, detail))
        self.task_name = subject
        self.traceback_text = detail
        self.cause = cause

    @staticmethod
    def describe(subject: str, detail: str) -> str:
        return f"task {subject} failed:\n{detail}"

    def __reduce__(self):  # pickles despite the three-argument constructor
        return (type(self), (self.task_name, self.traceback_text, self.cause))


class WorkerCrashedError(TaskError):
    """The worker process running a task died before the task finished."""


class ActorDiedError(TaskError):
    """The actor a call was made on is dead (its worker exited, it was killed, or its node died)."""

    @staticmethod
    def describe(subject: str, detail: str) -> str:
        return f"actor {subject} died: {detail}"

    @property
    def actor(self) -> str:
        return self.task_name


class TaskCancelledError(TaskError):
    """The task was cancelled (`cancel()`, or its driver exited) before it finished."""

    def __init__(self, subject: str, detail: str = "it was cancelled", cause=None):
        super().__init__(subject, detail, cause)

    @staticmethod
    def describe(subject: str, detail: str) -> str:
        return f"task {subject} was cancelled ({detail})"


class ObjectLostError(TaskError):
    """Every copy of an object was on nodes that died, and it could not be made again."""

    @staticmethod
    def describe(subject: str, detail: str) -> str:
        return f"object {subject} was lost: {detail}"
