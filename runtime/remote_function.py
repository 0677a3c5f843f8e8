"""Remote functions: `@remote` on a function; `.remote(...)` submits a task and returns refs."""

from __future__ import annotations

import inspect
from typing import Optional

from runtime import client as client_state, ids, task_options
from runtime.client import Client
from runtime.generated import runtime_pb2 as pb
from runtime.generators import ObjectRefGenerator
from runtime.serialization import ObjectRef, dumps_args

_GENERATOR_KINDS = {"": pb.TaskSpec.NOT_GENERATOR, task_options.STREAMING: pb.TaskSpec.STREAMING,
                    task_options.DYNAMIC: pb.TaskSpec.DYNAMIC}


def return_ids(task_id: str, num_returns: int) -> list:
    """The spec's return_ids: none for one result (its id is the task's), else one per value."""
    return [] if num_returns <= 1 else [ids.return_id(task_id, i) for i in range(num_returns)]


def submitted_refs(spec: pb.TaskSpec, num_returns: int = 1):
    """What `.remote()` returns for a submitted spec: a ref, a list of refs, None for
    num_returns=0, or a generator of refs. This process owns them and keeps the task's
    dependencies until they exist."""
    object_ids = list(spec.return_ids) or [spec.return_id]
    client_state.connected().refs.submitted(spec.dependencies, object_ids)
    refs = [ObjectRef(i, _owned=True) for i in object_ids]
    if spec.generator == pb.TaskSpec.STREAMING:
        return ObjectRefGenerator(refs[0])
    if num_returns == 0:
        return None
    return refs if spec.return_ids else refs[0]


def generator_kind(kind: str) -> int:
    return _GENERATOR_KINDS[kind]


class RemoteFunction:
    """A function that runs as a task somewhere in the cluster: call it with `.remote(...)`."""

    def __init__(self, function, **options):
        self._function = function
        self._name = options.get("name") or getattr(function, "__qualname__", "task")
        self._options = task_options.check(options, task_options.TASK_OPTIONS,
                                           f"remote function {self._name}")
        o = self._options
        self._num_returns, self._generator = task_options.num_returns_kind(
            o.get("num_returns"), inspect.isgeneratorfunction(function))
        self._retry, self._retry_types = task_options.retry_exception_types(
            o.get("retry_exceptions", False))
        self._need = task_options.resource_need(o, default_cpus=1)
        task_options.placement(self._need, o)  # a bad strategy or bundle index fails here
        self._function_id: Optional[str] = None
        self._exported_by: Optional[Client] = None

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self._name} cannot be called directly; "
                        f"use {self._name}.remote(...)")

    def options(self, **options) -> "RemoteFunction":
        return RemoteFunction(self._function, **{**self._options, **options})

    def remote(self, *args, **kwargs):
        client = client_state.auto_connected()
        if self._exported_by is not client:
            self._function_id = client.functions.export(self._function)
            self._exported_by = client
        o = self._options
        where = task_options.placement(self._need, o)  # now: a captured group depends on the caller
        data, deps = dumps_args(args, kwargs, f"{self._name}.remote()")
        task_id = ids.new_id()
        max_retries = o.get("max_retries", 3)
        spec = pb.TaskSpec(
            task_id=task_id, function_id=self._function_id, name=self._name, args=data,
            job_id=client.job_id, namespace=client.namespace, dependencies=deps,
            return_id=task_id, resources=where.need,
            return_ids=return_ids(task_id, self._num_returns),
            max_retries=-1 if max_retries is None else max_retries,
            retry_exceptions=self._retry, retry_exception_types=self._retry_types,
            node_affinity=where.node_affinity, node_affinity_soft=where.soft,
            generator=generator_kind(self._generator),
            runtime_env=task_options.runtime_env_json(o, f"{self._name}.options()"),
            capture_placement_group=where.capture_placement_group, max_calls=o.get("max_calls") or 0)
        client.task_sender.submit(spec)  # asynchronous, in order, batched under load
        return submitted_refs(spec, self._num_returns)
