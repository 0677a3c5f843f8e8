"""Objects: `put`, `get`, `wait`, and `cancel` of the task that makes one.

A task blocked in `get`/`wait` tells its node agent so (`blocked_task_id`): the agent lends its
CPUs to other work meanwhile and takes them back when it returns, as Ray does, so a task waiting
on the tasks it submitted never starves them of the node's CPUs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional, Sequence, Union

import grpc

from runtime import client as client_state, ids
from runtime.client import Client
from runtime.exceptions import GetTimeoutError, ObjectStoreFullError
from runtime.generated import runtime_pb2 as pb
from runtime.generators import ObjectRefGenerator
from runtime.object_store import map_file, stage
from runtime.resources import fits
from runtime.serialization import ObjectRef, loads, serialize
from runtime.session import AUTOSCALER_STATUS_KEY

WARN_AFTER_S = 10.0  # a get waiting this long checks for work that can never be placed


def _blocked_task() -> str:
    """The task this process runs, when blocking in it should lend its CPUs out."""
    context = client_state.task_context
    return context.task_id if context.blocking_releases_cpus else ""


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes `ref`: dropped if it has not started, else interrupted with
    KeyboardInterrupt (force=True: its worker is killed). `get(ref)` then raises
    TaskCancelledError. A task that already finished keeps its result. (`recursive` is accepted
    for Ray's signature; the tasks it submitted are not cancelled.)"""
    if isinstance(ref, ObjectRefGenerator):
        ref = ref.completed()
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef, got {type(ref).__name__}")
    client = client_state.connected()
    client.flush(timeout=5.0)  # it may not have left this process yet
    request = pb.CancelRequest(task_id=ids.task_of(ref.hex()), force=force)
    if client.agent.CancelTask(request, timeout=30).found:
        return
    for node in client.gcs.GetClusterState(pb.Empty(), timeout=10).nodes:  # it was forwarded: ask the other nodes
        if node.address != client.agent_address and \
                client.agent_at(node.address).CancelTask(request, timeout=30).found:
            return


def wait(refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: Optional[float] = None,
         fetch_local: bool = True) -> tuple:
    """(ready, not_ready): the first `num_returns` refs that are ready (or fewer, when `timeout`
    passes), and the rest; both keep the order of `refs`. A streaming generator among them is
    ready when its next item is (or it has ended)."""
    if isinstance(refs, ObjectRef) or not isinstance(refs, (list, tuple)):
        raise TypeError("wait() takes a list of ObjectRefs")
    refs = list(refs)
    for ref in refs:
        if not isinstance(ref, (ObjectRef, ObjectRefGenerator)):
            raise TypeError(f"wait() takes ObjectRefs, got {type(ref).__name__}")
    if len(set(refs)) != len(refs):
        raise ValueError("wait() expects a list of unique ObjectRefs")
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns must be between 0 and {len(refs)}, got {num_returns}")
    if num_returns == 0:
        return [], refs
    client = client_state.auto_connected()
    if any(isinstance(r, ObjectRefGenerator) for r in refs):
        ready_set = _ready_generators_and_refs(client, refs, num_returns, timeout)
    else:
        reply = client.agent.WaitObjects(pb.WaitObjectsRequest(
            object_ids=[r.hex() for r in refs], num_returns=num_returns,
            timeout=-1 if timeout is None else timeout, blocked_task_id=_blocked_task()))
        ready_ids = set(reply.ready)
        ready_set = {r for r in refs if r.hex() in ready_ids}
    ready = [r for r in refs if r in ready_set][:num_returns]
    taken = set(ready)
    return ready, [r for r in refs if r not in taken]


def _ready_generators_and_refs(client: Client, refs: list, num_returns: int,
                               timeout: Optional[float]) -> set:
    """wait() over refs and generators: each generator stands for two objects (its next item,
    its end), so entries are waited for one at a time until enough are ready."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ready: set = set()
    while True:
        watched = {}
        for entry in refs:
            if entry in ready:
                continue
            ids = entry.wait_ids() if isinstance(entry, ObjectRefGenerator) else [entry.hex()]
            if not ids:  # an exhausted generator
                ready.add(entry)
            watched.update({object_id: entry for object_id in ids})
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if len(ready) >= num_returns or not watched:
            return ready
        reply = client.agent.WaitObjects(pb.WaitObjectsRequest(
            object_ids=list(watched), num_returns=1, timeout=-1 if remaining is None else remaining,
            blocked_task_id=_blocked_task()))
        ready.update(watched[object_id] for object_id in reply.ready)
        if not reply.ready:  # timed out
            return ready


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
    client = client_state.auto_connected()
    blobs = _blobs(client, ids, timeout)
    if client.driver_logs is not None and client.driver_logs.seen_any:
        client.driver_logs.drain()  # what the tasks printed shows before what the driver prints next
    values = [loads(blobs[i]) for i in ids]
    return values[0] if single else values


def _blobs(client: Client, ids: list, timeout: Optional[float]) -> dict:
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
            object_ids=missing, timeout=-1 if wait is None else wait, map_files=map_files,
            blocked_task_id=_blocked_task()))
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


def _warn_if_infeasible(client: Client) -> None:
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
    client = client_state.auto_connected()
    object_id = ids.new_id()
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


