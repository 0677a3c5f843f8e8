"""The node agent: one per node. Schedules tasks, runs them in worker processes, holds objects.

Scheduling is bottom-up: a task whose dependencies are ready runs here if it fits the free
resources; otherwise it is forwarded (spilled) to a node whose free resources fit, as seen in the
cluster view the GCS returns on each heartbeat; otherwise it waits here and is reported to the GCS
as demand, by shape, for the autoscaler.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from runtime import rpc
from runtime.errors import WorkerCrashedError
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc
from runtime.object_store import ObjectStore
from runtime.resources import add, fits, shape_key, subtract
from runtime.serialization import dumps_task_error
from runtime.session import TOKEN_ENV, logs_dir
from runtime.worker_pool import WorkerPool

log = logging.getLogger("node_agent")

HEARTBEAT_S = 0.3
CHUNK_BYTES = 1 << 20
MAX_HOPS = 4  # a task forwarded this often stays where it is


@dataclass
class _Task:
    spec: pb.TaskSpec
    need: dict
    missing: set


class NodeAgent(pb_grpc.NodeAgentServicer):
    def __init__(self, node_id: str, ip: str, node_type: str, is_head: bool, resources: dict,
                 gcs_address: str, token: str):
        self.node_id = node_id
        self.ip = ip
        self.node_type = node_type
        self.is_head = is_head
        self.total = dict(resources)
        self.available = dict(resources)
        self.address = ""  # host:port, known once the server is bound
        self._token = token
        self._lock = threading.RLock()
        self._ready: deque[_Task] = deque()
        self._waiting: dict[str, _Task] = {}  # task id -> task whose dependencies are missing
        self._dep_waiters: dict[str, list[str]] = {}  # object id -> waiting task ids
        self._running: dict[str, _Task] = {}
        self._view: dict[str, pb.NodeInfo] = {}  # other nodes, from the last heartbeat
        self._idle_since = time.monotonic()
        self._stopping = threading.Event()
        self._gcs = pb_grpc.GcsStub(rpc.make_channel(gcs_address, token))
        self._agents: dict[str, pb_grpc.NodeAgentStub] = {}
        self._io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="agent-io")
        self._new_locations: list[str] = []
        self._locations_ready = threading.Event()
        self._wanted: set[str] = set()
        self._fetching: set[str] = set()
        self._want_event = threading.Event()
        self.store = ObjectStore(on_added=self._object_added)
        worker_env = dict(os.environ, CLUSTER_GCS_ADDRESS=gcs_address, CLUSTER_NODE_ID=node_id,
                          CLUSTER_NODE_IP=ip, CLUSTER_NODE_TYPE=node_type, **{TOKEN_ENV: token})
        self._worker_env = worker_env
        self.pool = WorkerPool(worker_env, on_result=self._task_finished, on_death=self._worker_died)

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0):
        server = rpc.make_server(self._token, max_workers=64)
        pb_grpc.add_NodeAgentServicer_to_server(self, server)
        bound = server.add_insecure_port(f"{self.ip}:{port}")
        if bound == 0:
            raise OSError(f"node agent cannot listen on {self.ip}:{port}")
        server.start()
        self.address = f"{self.ip}:{bound}"
        self._worker_env["CLUSTER_AGENT_ADDRESS"] = self.address
        self._register()
        for loop in (self._heartbeat_loop, self._location_loop, self._pull_loop):
            threading.Thread(target=loop, daemon=True, name=loop.__name__).start()
        return server

    def stop(self) -> None:
        self._stopping.set()
        self.pool.shutdown()
        try:
            self._gcs.UnregisterNode(pb.NodeIdRequest(node_id=self.node_id), timeout=2)
        except Exception:  # the GCS may already be gone; it expires silent nodes anyway
            pass

    def _register(self) -> None:
        self._gcs.RegisterNode(pb.NodeInfo(
            node_id=self.node_id, address=self.address, ip=self.ip, node_type=self.node_type,
            is_head=self.is_head, total=self.total), timeout=10)

    # ------------------------------------------------------------------ gRPC service
    def SubmitTasks(self, request, context):
        with self._lock:
            for spec in request.tasks:
                self._accept(spec)
        self._schedule()
        return pb.Empty()

    def GetObjects(self, request, context):
        self._want([i for i in request.object_ids if not self.store.contains(i)])
        found = self.store.wait(request.object_ids, request.timeout,
                                should_stop=lambda: not context.is_active())
        return pb.GetObjectsReply(
            objects=[pb.ObjectData(object_id=i, data=d) for i, d in found.items()],
            timed_out=len(found) < len(set(request.object_ids)))

    def PutObject(self, request, context):
        self.store.put(request.object_id, request.data)
        return pb.Empty()

    def FetchObject(self, request, context):
        data = self.store.get(request.object_id)
        if data is None:
            yield pb.ObjectChunk(found=False)
            return
        for offset in range(0, max(len(data), 1), CHUNK_BYTES):
            yield pb.ObjectChunk(data=data[offset:offset + CHUNK_BYTES], found=True)

    # ------------------------------------------------------------------ scheduling
    def _accept(self, spec: pb.TaskSpec) -> None:
        task = _Task(spec, dict(spec.resources), set())
        task.missing = {d for d in spec.dependencies if not self.store.contains(d)}
        if not task.missing:
            self._ready.append(task)
            return
        self._waiting[spec.task_id] = task
        for object_id in task.missing:
            self._dep_waiters.setdefault(object_id, []).append(spec.task_id)
        self._want(task.missing)

    def _object_added(self, object_id: str) -> None:
        with self._lock:
            self._new_locations.append(object_id)
            for task_id in self._dep_waiters.pop(object_id, ()):
                task = self._waiting.get(task_id)
                if task is None:
                    continue
                task.missing.discard(object_id)
                if not task.missing:
                    del self._waiting[task_id]
                    self._ready.append(task)
        self._locations_ready.set()
        self._schedule()

    def _schedule(self) -> None:
        """Place every ready task: here if it fits, else on a node with room, else keep it queued."""
        to_run, to_spill = [], []
        with self._lock:
            queued = deque()
            for task in self._ready:
                target = self._placement(task)
                if target is self:
                    subtract(self.available, task.need)
                    self._running[task.spec.task_id] = task
                    to_run.append(task)
                elif target is None:
                    queued.append(task)
                else:
                    subtract(target.available, task.need)
                    to_spill.append((target.address, task))
            self._ready = queued
            self._update_idle()
        for task in to_run:
            self._io.submit(self._run, task)
        for address, task in to_spill:
            self._io.submit(self._spill, address, task)

    def _placement(self, task: _Task):
        """self, another node's NodeInfo, or None (wait here).

        Work that needs no GPU avoids GPU nodes while a node without GPUs has room, so GPUs stay
        free for the work that needs them.
        """
        room = [] if task.spec.hops >= MAX_HOPS else [
            n for n in self._view.values() if fits(task.need, n.available)]
        needs_gpu = task.need.get("GPU", 0) > 0
        if not needs_gpu:
            cpu_only = [n for n in room if n.total.get("GPU", 0) <= 0]
            if cpu_only and self.total.get("GPU", 0) > 0:
                return max(cpu_only, key=_spare_cpu)
        if fits(task.need, self.available):
            return self
        if room:
            return max(room, key=lambda n: (needs_gpu or n.total.get("GPU", 0) <= 0, *_spare_cpu(n)))
        return None

    def _run(self, task: _Task) -> None:
        spec = task.spec
        dependencies = {d: self.store.get(d) for d in spec.dependencies}
        message = pickle.dumps((spec.SerializeToString(), dependencies), protocol=5)
        self.pool.dispatch(spec.task_id, message)

    def _spill(self, address: str, task: _Task) -> None:
        spec = pb.TaskSpec()
        spec.CopyFrom(task.spec)
        spec.hops += 1
        try:
            self._agent(address).SubmitTasks(pb.SubmitTasksRequest(tasks=[spec]), timeout=10)
        except Exception as exc:  # the node went away: keep the task here
            log.warning("forwarding task %s to %s failed: %s", spec.name, address, exc)
            with self._lock:
                self._ready.appendleft(task)

    def _task_finished(self, task_id: str, data: bytes) -> None:
        with self._lock:
            task = self._running.pop(task_id, None)
            if task is not None:
                add(self.available, task.need)
        if task is not None:
            self.store.put(task.spec.return_id, data)
        self._schedule()

    def _worker_died(self, task_id: str, pid: int, returncode) -> None:
        with self._lock:
            task = self._running.get(task_id)
        if task is None:
            return
        detail = f"the worker process (pid {pid}) running it exited with code {returncode}"
        self._task_finished(task_id, dumps_task_error(WorkerCrashedError(task.spec.name, detail)))

    def _update_idle(self) -> None:
        busy = self._running or self._ready or self._waiting
        if busy:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = time.monotonic()

    def _demand(self) -> list:
        counts: dict[tuple, int] = {}
        for task in self._ready:
            key = shape_key(task.need)
            counts[key] = counts.get(key, 0) + 1
        return [pb.ShapeCount(shape=dict(k), count=c) for k, c in counts.items()]

    # ------------------------------------------------------------------ background loops
    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(HEARTBEAT_S):
            with self._lock:
                idle = -1.0 if self._idle_since is None else time.monotonic() - self._idle_since
                request = pb.HeartbeatRequest(node_id=self.node_id, available=self.available,
                                              idle_seconds=idle, demand=self._demand())
            try:
                reply = self._gcs.Heartbeat(request, timeout=5)
            except Exception as exc:
                log.warning("heartbeat to GCS failed: %s", exc)
                continue
            if reply.reregister:
                self._register()
                continue
            with self._lock:
                self._view = {n.node_id: n for n in reply.nodes if n.node_id != self.node_id}
            self._schedule()

    def _location_loop(self) -> None:
        """Tell the GCS where new objects live, batching whatever arrived since the last call."""
        while not self._stopping.is_set():
            self._locations_ready.wait(1.0)
            self._locations_ready.clear()
            with self._lock:
                batch, self._new_locations = self._new_locations, []
            if batch:
                try:
                    self._gcs.AddObjectLocations(
                        pb.ObjectLocationsUpdate(node_id=self.node_id, object_ids=batch), timeout=10)
                except Exception as exc:
                    log.warning("publishing object locations failed: %s", exc)
                    with self._lock:
                        self._new_locations.extend(batch)

    def _want(self, object_ids) -> None:
        if object_ids:
            with self._lock:
                self._wanted.update(object_ids)
            self._want_event.set()

    def _pull_loop(self) -> None:
        """Fetch objects this node waits for from the nodes that hold them."""
        while not self._stopping.is_set():
            with self._lock:
                self._wanted = {i for i in self._wanted if not self.store.contains(i)}
                ids = sorted(self._wanted - self._fetching)
            if not ids:
                self._want_event.wait(1.0)
                self._want_event.clear()
                continue
            try:
                reply = self._gcs.WaitObjectLocations(
                    pb.WaitLocationsRequest(object_ids=ids, timeout=0.5), timeout=10)
            except Exception as exc:
                log.warning("object lookup failed: %s", exc)
                time.sleep(0.5)
                continue
            for location in reply.locations:
                if location.node_id == self.node_id:
                    continue
                with self._lock:
                    self._fetching.add(location.object_id)
                self._io.submit(self._fetch, location)
            if not reply.locations:
                self._want_event.wait(0.05)
                self._want_event.clear()

    def _fetch(self, location: pb.ObjectLocation) -> None:
        try:
            chunks = [c for c in self._agent(location.address).FetchObject(
                pb.FetchObjectRequest(object_id=location.object_id), timeout=300)]
            if chunks and chunks[0].found:
                self.store.put(location.object_id, b"".join(c.data for c in chunks))
        except Exception as exc:
            log.warning("fetching %s from %s failed: %s", location.object_id, location.address, exc)
        finally:
            with self._lock:
                self._fetching.discard(location.object_id)
            self._want_event.set()

    def _agent(self, address: str) -> pb_grpc.NodeAgentStub:
        with self._lock:
            if address not in self._agents:
                self._agents[address] = pb_grpc.NodeAgentStub(rpc.make_channel(address, self._token))
            return self._agents[address]


def _spare_cpu(node: pb.NodeInfo) -> tuple:
    return node.available.get("CPU", 0.0), node.node_id


def main() -> None:
    parser = argparse.ArgumentParser(description="Run this node's agent.")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--ip", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gcs-address", required=True)
    parser.add_argument("--node-type", default="")
    parser.add_argument("--head", action="store_true")
    parser.add_argument("--resources", required=True, help="JSON object of resource -> amount")
    args = parser.parse_args()
    from runtime.session import read_token

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logs_dir().mkdir(parents=True, exist_ok=True)
    agent = NodeAgent(args.node_id, args.ip, args.node_type, args.head, json.loads(args.resources),
                      args.gcs_address, read_token())
    server = agent.start(args.port)
    log.info("node agent %s listening on %s", args.node_id, agent.address)

    def on_term(signum, frame):
        agent.stop()
        server.stop(0)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
