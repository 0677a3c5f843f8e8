"""This process's connection to a cluster: its node agent, the GCS, and what it owns there.

A driver connects with `init()` (or implicitly, on its first `.remote()`, `put`, `get` or `wait`,
as in Ray); a worker connects from the environment its node agent gave it, and also knows the task
it runs now (`TaskContext`), since the work that task submits inherits from it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Optional, Sequence

from runtime import refs as ref_tracking, rpc
from runtime.call_sender import CallSender
from runtime.exceptions import RaySystemError
from runtime.function_table import FunctionTable
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc
from runtime.log_forwarding import DriverLogs
from runtime.placement import group_of
from runtime.serialization import dumps_task_error
from runtime.session import TOKEN_ENV, read_session, read_token


DEFAULT_NAMESPACE = "default"
# shutdown() gives up on the GCS after this: long enough for a GCS restart (about half a second),
# short enough that a driver whose cluster is gone ends promptly
SHUTDOWN_GCS_S = 2.0


class Client:
    """A connection to one node agent and the GCS."""

    def __init__(self, agent_address: str, gcs_address: str, token: Optional[str], local_node=None):
        self.agent_address = agent_address
        self.gcs_address = gcs_address
        self.agent = pb_grpc.NodeAgentStub(rpc.make_channel(agent_address, token))
        self.gcs = pb_grpc.GcsStub(rpc.make_channel(gcs_address, token))
        self.functions = FunctionTable(self.gcs)
        self.local_node = local_node  # processes this driver started itself, stopped at shutdown
        self.token = token
        self._senders: dict[str, CallSender] = {}
        self.task_sender = CallSender(self, "", "tasks", fixed_address=agent_address)
        self.is_driver = True  # False in worker processes
        self.owned_actors: list[str] = []  # non-detached actors this driver created: killed at shutdown
        self.owned_placement_groups: list[str] = []  # likewise removed at shutdown
        self.job_id = uuid.uuid4().hex  # a driver's work carries it; a worker's, its task's
        self.namespace = DEFAULT_NAMESPACE  # likewise, and the named actors' namespace
        self.runtime_env = ""  # likewise: the JSON of the runtime_env its work gets by default
        self.driver_logs: Optional[DriverLogs] = None  # a driver's: prints its tasks' output
        self._agents: dict[str, pb_grpc.NodeAgentStub] = {}
        self._lock = threading.Lock()
        self._store_dir: Optional[str] = None  # "" once known not to be on this machine
        self.refs = ref_tracking.RefTracker(self._free, self.existing)
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

    def existing(self, object_ids: list) -> set:
        """Those of the objects that exist somewhere in the cluster (one GCS call)."""
        reply = self.gcs.WaitObjectLocations(pb.WaitLocationsRequest(object_ids=object_ids, timeout=0),
                                             timeout=30)
        return {location.object_id for location in reply.locations}

    def sender(self, actor_id: str, label: str) -> "CallSender":
        with self._lock:
            sender = self._senders.get(actor_id)
            if sender is None:
                sender = self._senders[actor_id] = CallSender(self, actor_id, label)
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

    def kill_actor(self, actor_id: str, cause: str, no_restart: bool = True) -> None:
        request = pb.ActorRequest(actor_id=actor_id, no_restart=no_restart)
        reply = self.gcs.GetActor(request, timeout=30)
        if not reply.found or reply.info.state == "DEAD":
            return
        if reply.info.address:
            self.agent_at(reply.info.address).KillActor(request, timeout=30)
        else:  # not placed yet
            self.gcs.UpdateActor(pb.ActorInfo(actor_id=actor_id, state="DEAD", death_cause=cause),
                                 timeout=30)

    def fail(self, spec: pb.TaskSpec, error: BaseException) -> None:
        """Store `error` as the result of a call that could not be delivered."""
        for object_id in list(spec.return_ids) or [spec.return_id]:
            self.agent.PutObject(pb.ObjectData(object_id=object_id, data=dumps_task_error(error)),
                                 timeout=60)


_client: Optional[Client] = None
_client_lock = threading.Lock()


def connected() -> Client:
    """The connection; an error when there is none (calls that only read the cluster need one)."""
    if _client is None:
        raise RaySystemError("this process is not connected to a cluster: call ray.init() first")
    return _client


def auto_connected() -> Client:
    """The connection, made with `init()` when there is none: as in Ray, a program's first
    `.remote()`, `put`, `get` or `wait` connects it (to $CLUSTER_ADDRESS, this node's cluster, or
    a new local one)."""
    if _client is None:
        init(ignore_reinit_error=True)
    return connected()


def function_table() -> FunctionTable:
    return connected().functions


def is_initialized() -> bool:
    return _client is not None


def connect_from_environment() -> None:
    """Used by worker processes: the agent put the addresses and token in their environment."""
    global _client
    _client = Client(os.environ["CLUSTER_AGENT_ADDRESS"], os.environ["CLUSTER_GCS_ADDRESS"],
                     os.environ.get(TOKEN_ENV))
    _client.is_driver = False
    _client.job_id = ""
    _client._store_dir = os.environ.get("CLUSTER_OBJECT_STORE_DIR", "")


# init() options Ray has that change nothing here when left at these values; any other value is
# a NotImplementedError naming the option, never silently ignored.
_INERT_INIT_OPTIONS = {"include_dashboard": (None, False),
                       "local_mode": (False,), "job_config": (None,), "dashboard_host": (None,),
                       "dashboard_port": (None,), "logging_format": (None,),
                       "configure_logging": (True, False), "labels": (None,)}


def init(address: Optional[str] = None, *, num_cpus: Optional[int] = None,
         num_gpus: Optional[int] = None, resources: Optional[dict] = None,
         object_store_memory: Optional[int] = None, ignore_reinit_error: bool = False,
         namespace: Optional[str] = None, runtime_env: Optional[dict] = None,
         logging_level=None, log_to_driver: bool = True, **ray_options) -> dict:
    """Connect this process to a cluster.

    address: "auto" = the cluster this node belongs to (its ~/.cluster/session.json);
    "HOST:PORT" = a GCS; None = $CLUSTER_ADDRESS (or Ray's $RAY_ADDRESS), else this node's
    cluster if it has one, else a
    new single-node cluster owned by this process (num_cpus/num_gpus/resources size it, and
    object_store_memory its shared memory for objects, in bytes). `namespace` is where this
    driver's named actors live and are looked up; `runtime_env` applies to all its work. What
    its tasks and actors print shows here (unless log_to_driver=False).
    """
    global _client
    for option, value in ray_options.items():
        if option.startswith("_"):  # Ray's private settings (_system_config, _temp_dir, ...)
            raise NotImplementedError(f"init({option}=...) is not supported by this runtime")
        if option not in _INERT_INIT_OPTIONS:
            raise TypeError(f"init() got an unexpected keyword argument {option!r}")
        if value not in _INERT_INIT_OPTIONS[option]:
            raise NotImplementedError(f"init({option}={value!r}) is not supported by this runtime")
    env = check_runtime_env(runtime_env, "init(runtime_env=...)")
    if logging_level is not None:
        logging.getLogger("runtime").setLevel(logging_level if isinstance(logging_level, int)
                                              else str(logging_level).upper())
    with _client_lock:
        if _client is not None:
            if ignore_reinit_error:
                return _info(_client)
            raise RuntimeError("runtime.init() was already called; call runtime.shutdown() first")
        address = address or os.environ.get("CLUSTER_ADDRESS") or _ray_address()
        if address and address.startswith("ray://"):
            raise NotImplementedError(f"init({address!r}): Ray Client addresses are not supported; "
                                      f"run the program on the head (`cluster submit`) or give "
                                      f"the GCS address HOST:PORT")
        session = read_session()
        joining = joins_a_cluster(address)
        if object_store_memory is not None and joining:
            raise ValueError("object_store_memory sizes a new cluster; this connects to a running "
                             "one (size its nodes with `cluster start --object-store-memory`)")
        if joining and (num_cpus is not None or num_gpus is not None or resources):
            raise ValueError("When connecting to an existing cluster, num_cpus, num_gpus and "
                             "resources must not be provided (size its nodes with "
                             "`cluster start --num-cpus/--num-gpus/--resources`)")
        if address == "auto" or (address is None and session is not None):
            if session is None:
                raise ConnectionError("no cluster runs on this node (no ~/.cluster/session.json); "
                                      "start one with `cluster start --head`")
            client = Client(session.agent_address, session.gcs_address, read_token())
        elif address is None:
            from runtime import node

            local = node.start_local_cluster(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                             object_store_memory=object_store_memory)
            client = Client(local.agent_address, local.gcs_address, local.token, local_node=local)
        else:
            token = read_token()
            client = Client(_agent_for(address, token, session), address, token)
        client.namespace = namespace or DEFAULT_NAMESPACE
        client.runtime_env = env
        if log_to_driver:
            client.driver_logs = DriverLogs(client.gcs, client.job_id)
        _client = client
        atexit.register(shutdown)
        return _info(_client)


# runtime_env keys: env_vars is applied to the work's processes; the others need the runtime
# environments of the jobs service (packages, working directories) and are refused for now.
SUPPORTED_RUNTIME_ENV = ("env_vars",)


def check_runtime_env(runtime_env: Optional[dict], where: str) -> str:
    """A runtime_env as the JSON a task spec carries ("" for none), after checking it."""
    if not runtime_env:
        return ""
    if not isinstance(runtime_env, dict):
        raise TypeError(f"{where}: runtime_env must be a dict, got {type(runtime_env).__name__}")
    for key in runtime_env:
        if key not in SUPPORTED_RUNTIME_ENV:
            raise NotImplementedError(f"{where}: runtime_env[{key!r}] is not supported by this "
                                      f"runtime yet (supported: {', '.join(SUPPORTED_RUNTIME_ENV)})")
    env_vars = runtime_env.get("env_vars") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise TypeError(f"{where}: runtime_env['env_vars'] must map str to str")
    return json.dumps(runtime_env, sort_keys=True)


def joins_a_cluster(address: Optional[str] = None) -> bool:
    """Whether init(address) would connect to a running cluster rather than start one."""
    return bool(address or os.environ.get("CLUSTER_ADDRESS") or _ray_address()
                or read_session() is not None)


def _ray_address() -> Optional[str]:
    """$RAY_ADDRESS, as Ray users set it for a cluster's GCS (HOST:PORT or "auto"); not a
    dashboard URL (http://...), which is for job submission."""
    address = os.environ.get("RAY_ADDRESS", "")
    return address if address and "://" not in address else None


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


def _info(client: Client) -> dict:
    return {"gcs_address": client.gcs_address, "agent_address": client.agent_address,
            "namespace": client.namespace}


def shutdown() -> None:
    global _client
    with _client_lock:
        client, _client = _client, None
    if client is not None:  # submissions are asynchronous: deliver what is still queued
        client.flush(timeout=5.0)
        if client.driver_logs is not None:
            with contextlib.suppress(Exception):  # the cluster may be gone already
                client.driver_logs.drain(SHUTDOWN_GCS_S)
            client.driver_logs.stop()
        ref_tracking.install(None)
        if client.local_node is None:
            try:  # free what this driver owns (runtime.refs says what stays)
                client.refs.close()
            except Exception:  # the cluster may be gone already
                pass  # a driver's non-detached actors go with it, as in Ray
            try:  # the first call also tells whether the cluster is still there
                nodes = client.gcs.GetClusterState(pb.Empty(), timeout=SHUTDOWN_GCS_S).nodes
                for actor_id in client.owned_actors:
                    client.kill_actor(actor_id, "its driver exited")
                for pg_id in client.owned_placement_groups:
                    client.gcs.RemovePlacementGroup(pb.PlacementGroupRequest(pg_id=pg_id), timeout=10)
                for node in nodes:
                    client.agent_at(node.address).CancelJob(pb.JobRequest(job_id=client.job_id),
                                                            timeout=10)
            except Exception:  # the cluster may be gone already
                pass
    if client is not None and client.local_node is not None:
        client.local_node.stop()


@dataclass
class TaskContext:
    """In a worker: the task or actor it runs now, which the work it submits inherits from (job,
    namespace, runtime_env, captured placement group) and `get_runtime_context()` describes."""

    task_id: str = ""
    name: str = ""  # as the driver shows its prints: the function, or the actor's class
    actor_id: str = ""
    job_id: str = ""
    namespace: str = DEFAULT_NAMESPACE
    runtime_env: str = ""
    capture_placement_group: str = ""
    placement_group: str = ""
    resources: dict = field(default_factory=dict)
    gpu_ids: list = field(default_factory=list)
    blocking_releases_cpus: bool = False  # a plain task: its CPUs go back while it waits
    actor_restarted: bool = False  # an actor's: it runs in a restarted worker


task_context = TaskContext()  # a driver's stays empty


def enter_task(spec: pb.TaskSpec, gpu_ids: Optional[Sequence[str]]) -> None:
    """Called by the worker before running a spec: what its nested work inherits."""
    global task_context
    client = connected()
    actor_method = spec.kind == pb.TaskSpec.ACTOR_METHOD
    if not actor_method:  # an actor's nested work is its creator's
        client.job_id = spec.job_id  # (a detached actor's is "": it outlives every driver)
        client.namespace = spec.namespace or DEFAULT_NAMESPACE
        client.runtime_env = spec.runtime_env
    ids = [int(i) if i.isdigit() else i for i in gpu_ids] if gpu_ids is not None else \
        task_context.gpu_ids
    task_context = TaskContext(
        task_id=spec.task_id, actor_id=spec.actor_id, job_id=client.job_id,
        name=spec.name.split("(")[0] if spec.actor_id else spec.name,
        namespace=client.namespace, runtime_env=client.runtime_env,
        capture_placement_group=spec.capture_placement_group if not actor_method else
        task_context.capture_placement_group,
        placement_group=group_of(spec.resources) if not actor_method else task_context.placement_group,
        resources=dict(spec.resources) if not actor_method else task_context.resources,
        gpu_ids=ids, blocking_releases_cpus=spec.kind == pb.TaskSpec.TASK,
        actor_restarted=spec.attempt > 0 if spec.kind == pb.TaskSpec.ACTOR_CREATION else
        task_context.actor_restarted)


def get_gpu_ids() -> list:
    """The GPU ids the current task or actor may use (as in its CUDA_VISIBLE_DEVICES); [] in a
    driver and in work that asked for no GPUs."""
    return list(task_context.gpu_ids)
