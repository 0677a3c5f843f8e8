"""The user API: `init`, `remote`, `get`, `put`, ... with Ray's names, so `import runtime as ray` works
for the core of typical Ray programs.

A driver (or a worker running user code) talks to the node agent of its node and to the GCS.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import uuid
from typing import Optional, Sequence, Union

import cloudpickle

from runtime import rpc
from runtime.errors import GetTimeoutError, NotConnected
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc
from runtime.serialization import ObjectRef, dumps_args, dumps_value, loads
from runtime.session import TOKEN_ENV, read_session, read_token


class _Client:
    """A connection to one node agent and the GCS."""

    def __init__(self, agent_address: str, gcs_address: str, token: Optional[str], local_node=None):
        self.agent_address = agent_address
        self.gcs_address = gcs_address
        self.agent = pb_grpc.NodeAgentStub(rpc.make_channel(agent_address, token))
        self.gcs = pb_grpc.GcsStub(rpc.make_channel(gcs_address, token))
        self.functions = FunctionTable(self.gcs)
        self.local_node = local_node  # processes this driver started itself, stopped at shutdown


class FunctionTable:
    """Functions are pickled once, stored in the GCS under their hash, and loaded once per worker."""

    def __init__(self, gcs):
        self._gcs = gcs
        self._exported: set[str] = set()
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    def export(self, function) -> str:
        data = cloudpickle.dumps(function, protocol=5)
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


def init(address: Optional[str] = None, *, num_cpus: Optional[int] = None,
         num_gpus: Optional[int] = None, resources: Optional[dict] = None,
         ignore_reinit_error: bool = False) -> dict:
    """Connect this process to a cluster.

    address: "auto" = the cluster this node belongs to (its ~/.cluster/session.json);
    "HOST:PORT" = a GCS; None = $CLUSTER_ADDRESS, else this node's cluster if it has one, else a
    new single-node cluster owned by this process (num_cpus/num_gpus/resources size it).
    """
    global _client
    with _client_lock:
        if _client is not None:
            if ignore_reinit_error:
                return _info(_client)
            raise RuntimeError("runtime.init() was already called; call runtime.shutdown() first")
        address = address or os.environ.get("CLUSTER_ADDRESS")
        session = read_session()
        if address == "auto" or (address is None and session is not None):
            if session is None:
                raise ConnectionError("no cluster runs on this node (no ~/.cluster/session.json); "
                                      "start one with `cluster start --head`")
            _client = _Client(session.agent_address, session.gcs_address, read_token())
        elif address is None:
            from runtime import node

            local = node.start_local_cluster(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources)
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
    if client is not None and client.local_node is not None:
        client.local_node.stop()


class RemoteFunction:
    """A function that runs as a task somewhere in the cluster: call it with `.remote(...)`."""

    def __init__(self, function, num_cpus=1, num_gpus=0, resources=None, name=None):
        self._function = function
        self._name = name or getattr(function, "__qualname__", "task")
        self._resources = {"CPU": float(num_cpus), "GPU": float(num_gpus),
                           **{k: float(v) for k, v in (resources or {}).items()}}
        self._options = dict(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, name=name)
        self._function_id: Optional[str] = None
        self._exported_by: Optional[_Client] = None

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self._name} cannot be called directly; "
                        f"use {self._name}.remote(...)")

    def options(self, **options) -> "RemoteFunction":
        return RemoteFunction(self._function, **{**self._options, **options})

    def remote(self, *args, **kwargs) -> ObjectRef:
        client = _connected()
        if self._exported_by is not client:
            self._function_id = client.functions.export(self._function)
            self._exported_by = client
        data, deps = dumps_args(args, kwargs)
        task_id = uuid.uuid4().hex
        spec = pb.TaskSpec(task_id=task_id, function_id=self._function_id, name=self._name, args=data,
                           dependencies=deps, return_id=task_id,
                           resources={k: v for k, v in self._resources.items() if v > 0})
        client.agent.SubmitTasks(pb.SubmitTasksRequest(tasks=[spec]), timeout=60)
        return ObjectRef(spec.return_id)


def remote(*args, **options):
    """`@remote` or `@remote(num_cpus=2, num_gpus=1, resources={"x": 1})` on a function."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    return lambda function: _make_remote(function, options)


def _make_remote(target, options):
    if isinstance(target, type):
        raise NotImplementedError("remote classes (actors) are not supported yet")
    return RemoteFunction(target, **options)


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
    reply = _connected().agent.GetObjects(
        pb.GetObjectsRequest(object_ids=ids, timeout=-1 if timeout is None else timeout))
    if reply.timed_out:
        raise GetTimeoutError(f"get() timed out after {timeout}s waiting for {len(ids)} object(s)")
    data = {o.object_id: o.data for o in reply.objects}
    values = [loads(data[i]) for i in ids]
    return values[0] if single else values


def put(value) -> ObjectRef:
    """Store a value in this node's object store and return a ref to it."""
    object_id = uuid.uuid4().hex
    _connected().agent.PutObject(pb.ObjectData(object_id=object_id, data=dumps_value(value)), timeout=60)
    return ObjectRef(object_id)


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
