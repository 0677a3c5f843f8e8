"""The errors user programs see, under Ray's names and in Ray's hierarchy (`ray.exceptions`), so
`except` clauses written for Ray catch the same things.

A task whose code raised stores a `RayTaskError` as its result; `get` raises it as an instance of
both `RayTaskError` and the class the code raised (`as_instanceof_cause`), so `except ValueError`
around `get` works as it does on Ray. The other errors are the runtime's own, about a task, an
actor or an object: each names its subject and says why.
"""

from __future__ import annotations

import traceback
import types
from typing import Optional


class RayError(Exception):
    """Base of every error the runtime raises to user programs."""


class RaySystemError(RayError):
    """The runtime itself failed."""


class RuntimeClusterError(RaySystemError):
    """The runtime's processes could not start, or their cluster could not be reached."""


class GetTimeoutError(RayError, TimeoutError):
    """`get(..., timeout=)` expired before the objects were ready."""


class ObjectStoreFullError(RayError):
    """A `put` found no room in its node's object store, even after spilling what could be."""


class RayTaskError(RayError):
    """A task's code raised. `cause` is the original exception (None when it could not be
    pickled); `traceback_str` the remote traceback as text."""

    def __init__(self, function_name: str = "", traceback_str: str = "",
                 cause: Optional[BaseException] = None, proctitle=None, pid=None, ip=None):
        # not super(): in a derived class that would call the cause class's own constructor
        Exception.__init__(self, f"task {function_name} failed:\n{traceback_str}")
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.ip = ip

    def __reduce__(self):  # an instance of a derived class pickles as the plain error
        return (RayTaskError, (self.function_name, self.traceback_str, _Portable(self.cause),
                               None, self.pid, self.ip))

    def as_instanceof_cause(self) -> "RayTaskError":
        """This error as an instance of `RayTaskError(<cause's class>)`, a class deriving from
        both; itself when there is no cause or the cause's class cannot be derived from."""
        cause_class = type(self.cause)
        if self.cause is None or issubclass(RayTaskError, cause_class) or \
                not issubclass(cause_class, Exception):
            return self
        try:
            dual = _dual_class(cause_class)
            error = dual.__new__(dual)
        except TypeError:  # e.g. a class with an incompatible layout, or a demanding __new__
            return self
        RayTaskError.__init__(error, self.function_name, self.traceback_str, self.cause,
                              pid=self.pid, ip=self.ip)
        _copy_builtin_state(self.cause, error)
        return error


class _Portable:
    """Pickles an exception so that it unpickles even when its class's constructor takes other
    arguments than the exception's `args` (e.g. `__init__(self, code, message)` passing only
    `message` on): it is rebuilt from its args and attributes, without calling `__init__`."""

    def __init__(self, exc):
        self.exc = exc

    def __reduce__(self):
        exc = self.exc
        if exc is None or not any("__init__" in vars(k) for k in type(exc).__mro__
                                  if k.__module__ != "builtins"):
            return (_same, (exc,))
        return (_rebuilt, (type(exc), exc.args, dict(getattr(exc, "__dict__", {}))))


def _same(exc):
    return exc


def _rebuilt(cls, args, state):
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def _copy_builtin_state(source: BaseException, target: BaseException) -> None:
    """Attributes built-in exception classes keep outside __dict__ (OSError.filename, ...)."""
    for klass in type(source).__mro__:
        if klass.__module__ != "builtins" or not issubclass(klass, BaseException):
            continue
        for name, member in vars(klass).items():
            if name.startswith("__") or name == "args" or not isinstance(
                    member, (types.MemberDescriptorType, types.GetSetDescriptorType)):
                continue
            try:
                setattr(target, name, getattr(source, name))
            except (AttributeError, TypeError):
                pass


_dual_classes: dict = {}


def _dual_class(cause_class: type) -> type:
    dual = _dual_classes.get(cause_class)
    if dual is None:
        name = f"RayTaskError({cause_class.__name__})"

        def __getattr__(self, attribute):  # the cause's own attributes (e.g. errno, response)
            if attribute == "cause":
                raise AttributeError(attribute)
            return getattr(self.cause, attribute)

        dual = type(name, (RayTaskError, cause_class), {
            "__getattr__": __getattr__, "__str__": BaseException.__str__,
            "__module__": __name__, "__qualname__": name})
        _dual_classes[cause_class] = dual
    return dual


class _Described(RayError):
    """An error the runtime raises about a task, actor or object: `subject` names it, `detail`
    says why."""

    def __init__(self, subject: str = "", detail: str = ""):
        super().__init__(self.describe(subject, detail))
        self.subject = subject
        self.detail = detail

    @staticmethod
    def describe(subject: str, detail: str) -> str:
        return f"task {subject} failed: {detail}"

    def __reduce__(self):
        return (type(self), (self.subject, self.detail))


class TaskFailedError(_Described):
    """A task ended without a result for another reason than its code raising (e.g. its result
    could not be stored, or its call could not be delivered)."""


class WorkerCrashedError(_Described):
    """The worker process running a task died before the task finished, and retries ran out."""


class TaskCancelledError(_Described):
    """The task was cancelled (`cancel()`, or its driver exited) before it finished."""

    def __init__(self, subject: str = "", detail: str = "it was cancelled"):
        super().__init__(subject, detail)

    @staticmethod
    def describe(subject: str, detail: str) -> str:
        return f"task {subject} was cancelled ({detail})"


class RayActorError(_Described):
    """An actor could not run a call."""

    @staticmethod
    def describe(subject: str, detail: str) -> str:
        return f"actor {subject} died: {detail}"

    @property
    def actor(self) -> str:
        return self.subject


class ActorDiedError(RayActorError):
    """The actor a call was made on is dead (its worker exited, it was killed, or its node died)."""


def constructor_failure(exc: BaseException) -> str:
    """Why an actor whose constructor raised is dead (Ray's actor_init_failed)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"it raised in its constructor:\n{text}"


class ActorUnavailableError(RayActorError):
    """The actor cannot be reached now but may come back."""


class ObjectLostError(_Described):
    """Every copy of an object was on nodes that died, and it could not be made again."""

    @staticmethod
    def describe(subject: str, detail: str) -> str:
        return f"object {subject} was lost: {detail}"


class ObjectReconstructionFailedError(ObjectLostError):
    """A lost object's task could not run again (out of retries)."""


class OwnerDiedError(ObjectLostError):
    """The process that owned a lost object is gone."""


class ObjectFetchTimedOutError(ObjectLostError):
    """An object could not be fetched from the node holding it."""


class NodeDiedError(RayError):
    """A node the work depended on died."""


class RuntimeEnvSetupError(RayError):
    """A runtime environment could not be set up."""


class OutOfMemoryError(RayError):
    """A task was killed because its node ran out of memory."""


class TaskUnschedulableError(RayError):
    """A task can never be scheduled (e.g. its node affinity names a dead node)."""


class ActorUnschedulableError(RayError):
    """An actor can never be scheduled."""


class AsyncioActorExit(RayError):
    """Raised inside an async actor to end it (`exit_actor`)."""


# Errors stored as task results that another task's `get` raises: a task that does not catch
# one passes it on unchanged, so its own caller sees the original failure.
PASSED_ON = (RayTaskError, _Described)
