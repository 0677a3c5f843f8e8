"""Actors: `@remote` on a class; `Cls.remote()` creates one, handles call its methods.

Resources as Ray: without num_cpus an actor needs 1 CPU free to be placed but holds 0 CPUs while
it lives (so many idle actors fit a node); with num_cpus it needs and holds that many. GPUs,
memory and custom resources are needed and held as given.
"""

from __future__ import annotations

import inspect
from typing import Optional

from runtime import client as client_state, ids, task_options
from runtime.client import DEFAULT_NAMESPACE, Client
from runtime.generated import runtime_pb2 as pb
from runtime.remote_function import generator_kind, return_ids, submitted_refs
from runtime.serialization import dumps_args


def method(*args, **options):
    """`@method(num_returns=N)` on an actor method: its calls return N refs (or a generator of
    refs with "streaming"/"dynamic") without `.options()` at each call;
    `@method(concurrency_group="io")`: they run in that group of the actor's concurrency_groups."""
    unsupported = set(options) - {"num_returns", "concurrency_group"}
    if args or unsupported:
        raise NotImplementedError(f"method(): only num_returns and concurrency_group are "
                                  f"supported by this runtime, got "
                                  f"{sorted(unsupported) or 'a positional argument'}")

    def mark(function):
        if "num_returns" in options:
            task_options.num_returns_kind(options["num_returns"], False)  # checks the value
            function.__ray_num_returns__ = options["num_returns"]
        if "concurrency_group" in options:
            function.__ray_concurrency_group__ = options["concurrency_group"]
        return function
    return mark


class ActorClass:
    """A class whose instances are actors: `Cls.remote(*args)` creates one and returns its handle."""

    def __init__(self, cls, **options):
        self._cls = cls
        self._options = task_options.check(options, task_options.ACTOR_OPTIONS,
                                           f"actor class {cls.__name__}")
        members = [(name, m) for name, m in inspect.getmembers(cls, callable)
                   if not name.startswith("__")]
        self._methods = sorted(name for name, _ in members)
        self._method_returns = {}
        for name, member in members:
            returns = task_options.method_options(
                member, inspect.isgeneratorfunction(member) or inspect.isasyncgenfunction(member))
            if returns is not None:
                self._method_returns[name] = returns
        self._class_id: Optional[str] = None
        self._exported_by: Optional[Client] = None

    def __call__(self, *args, **kwargs):
        name = self._cls.__name__
        raise TypeError(f"actor class {name} cannot be instantiated directly; use {name}.remote(...)")

    def options(self, **options) -> "ActorClass":
        return ActorClass(self._cls, **{**self._options, **options})

    def remote(self, *args, **kwargs) -> "ActorHandle":
        client = client_state.auto_connected()
        o = self._options
        if self._exported_by is not client:
            self._class_id = client.functions.export(self._cls)
            self._exported_by = client
        class_name = self._cls.__name__
        hold = task_options.resource_need(o)
        place = dict(hold) if o.get("num_cpus") is not None else {**hold, "CPU": 1.0}
        where = task_options.placement(place, o)
        hold = task_options.placement(hold, o).need
        data, deps = dumps_args(args, kwargs, f"{class_name}.remote()")  # before it is registered
        actor_id = ids.new_id()
        name = o.get("name") or ""
        namespace = o.get("namespace") or client.namespace
        label = f"{class_name}({name or actor_id[:8]})"
        detached = o.get("lifetime") == "detached"
        max_restarts, max_task_retries = o.get("max_restarts") or 0, o.get("max_task_retries") or 0
        spec = pb.TaskSpec(
            task_id=actor_id, function_id=self._class_id, name=label, args=data,
            job_id="" if detached else client.job_id, namespace=client.namespace,
            dependencies=deps, return_id=ids.actor_ready_id(actor_id), resources=where.need,
            kind=pb.TaskSpec.ACTOR_CREATION, actor_id=actor_id, hold_resources=hold,
            max_restarts=max_restarts, max_task_retries=max_task_retries,
            max_concurrency=int(o.get("max_concurrency") or 0),
            concurrency_groups=o.get("concurrency_groups") or {},
            node_affinity=where.node_affinity, node_affinity_soft=where.soft,
            runtime_env=task_options.runtime_env_json(o, f"{class_name}.options()"),
            capture_placement_group=where.capture_placement_group)
        reply = client.gcs.RegisterActor(pb.ActorInfo(
            actor_id=actor_id, name=name, namespace=namespace, class_name=class_name,
            methods=self._methods, state="PENDING", lifetime=o.get("lifetime") or "",
            method_returns=self._method_returns, job_id=spec.job_id,
            creation_spec=spec.SerializeToString()), timeout=30)
        if reply.error:
            if o.get("get_if_exists"):
                return ActorHandle.from_record(reply.info)
            raise ValueError(reply.error)
        client.agent.SubmitTasks(pb.SubmitTasksRequest(tasks=[spec]), timeout=60)
        if client.is_driver and not detached:
            client.owned_actors.append(actor_id)
        return ActorHandle(actor_id, class_name, self._methods, name, self._method_returns)


# Methods every actor has, as in Ray: a call that returns once the actor is up, and one that ends
# it after the calls queued before it (atexit handlers run).
BUILTIN_METHODS = ("__ray_ready__", "__ray_terminate__")


class ActorHandle:
    """A reference to an actor; picklable (to its id), so it can be passed to tasks and actors."""

    def __init__(self, actor_id: str, class_name: str, methods: list, name: str = "",
                 method_returns: Optional[dict] = None):
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = list(methods)
        self._name = name
        self._method_returns = dict(method_returns or {})

    @classmethod
    def from_record(cls, info: pb.ActorInfo) -> "ActorHandle":
        return cls(info.actor_id, info.class_name, list(info.methods), info.name,
                   dict(info.method_returns))

    @property
    def _label(self) -> str:
        return f"{self._class_name}({self._name or self._actor_id[:8]})"

    def __getattr__(self, method_name: str) -> "ActorMethod":
        if method_name in BUILTIN_METHODS:
            return ActorMethod(self, method_name)
        if method_name.startswith("__") or method_name not in self.__dict__.get("_methods", ()):
            raise AttributeError(f"actor {self.__dict__.get('_class_name', '?')} has no method "
                                 f"{method_name!r}")
        returns = self._method_returns.get(method_name)
        return ActorMethod(self, method_name, int(returns) if returns and returns.isdigit()
                           else returns)

    def __reduce__(self):
        return (ActorHandle, (self._actor_id, self._class_name, self._methods, self._name,
                              self._method_returns))

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self):
        return hash(self._actor_id)

    def __repr__(self):
        return f"Actor({self._class_name}, {self._actor_id})"


class ActorMethod:
    def __init__(self, handle: ActorHandle, method_name: str, num_returns=None,
                 concurrency_group: str = ""):
        self._handle = handle
        self._method = method_name
        self._num_returns = num_returns
        self._group = concurrency_group

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor method {self._method} cannot be called directly; "
                        f"use .{self._method}.remote(...)")

    def options(self, **options) -> "ActorMethod":
        unsupported = set(options) - {"num_returns", "name", "concurrency_group"}
        if unsupported:
            raise NotImplementedError(f"actor method options {sorted(unsupported)} are not "
                                      f"supported by this runtime (supported: num_returns, name, "
                                      f"concurrency_group)")
        return ActorMethod(self._handle, self._method, options.get("num_returns", self._num_returns),
                           options.get("concurrency_group", self._group))

    def remote(self, *args, **kwargs):
        client = client_state.auto_connected()
        handle = self._handle
        count, generator = task_options.num_returns_kind(self._num_returns, False)
        data, deps = dumps_args(args, kwargs, f"{handle._label}.{self._method}.remote()")
        task_id = ids.new_id()
        spec = pb.TaskSpec(task_id=task_id, name=f"{handle._label}.{self._method}", args=data,
                           job_id=client.job_id, dependencies=deps, return_id=task_id,
                           return_ids=return_ids(task_id, count),
                           kind=pb.TaskSpec.ACTOR_METHOD, actor_id=handle._actor_id,
                           method=self._method, generator=generator_kind(generator),
                           concurrency_group=self._group)
        client.sender(handle._actor_id, handle._label).submit(spec)
        return submitted_refs(spec, count)


def get_actor(name: str, namespace: Optional[str] = None) -> ActorHandle:
    """The handle of a live named actor, in this driver's namespace unless one is given."""
    client = client_state.auto_connected()
    namespace = namespace or client.namespace or DEFAULT_NAMESPACE
    reply = client.gcs.GetActor(pb.ActorRequest(name=name, namespace=namespace), timeout=30)
    if not reply.found or reply.info.state == "DEAD":
        raise ValueError(f"Failed to look up actor with name {name!r} in namespace {namespace!r}")
    return ActorHandle.from_record(reply.info)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor now: calls in flight and later calls fail with ActorDiedError."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an ActorHandle, got {type(actor).__name__}")
    client_state.connected().kill_actor(actor._actor_id, "it was killed with kill()", no_restart)


def exit_actor() -> None:
    """End the actor this runs in, on purpose: the call observes the actor's death, queued calls
    fail with ActorDiedError, and it is not restarted; atexit handlers run."""
    if not client_state.task_context.actor_id:
        raise TypeError("exit_actor() can only be called inside an actor")
    raise SystemExit(0)


def get_actor_handle(actor_id: str) -> ActorHandle:
    """A handle to the actor with this id (e.g. the running actor's own, for current_actor)."""
    reply = client_state.connected().gcs.GetActor(pb.ActorRequest(actor_id=actor_id), timeout=30)
    if not reply.found:
        raise ValueError(f"no actor with id {actor_id}")
    return ActorHandle.from_record(reply.info)
