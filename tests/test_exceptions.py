"""runtime.exceptions: what `except` clauses written for Ray catch (no processes needed)."""

from __future__ import annotations

import pickle

import pytest

from runtime import exceptions
from runtime.serialization import loads, serialize_error


class QuotaError(Exception):
    def __init__(self, code: int, message: str):  # a constructor the dual class must not call
        super().__init__(message)
        self.code = code


def _raised(exc: BaseException) -> BaseException:
    """What `get` raises for a task whose code raised `exc` (stored, then loaded)."""
    try:
        raise exc
    except BaseException as raised:
        blob = serialize_error("train", raised).to_bytes()
    with pytest.raises(BaseException) as info:
        loads(blob)
    return info.value


def test_a_task_error_is_also_an_instance_of_the_class_the_code_raised():
    error = _raised(QuotaError(429, "too many"))
    assert isinstance(error, QuotaError) and isinstance(error, exceptions.RayTaskError)
    assert type(error).__name__ == "RayTaskError(QuotaError)"
    assert error.code == 429 and isinstance(error.cause, QuotaError)  # the cause's attributes
    assert "QuotaError: too many" in str(error) and "task train failed" in str(error)
    assert "raise exc" in error.traceback_str


def test_builtin_causes_keep_their_class_and_a_readable_message():
    key_error = _raised(KeyError("missing"))
    assert isinstance(key_error, KeyError) and "KeyError: 'missing'" in str(key_error)
    os_error = _raised(FileNotFoundError(2, "no such file", "/data"))
    assert isinstance(os_error, OSError) and os_error.filename == "/data"


def test_a_task_error_pickles_to_the_plain_error_and_becomes_dual_again_when_raised():
    error = _raised(ValueError("bad"))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is exceptions.RayTaskError
    assert isinstance(again.as_instanceof_cause(), ValueError)


def test_the_runtime_errors_sit_in_rays_hierarchy():
    assert issubclass(exceptions.ActorDiedError, exceptions.RayActorError)
    assert issubclass(exceptions.GetTimeoutError, TimeoutError)
    for cls in (exceptions.RayTaskError, exceptions.RayActorError, exceptions.WorkerCrashedError,
                exceptions.TaskCancelledError, exceptions.ObjectLostError,
                exceptions.GetTimeoutError, exceptions.TaskUnschedulableError):
        assert issubclass(cls, exceptions.RayError)
    died = pickle.loads(pickle.dumps(exceptions.ActorDiedError("Counter(1)", "it was killed")))
    assert str(died) == "actor Counter(1) died: it was killed" and died.actor == "Counter(1)"
