"""The user API: `init`, `remote`, `get`, `put`, ... with Ray's names, so `import runtime as ray` works
for the core of typical Ray programs.

A driver (or a worker running user code) talks to the node agent of its node and to the GCS.
"""

from __future__ import annotations

import atexit
import hashlib
import inspect
import json
import logging
import os
import sys
import threading
import time
import uuid
from typing import Optional, Sequence, Union

import cloudpickle

from runtime import refs as ref_tracking, rpc, source_lines
from runtime.errors import (ActorDiedError, GetTimeoutError, NotConnected, ObjectStoreFullError,
                            TaskError)
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc
import grpc

from runtime.placement import scheduled_need
from runtime.resources import fits
from runtime.object_store import map_file, stage
from runtime.serialization import ObjectRef, dumps_args, dumps_task_error, loads, serialize
from runtime.session import AUTOSCALER_STATUS_KEY, TOKEN_ENV, read_session, read_token


class _Client:
    """A connection to one node agent and the GCS."""

    def __init__(self, agent_address: str, gcs_address: str, token: Optional[str], local_node=None):
        self.agent_address = agent_address
        self.gcs_address = gcs_address
        self.agent = pb_grpc.NodeAgentStub(rpc.make_channel(agent_address, token))
        self.gcs = pb_grpc.GcsStub(rpc.make_channel(gcs_address, token))
        self.functions = FunctionTable(self.gcs)
        self.local_node = local_node  # processes this driver started itself, stopped at shutdown
        self.token = token
        self._senders: dict[str, _ActorSender] = {}
        self.task_sender = _ActorSender(self, "", "tasks", fixed_address=agent_address)
        self.is_driver = True  # False in worker processes
        self.owned_actors: list[str] = []  # non-detached actors this driver created: killed at shutdown
        self.owned_placement_groups: list[str] = []  # likewise removed at shutdown
        self.job_id = uuid.uuid4().hex  # a driver's work carries it; a worker's, its task's
        self._agents: dict[str, pb_grpc.NodeAgentStub] = {}
        self._lock = threading.Lock()
        self._store_dir: Optional[str] = None  # "" once known not to be on this machine
        self.refs = ref_tracking.RefTracker(self._free, self._existing)
        ref_tracking.install(self.refs)

    def store_directory(self) -> Optional[str]:
        """The shared-memory directory of the agent's object store when that agent runs on this
        machine (large objects are then written and mapped there), else None."""
        if self._store_dir is None:
            directory = self.agent.GetStoreInfo(pb.Empty(), timeout=30).directory
            self._store_dir = directory if os.path.isdir(directory) else ""
        return self._store_dir or None

    def _free(self, object_ids: list) -> None:
        self.agent.FreeObjects(pb.FreeObjectsRequest(object_ids=object_ids, broadcast=True),
                               timeout=30)

    def _existing(self, object_ids: list) -> set:
        reply = self.gcs.WaitObjectLocations(pb.WaitLocationsRequest(object_ids=object_ids, timeout=0),
                                             timeout=30)
        return {location.object_id for location in reply.locations}

    def sender(self, actor_id: str, label: str) -> "_ActorSender":
        with self._lock:
            sender = self._senders.get(actor_id)
            if sender is None:
                sender = self._senders[actor_id] = _ActorSender(self, actor_id, label)
            return sender

    def flush(self, timeout: float) -> None:
        """Deliver every submission still queued in this process."""
        with self._lock:
            senders = [self.task_sender, *self._senders.values()]
        for sender in senders:
            sender.flush(timeout=timeout)

    def agent_at(self, address: str) -> pb_grpc.NodeAgentStub:
        if address == self.agent_address:
            return self.agent
        with self._lock:
            if address not in self._agents:
                self._agents[address] = pb_grpc.NodeAgentStub(rpc.make_channel(address, self.token))
            return self._agents[address]

    def fail(self, spec: pb.TaskSpec, error: BaseException) -> None:
        """Store `error` as the result of a call that could not be delivered."""
        for object_id in list(spec.return_ids) or [spec.return_id]:
            self.agent.PutObject(pb.ObjectData(object_id=object_id, data=dumps_task_error(error)),
                                 timeout=60)


class _ActorSender:
    """Delivers one process's calls on one actor, in submission order, batched, to the node agent
    hosting the actor (looked up in the GCS and cached). With `fixed_address`, the process's task
    submissions to its own node agent."""

    def __init__(self, client: "_Client", actor_id: str, label: str, fixed_address: str = ""):
        self._client = client
        self._actor_id = actor_id
        self._label = label
        self._queue: list = []
        self._cond = threading.Condition()
        self._fixed = fixed_address  # tasks: always this node's agent, no lookup
        self._address: Optional[str] = fixed_address or None
        self._busy = False  # a delivery is under way (keeps calls in order)
        threading.Thread(target=self._loop, daemon=True, name=f"actor-{actor_id[:8]}").start()

    def submit(self, spec: pb.TaskSpec) -> None:
        """Deliver a call without waiting for the agent's reply.

        One delivery is under way at a time, so calls stay in order: when none is, the call goes
        out at once from this thread (an asynchronous RPC); otherwise it is queued and the sender
        thread delivers everything queued in one batch when the current delivery is done.
        """
        with self._cond:
            if self._queue or self._busy or self._address is None:
                self._queue.append(spec)
                self._cond.notify_all()
                return
            self._busy = True
            address = self._address
        try:
            future = self._client.agent_at(address).SubmitTasks.future(
                pb.SubmitTasksRequest(tasks=[spec]), timeout=60)
        except Exception:
            self._direct_done(spec, None)
            return
        future.add_done_callback(lambda f: self._direct_done(spec, f))

    def flush(self, timeout: float) -> None:
        """Wait until every queued call has been delivered (or `timeout` passes)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(0.05)

    def _direct_done(self, spec: pb.TaskSpec, future) -> None:
        try:
            failed = future is None or future.exception() is not None
        except Exception:  # cancelled
            failed = True
        with self._cond:
            if failed:  # let the sender thread find the actor again and retry
                self._address = self._fixed or None
                self._queue.insert(0, spec)
            self._busy = False
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue or self._busy:
                    self._cond.wait()
                batch, self._queue = self._queue, []
                self._busy = True
            try:
                self._deliver(batch)
            except Exception as exc:  # never lose a call silently: its caller gets the error
                logging.getLogger("runtime").warning("actor call delivery failed: %s", exc)
                for spec in batch:
                    try:
                        self._client.fail(spec, self._undelivered(spec, f"not delivered: {exc}"))
                    except Exception:
                        pass
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _undelivered(self, spec: pb.TaskSpec, why: str) -> Exception:
        return TaskError(spec.name, why) if self._fixed else ActorDiedError(self._label, why)

    def _deliver(self, batch: list) -> None:
        for attempt in range(100):
            if self._address is None:
                info = self._locate()
                if info.state == "DEAD" or not info.address:
                    cause = info.death_cause or "it is unknown to the GCS"
                    for spec in batch:
                        self._client.fail(spec, ActorDiedError(self._label, cause))
                    return
                self._address = info.address
            try:
                self._client.agent_at(self._address).SubmitTasks(
                    pb.SubmitTasksRequest(tasks=batch), timeout=60)
                return
            except grpc.RpcError:  # the node went away: the GCS will say where it is, or that it died
                self._address = self._fixed or None
                time.sleep(min(0.05 * (attempt + 1), 1.0))
        raise ConnectionError(f"cannot reach the node hosting actor {self._label}")

    def _locate(self) -> pb.ActorInfo:
        delay = 0.002
        while True:
            reply = self._client.gcs.GetActor(pb.ActorRequest(actor_id=self._actor_id), timeout=30)
            if not reply.found:
                return pb.ActorInfo(state="DEAD")
            if reply.info.state == "DEAD" or reply.info.address:
                return reply.info
            time.sleep(delay)  # still being placed (maybe waiting for a node: demand)
            delay = min(delay * 2, 0.2)


class FunctionTable:
    """Functions are pickled once, stored in the GCS under their hash, and loaded once per worker.
    Code pickled by value brings its source lines along, for remote tracebacks (see source_lines)."""

    def __init__(self, gcs):
        self._gcs = gcs
        self._exported: set[str] = set()
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    def export(self, function) -> str:
        data = source_lines.dumps(function)
        function_id = hashlib.sha1(data).hexdigest()
        with self._lock:
            if function_id not in self._exported:
                self._gcs.KvPut(pb.KvRequest(key=f"fn:{function_id}", value=data), timeout=30)
                self._exported.add(function_id)
        return function_id

    def load(self, function_id: str):
        with self._lock:
            if function_id in self._loaded:
                return self._loaded[function_id]
        reply = self._gcs.KvGet(pb.KvRequest(key=f"fn:{function_id}"), timeout=30)
        if not reply.found:
            raise LookupError(f"function {function_id} is not in the GCS")
        function = cloudpickle.loads(reply.value)
        with self._lock:
            self._loaded[function_id] = function
        return function


WARN_AFTER_S = 10.0  # a get waiting this long checks for work that can never be placed
_client: Optional[_Client] = None
_client_lock = threading.Lock()


def _connected() -> _Client:
    if _client is None:
        raise NotConnected("call runtime.init() first")
    return _client


def function_table() -> FunctionTable:
    return _connected().functions


def is_initialized() -> bool:
    return _client is not None


def connect_from_environment() -> None:
    """Used by worker processes: the agent put the addresses and token in their environment."""
    global _client
    _client = _Client(os.environ["CLUSTER_AGENT_ADDRESS"], os.environ["CLUSTER_GCS_ADDRESS"],
                      os.environ.get(TOKEN_ENV))
    _client.is_driver = False
    _client.job_id = ""
    _client._store_dir = os.environ.get("CLUSTER_OBJECT_STORE_DIR", "")


def init(address: Optional[str] = None, *, num_cpus: Optional[int] = None,
         num_gpus: Optional[int] = None, resources: Optional[dict] = None,
         object_store_memory: Optional[int] = None, ignore_reinit_error: bool = False) -> dict:
    """Connect this process to a cluster.

    address: "auto" = the cluster this node belongs to (its ~/.cluster/session.json);
    "HOST:PORT" = a GCS; None = $CLUSTER_ADDRESS, else this node's cluster if it has one, else a
    new single-node cluster owned by this process (num_cpus/num_gpus/resources size it, and
    object_store_memory its shared memory for objects, in bytes).
    """
    global _client
    with _client_lock:
        if _client is not None:
            if ignore_reinit_error:
                return _info(_client)
            raise RuntimeError("runtime.init() was already called; call runtime.shutdown() first")
        address = address or os.environ.get("CLUSTER_ADDRESS")
        session = read_session()
        if object_store_memory is not None and (address or session is not None):
            raise ValueError("object_store_memory sizes a new cluster; this connects to a running "
                             "one (size its nodes with `cluster start --object-store-memory`)")
        if address == "auto" or (address is None and session is not None):
            if session is None:
                raise ConnectionError("no cluster runs on this node (no ~/.cluster/session.json); "
                                      "start one with `cluster start --head`")
            _client = _Client(session.agent_address, session.gcs_address, read_token())
        elif address is None:
            from runtime import node

            local = node.start_local_cluster(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                             object_store_memory=object_store_memory)
            _client = _Client(local.agent_address, local.gcs_address, local.token, local_node=local)
        else:
            token = read_token()
            _client = _Client(_agent_for(address, token, session), address, token)
        atexit.register(shutdown)
        return _info(_client)


def _agent_for(gcs_address: str, token: Optional[str], session) -> str:
    """The node agent a driver should use: this node's if it belongs to that cluster, else the head's."""
    if session is not None and session.gcs_address == gcs_address:
        return session.agent_address
    gcs = pb_grpc.GcsStub(rpc.make_channel(gcs_address, token))
    nodes = gcs.GetClusterState(pb.Empty(), timeout=10).nodes
    heads = [n for n in nodes if n.is_head] or list(nodes)
    if not heads:
        raise ConnectionError(f"the cluster at {gcs_address} has no live node")
    return heads[0].address


def _info(client: _Client) -> dict:
    return {"gcs_address": client.gcs_address, "agent_address": client.agent_address}


def shutdown() -> None:
    global _client
    with _client_lock:
        client, _client = _client, None
    if client is not None:  # submissions are asynchronous: deliver what is still queued
        client.flush(timeout=5.0)
        ref_tracking.install(None)
        if client.local_node is None:
            try:  # free what this driver owns (runtime.refs says what stays)
                client.refs.close()
            except Exception:  # the cluster may be gone already
                pass  # a driver's non-detached actors go with it, as in Ray
            try:
                for actor_id in client.owned_actors:
                    _kill(client, actor_id, "its driver exited")
                for pg_id in client.owned_placement_groups:
                    client.gcs.RemovePlacementGroup(pb.PlacementGroupRequest(pg_id=pg_id), timeout=10)
                for node in client.gcs.GetClusterState(pb.Empty(), timeout=10).nodes:
                    client.agent_at(node.address).CancelJob(pb.JobRequest(job_id=client.job_id),
                                                            timeout=10)
            except Exception:  # the cluster may be gone already
                pass
    if client is not None and client.local_node is not None:
        client.local_node.stop()


def _resource_dict(num_cpus, num_gpus, resources) -> dict:
    need = {"CPU": float(num_cpus or 0), "GPU": float(num_gpus or 0),
            **{k: float(v) for k, v in (resources or {}).items()}}
    return {k: v for k, v in need.items() if v > 0}


def request_resources(num_cpus: Optional[int] = None,
                      bundles: Optional[Sequence[dict]] = None) -> None:
    """Ask the autoscaler to keep room for `num_cpus` 1-CPU bundles plus `bundles` at once,
    whatever the queued work; each call replaces the last (request_resources() clears it)."""
    shapes = [{"CPU": 1.0}] * int(num_cpus or 0) + [
        {k: float(v) for k, v in b.items()} for b in bundles or ()]
    _connected().gcs.RequestResources(
        pb.ResourceRequest(bundles=[pb.Bundle(resources=s) for s in shapes]), timeout=30)


TASK_ID_LENGTH = 32  # uuid4().hex; a task's return ids are its id, or its id + "r<i>"


def _return_ids(task_id: str, num_returns: int) -> list:
    if num_returns < 1:
        raise ValueError(f"num_returns must be at least 1, got {num_returns}")
    return [] if num_returns == 1 else [f"{task_id}r{i}" for i in range(num_returns)]


def _refs(spec: pb.TaskSpec):
    """The refs to a submitted task's results; this process owns them and keeps the task's
    dependencies until they exist."""
    ids = list(spec.return_ids) or [spec.return_id]
    _connected().refs.submitted(spec.dependencies, ids)
    refs = [ObjectRef(i, _owned=True) for i in ids]
    return refs if spec.return_ids else refs[0]


class RemoteFunction:
    """A function that runs as a task somewhere in the cluster: call it with `.remote(...)`."""

    def __init__(self, function, num_cpus=1, num_gpus=0, resources=None, name=None, num_returns=1,
                 max_retries=3, retry_exceptions=False, placement_group=None,
                 placement_group_bundle_index=-1, scheduling_strategy=None,
                 placement_group_capture_child_tasks=False):
        self._function = function
        self._name = name or getattr(function, "__qualname__", "task")
        self._options = dict(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, name=name,
                             num_returns=num_returns, max_retries=max_retries,
                             retry_exceptions=retry_exceptions, placement_group=placement_group,
                             placement_group_bundle_index=placement_group_bundle_index,
                             scheduling_strategy=scheduling_strategy,
                             placement_group_capture_child_tasks=placement_group_capture_child_tasks)
        self._resources = scheduled_need(_resource_dict(num_cpus, num_gpus, resources), self._options)
        self._function_id: Optional[str] = None
        self._exported_by: Optional[_Client] = None

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self._name} cannot be called directly; "
                        f"use {self._name}.remote(...)")

    def options(self, **options) -> "RemoteFunction":
        unknown = set(options) - set(self._options)
        if unknown:
            raise TypeError(f"unsupported task option(s): {', '.join(sorted(unknown))}")
        return RemoteFunction(self._function, **{**self._options, **options})

    def remote(self, *args, **kwargs):
        client = _connected()
        if self._exported_by is not client:
            self._function_id = client.functions.export(self._function)
            self._exported_by = client
        data, deps = dumps_args(args, kwargs, f"{self._name}.remote()")
        task_id = uuid.uuid4().hex
        spec = pb.TaskSpec(task_id=task_id, function_id=self._function_id, name=self._name, args=data,
                           job_id=client.job_id,
                           dependencies=deps, return_id=task_id, resources=self._resources,
                           return_ids=_return_ids(task_id, self._options["num_returns"]),
                           max_retries=self._options["max_retries"],
                           retry_exceptions=bool(self._options["retry_exceptions"]))
        client.task_sender.submit(spec)  # asynchronous, in order, batched under load
        return _refs(spec)


DEFAULT_NAMESPACE = "default"


class ActorClass:
    """A class whose instances are actors: `Cls.remote(*args)` creates one and returns its handle.

    Resources as Ray: without num_cpus an actor needs 1 CPU free to be placed but holds 0 CPUs
    while it lives (so many idle actors fit a node); with num_cpus it needs and holds that many.
    GPUs and custom resources are needed and held as given.
    """

    _OPTIONS = ("num_cpus", "num_gpus", "resources", "name", "namespace", "lifetime", "max_restarts",
                "get_if_exists", "max_concurrency", "max_task_retries", "placement_group",
                "placement_group_bundle_index", "scheduling_strategy",
                "placement_group_capture_child_tasks")

    def __init__(self, cls, **options):
        self._cls = cls
        unknown = set(options) - set(self._OPTIONS)
        if unknown:
            raise TypeError(f"unsupported actor option(s): {', '.join(sorted(unknown))}")
        self._options = options
        self._methods = sorted(name for name, _ in inspect.getmembers(cls, callable)
                               if not name.startswith("__"))
        self._class_id: Optional[str] = None
        self._exported_by: Optional[_Client] = None

    def __call__(self, *args, **kwargs):
        name = self._cls.__name__
        raise TypeError(f"actor class {name} cannot be instantiated directly; use {name}.remote(...)")

    def options(self, **options) -> "ActorClass":
        return ActorClass(self._cls, **{**self._options, **options})

    def remote(self, *args, **kwargs) -> "ActorHandle":
        client = _connected()
        o = self._options
        if self._exported_by is not client:
            self._class_id = client.functions.export(self._cls)
            self._exported_by = client
        class_name = self._cls.__name__
        hold = _resource_dict(o.get("num_cpus"), o.get("num_gpus"), o.get("resources"))
        place = dict(hold) if o.get("num_cpus") is not None else {**hold, "CPU": 1.0}
        hold, place = scheduled_need(hold, o), scheduled_need(place, o)
        data, deps = dumps_args(args, kwargs, f"{class_name}.remote()")  # before it is registered
        actor_id = uuid.uuid4().hex
        name = o.get("name") or ""
        namespace = o.get("namespace") or DEFAULT_NAMESPACE
        reply = client.gcs.RegisterActor(pb.ActorInfo(
            actor_id=actor_id, name=name, namespace=namespace, class_name=class_name,
            methods=self._methods, state="PENDING", lifetime=o.get("lifetime") or ""), timeout=30)
        if reply.error:
            if o.get("get_if_exists"):
                return ActorHandle(reply.info.actor_id, reply.info.class_name, list(reply.info.methods))
            raise ValueError(reply.error)
        label = f"{class_name}({name or actor_id[:8]})"
        spec = pb.TaskSpec(task_id=actor_id, function_id=self._class_id, name=label, args=data,
                           job_id="" if o.get("lifetime") == "detached" else client.job_id,
                           dependencies=deps, return_id=f"{actor_id}ready", resources=place,
                           kind=pb.TaskSpec.ACTOR_CREATION, actor_id=actor_id,
                           hold_resources=hold, max_restarts=int(o.get("max_restarts") or 0),
                           max_concurrency=int(o.get("max_concurrency") or 0))
        client.agent.SubmitTasks(pb.SubmitTasksRequest(tasks=[spec]), timeout=60)
        if client.is_driver and o.get("lifetime") != "detached":
            client.owned_actors.append(actor_id)
        return ActorHandle(actor_id, class_name, self._methods, name)


class ActorHandle:
    """A reference to an actor; picklable (to its id), so it can be passed to tasks and actors."""

    def __init__(self, actor_id: str, class_name: str, methods: list, name: str = ""):
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = list(methods)
        self._name = name

    @property
    def _label(self) -> str:
        return f"{self._class_name}({self._name or self._actor_id[:8]})"

    def __getattr__(self, method: str) -> "ActorMethod":
        if method.startswith("__") or method not in self.__dict__.get("_methods", ()):
            raise AttributeError(f"actor {self.__dict__.get('_class_name', '?')} has no method "
                                 f"{method!r}")
        return ActorMethod(self, method, 1)

    def __reduce__(self):
        return (ActorHandle, (self._actor_id, self._class_name, self._methods, self._name))

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self):
        return hash(self._actor_id)

    def __repr__(self):
        return f"ActorHandle({self._class_name}, {self._actor_id})"


class ActorMethod:
    def __init__(self, handle: ActorHandle, method: str, num_returns: int):
        self._handle = handle
        self._method = method
        self._num_returns = num_returns

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor method {self._method} cannot be called directly; "
                        f"use .{self._method}.remote(...)")

    def options(self, num_returns: int = 1, **_ignored) -> "ActorMethod":
        return ActorMethod(self._handle, self._method, num_returns)

    def remote(self, *args, **kwargs):
        client = _connected()
        handle = self._handle
        data, deps = dumps_args(args, kwargs, f"{handle._label}.{self._method}.remote()")
        task_id = uuid.uuid4().hex
        spec = pb.TaskSpec(task_id=task_id, name=f"{handle._label}.{self._method}", args=data,
                           job_id=client.job_id,
                           dependencies=deps, return_id=task_id,
                           return_ids=_return_ids(task_id, self._num_returns),
                           kind=pb.TaskSpec.ACTOR_METHOD, actor_id=handle._actor_id,
                           method=self._method)
        client.sender(handle._actor_id, handle._label).submit(spec)
        return _refs(spec)


def remote(*args, **options):
    """`@remote` or `@remote(num_cpus=2, num_gpus=1, resources={"x": 1})` on a function or class."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    return lambda target: _make_remote(target, options)


def _make_remote(target, options):
    if isinstance(target, type):
        return ActorClass(target, **options)
    return RemoteFunction(target, **options)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes `ref`: dropped if it has not started, else interrupted with
    KeyboardInterrupt (force=True: its worker is killed). `get(ref)` then raises
    TaskCancelledError. A task that already finished keeps its result. (`recursive` is accepted
    for Ray's signature; the tasks it submitted are not cancelled.)"""
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef, got {type(ref).__name__}")
    client = _connected()
    client.flush(timeout=5.0)  # it may not have left this process yet
    request = pb.CancelRequest(task_id=ref.hex()[:TASK_ID_LENGTH], force=force)
    if client.agent.CancelTask(request, timeout=30).found:
        return
    for node in _cluster_state().nodes:  # it was forwarded: ask the other nodes
        if node.address != client.agent_address and \
                client.agent_at(node.address).CancelTask(request, timeout=30).found:
            return


_gpu_ids: list = []  # the GPU devices of the task or actor this worker runs


def set_job(job_id: str) -> None:
    """Called by the worker: work submitted from here on belongs to this driver's job (a detached
    actor's is "": it outlives every driver)."""
    _connected().job_id = job_id


def set_gpu_ids(ids: Sequence[str]) -> None:
    """Called by the worker before each task: the devices the node agent gave it."""
    global _gpu_ids
    _gpu_ids = [int(i) if i.isdigit() else i for i in ids]


def get_gpu_ids() -> list:
    """The GPU ids the current task or actor may use (as in its CUDA_VISIBLE_DEVICES); [] in a
    driver and in work that asked for no GPUs."""
    return list(_gpu_ids)


def get_actor(name: str, namespace: Optional[str] = None) -> ActorHandle:
    """The handle of a live named actor."""
    namespace = namespace or DEFAULT_NAMESPACE
    reply = _connected().gcs.GetActor(pb.ActorRequest(name=name, namespace=namespace), timeout=30)
    if not reply.found or reply.info.state == "DEAD":
        raise ValueError(f"Failed to look up actor with name {name!r} in namespace {namespace!r}")
    info = reply.info
    return ActorHandle(info.actor_id, info.class_name, list(info.methods), info.name)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor now: calls in flight and later calls fail with ActorDiedError."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an ActorHandle, got {type(actor).__name__}")
    _kill(_connected(), actor._actor_id, "it was killed with kill()", no_restart)


def _kill(client: _Client, actor_id: str, cause: str, no_restart: bool = True) -> None:
    request = pb.ActorRequest(actor_id=actor_id, no_restart=no_restart)
    reply = client.gcs.GetActor(request, timeout=30)
    if not reply.found or reply.info.state == "DEAD":
        return
    if reply.info.address:
        client.agent_at(reply.info.address).KillActor(request, timeout=30)
    else:  # not placed yet
        client.gcs.UpdateActor(pb.ActorInfo(actor_id=actor_id, state="DEAD", death_cause=cause),
                               timeout=30)


def wait(refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: Optional[float] = None,
         fetch_local: bool = True) -> tuple:
    """(ready, not_ready): the first `num_returns` refs that are ready (or fewer, when `timeout`
    passes), and the rest; both keep the order of `refs`."""
    if isinstance(refs, ObjectRef) or not isinstance(refs, (list, tuple)):
        raise TypeError("wait() takes a list of ObjectRefs")
    refs = list(refs)
    for ref in refs:
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"wait() takes ObjectRefs, got {type(ref).__name__}")
    if len(set(refs)) != len(refs):
        raise ValueError("wait() expects a list of unique ObjectRefs")
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns must be between 0 and {len(refs)}, got {num_returns}")
    if num_returns == 0:
        return [], refs
    reply = _connected().agent.WaitObjects(pb.WaitObjectsRequest(
        object_ids=[r.hex() for r in refs], num_returns=num_returns,
        timeout=-1 if timeout is None else timeout))
    ready_ids = set(list(reply.ready))
    ready = [r for r in refs if r.hex() in ready_ids][:num_returns]
    taken = set(ready)
    return ready, [r for r in refs if r not in taken]


def get(refs: Union[ObjectRef, Sequence[ObjectRef]], *, timeout: Optional[float] = None):
    """The value(s) behind one ref or a list of refs, waiting until they exist."""
    single = isinstance(refs, ObjectRef)
    if not single and not isinstance(refs, (list, tuple)):
        raise TypeError(f"get() takes an ObjectRef or a list of ObjectRefs, got {type(refs).__name__}")
    ref_list = [refs] if single else list(refs)
    for ref in ref_list:
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"get() takes ObjectRefs, got {type(ref).__name__}")
    ids = [r.hex() for r in ref_list]
    blobs = _blobs(_connected(), ids, timeout)
    values = [loads(blobs[i]) for i in ids]
    return values[0] if single else values


def _blobs(client: _Client, ids: list, timeout: Optional[float]) -> dict:
    """id -> the object: bytes, or a read-only mapping of its file when it is on this machine.
    A get still waiting after WARN_AFTER_S warns once if queued work can never be placed."""
    directory = client.store_directory()
    map_files = directory is not None
    blobs = _mapped_here(directory, ids) if map_files else {}
    missing = [i for i in dict.fromkeys(ids) if i not in blobs]
    deadline = None if timeout is None else time.monotonic() + timeout
    warned = False
    while missing:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        wait = remaining if warned else min(WARN_AFTER_S, WARN_AFTER_S if remaining is None else remaining)
        reply = client.agent.GetObjects(pb.GetObjectsRequest(
            object_ids=missing, timeout=-1 if wait is None else wait, map_files=map_files))
        if reply.timed_out:
            if remaining is not None and wait >= remaining:
                raise GetTimeoutError(f"get() timed out after {timeout}s waiting for "
                                      f"{len(ids)} object(s)")
            warned = True
            _warn_if_infeasible(client)
            continue
        for found in reply.objects:
            if not found.path:
                blobs[found.object_id] = found.data
                continue
            try:
                blobs[found.object_id] = map_file(found.path)
            except FileNotFoundError:  # spilled to disk meanwhile: ask again
                pass
        missing = [i for i in missing if i not in blobs]
    return blobs


def _mapped_here(directory: str, ids: list) -> dict:
    """The objects already in this node's shared-memory store, mapped without asking the agent
    (a file there is complete: it is written elsewhere and renamed in). Others need the agent."""
    found = {}
    for object_id in ids:
        if object_id.isascii() and object_id.isalnum():
            try:
                found[object_id] = map_file(os.path.join(directory, object_id))
            except (FileNotFoundError, ValueError):  # not here (yet), or spilled: ask the agent
                pass
    return found


def _warn_if_infeasible(client: _Client) -> None:
    """Tell the driver, on stderr, about queued work no node can ever hold: with an autoscaler,
    the shapes it found no node type for; without, shapes larger than every live node."""
    state = client.gcs.GetClusterState(pb.Empty(), timeout=10)
    status = client.gcs.KvGet(pb.KvRequest(key=AUTOSCALER_STATUS_KEY), timeout=10)
    if status.found:
        infeasible = json.loads(status.value).get("infeasible", [])
    else:
        infeasible = [dict(d.shape) for d in state.demand
                      if not any(fits(dict(d.shape), dict(n.total)) for n in state.nodes)]
    for shape in infeasible:
        needs = ", ".join(f"{k}: {v:g}" for k, v in sorted(shape.items()))
        print(f"Warning: work needing {{{needs}}} cannot be scheduled: no node has "
              f"these resources and none can be launched for it (see `cluster status`).",
              file=sys.stderr)


def put(value) -> ObjectRef:
    """Store a value in this node's object store and return a ref to it. A large value is written
    into the node's shared memory by this process; ObjectStoreFullError when it finds no room."""
    client = _connected()
    object_id = uuid.uuid4().hex
    staged = stage(client.store_directory(), object_id, serialize(value))
    if isinstance(staged, bytes):
        request = pb.ObjectData(object_id=object_id, data=staged)
    else:
        request = pb.ObjectData(object_id=object_id, size=staged)
    try:
        client.agent.PutObject(request, timeout=60)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise ObjectStoreFullError(exc.details()) from None
        raise
    client.refs.created([object_id])
    return ObjectRef(object_id, _owned=True)


def _cluster_state() -> pb.ClusterState:
    return _connected().gcs.GetClusterState(pb.Empty(), timeout=10)


def nodes() -> list[dict]:
    return [{"NodeID": n.node_id, "NodeManagerAddress": n.ip, "Alive": True, "NodeType": n.node_type,
             "IsHead": n.is_head, "Resources": dict(n.total)} for n in _cluster_state().nodes]


def cluster_resources() -> dict:
    return _sum_resources(lambda n: n.total)


def available_resources() -> dict:
    return _sum_resources(lambda n: n.available)


def _sum_resources(pick) -> dict:
    total: dict[str, float] = {}
    for n in _cluster_state().nodes:
        for k, v in pick(n).items():
            total[k] = total.get(k, 0.0) + v
    return total
