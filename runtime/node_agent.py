"""The node agent: one per node. Schedules tasks, runs them in worker processes, holds objects.

Scheduling is bottom-up: a task whose dependencies are ready runs here if it fits the free
resources; otherwise it is forwarded (spilled) to a node whose free resources fit, as seen in the
cluster view the GCS returns on each heartbeat; otherwise it waits here and is reported to the GCS
as demand, by shape, for the autoscaler. An actor is placed the same way (its creation is a task);
the agent that places it hosts it: a dedicated worker, and its calls queued and sent in order.

The agent is the gRPC servicer and keeps the scheduling state (ready and waiting queues, running
tasks) under its lock; each other job is a part with its own module and lock discipline:
scheduler (where a task goes, the resource ledger), actor_host, object_manager (pulls and
locations), recovery (forwarded work and lineage), reporter (heartbeats), task_events.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import random
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import grpc

from runtime import rpc
from runtime.exceptions import (ActorDiedError, ObjectStoreFullError,
                                TaskCancelledError, TaskFailedError, TaskUnschedulableError,
                                WorkerCrashedError)
from runtime.actor_host import ActorHost
from runtime.gpus import GpuSlots, visible_gpu_ids
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc
from runtime.object_manager import ObjectManager
from runtime.object_store import ObjectStore, default_capacity, remove_stale_dirs, shm_dir, spill_dir
from runtime.ready_queue import ReadyQueue
from runtime.recovery import FORWARDED_CHECK_S, Recovery
from runtime.reporter import Reporter, demand
from runtime.resources import fits, subtract
from runtime.scheduler import (HERE, MAX_HOPS, NOWHERE, NodeResources, Task, place, return_ids,
                               scheduling_class)
from runtime.serialization import dumps_task_error, error_class_name, error_traceback
from runtime.session import TOKEN_ENV, logs_dir, runtime_dir
from runtime.task_events import TaskEvents
from runtime.worker_pool import WorkerPool

log = logging.getLogger("node_agent")

CHUNK_BYTES = 1 << 20
MAX_RPC_THREADS = 2048
MAX_PENDING_ACTOR_CHECKS = 32  # queued actor creations checked for a kill() per heartbeat
LOCALITY_BYTES = 1 << 20  # a task waiting for an argument this large may go where it is


class NodeAgent(pb_grpc.NodeAgentServicer):
    def __init__(self, node_id: str, ip: str, node_type: str, is_head: bool, resources: dict,
                 gcs_address: str, token: str, object_store_memory: int = 0):
        self.node_id = node_id
        self.ip = ip
        self.node_type = node_type
        self.is_head = is_head
        gpu_count = int(resources.get("GPU", 0))
        self.resources = NodeResources(dict(resources),
                                       gpus=GpuSlots(visible_gpu_ids(gpu_count)) if gpu_count else None)
        self.address = ""  # host:port, known once the server is bound
        self.instance_id = uuid.uuid4().hex  # tells the GCS this process from a predecessor's
        self._token = token
        self._lock = threading.RLock()
        self._ready = ReadyQueue(scheduling_class)
        self._waiting: dict[str, Task] = {}  # task id -> task whose dependencies are missing
        self._dep_waiters: dict[str, list[str]] = {}  # object id -> waiting task ids
        self._running: dict[str, Task] = {}
        self._expected: set[str] = set()  # return ids of work accepted here: never looked up
        self._awaited: set[str] = set()  # expected ids a get/wait here skipped looking up
        self._view: dict[str, pb.NodeInfo] = {}  # other nodes, from the last heartbeat
        self._cancelled: set[str] = set()  # running tasks cancel() was called on
        self._get_wants: dict[str, int] = {}  # object id -> gets/waits here waiting for it
        self._pulled_for_gets: set[str] = set()  # results of forwarded work a get here awaits
        self._started = 0  # tasks placed so far (the reporter sees activity between beats)
        self._next_forward_check = 0.0  # when forwarded tasks are next checked for results
        self._stopping = threading.Event()
        self._gcs = pb_grpc.GcsStub(rpc.make_channel(gcs_address, token))
        self.task_events = TaskEvents(node_id, self._gcs)
        self._io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="agent-io")
        self.store = ObjectStore(self._object_added, shm_dir(os.getpid()),
                                 spill_dir(runtime_dir(), os.getpid()),
                                 object_store_memory or default_capacity(), self._objects_in_use)
        self.objects = ObjectManager(node_id, self.store, self._gcs, token, self._io,
                                     go_to_data=self._go_to_data, lost=self._object_lost,
                                     rebuilding=self._rebuilding)
        self.recovery = Recovery(self._gcs, self.store, self._requeue, self._resubmit)
        self.reporter = Reporter(node_id, self._gcs, self._snapshot, self._heard, self._reregister,
                                 self._stopping)
        worker_env = dict(os.environ, CLUSTER_GCS_ADDRESS=gcs_address, CLUSTER_NODE_ID=node_id,
                          CLUSTER_NODE_IP=ip, CLUSTER_NODE_TYPE=node_type,
                          CLUSTER_OBJECT_STORE_DIR=str(self.store.directory), **{TOKEN_ENV: token})
        self._worker_env = worker_env
        self.pool = WorkerPool(worker_env, on_result=self._task_finished, on_item=self._store_object,
                               on_death=self._worker_died)
        self.actor_host = ActorHost(self._lock, self.resources, self.pool, self.store, self._gcs,
                                    lambda: (self.node_id, self.address), self._message,
                                    self.task_events, self._fail, self._schedule, self._stopping)

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0):
        # Each task blocked in get/wait holds one server thread for as long as it waits (a tree
        # of tasks blocks many at once), so the pool is large; its threads start only when used.
        server = rpc.make_server(self._token, max_workers=MAX_RPC_THREADS)
        pb_grpc.add_NodeAgentServicer_to_server(self, server)
        bound = server.add_insecure_port(f"{self.ip}:{port}")
        if bound == 0:
            raise OSError(f"node agent cannot listen on {self.ip}:{port}")
        server.start()
        self.address = f"{self.ip}:{bound}"
        self._worker_env["CLUSTER_AGENT_ADDRESS"] = self.address
        self._register()
        threading.Thread(target=self.reporter.loop, daemon=True, name="heartbeat").start()
        for loop in (self.objects.location_loop, self.objects.pull_loop, self.task_events.send_loop):
            threading.Thread(target=loop, args=(self._stopping,), daemon=True,
                             name=loop.__name__).start()
        return server

    def stop(self) -> None:
        self._stopping.set()
        self.reporter.report_now()
        self.pool.shutdown()
        self.store.close()
        try:
            self._gcs.UnregisterNode(pb.NodeIdRequest(node_id=self.node_id), timeout=0.5)
        except Exception:  # the GCS may be gone (not worth waiting for: it expires silent nodes)
            pass

    def _register(self) -> None:
        self._gcs.RegisterNode(pb.NodeInfo(
            node_id=self.node_id, address=self.address, ip=self.ip, node_type=self.node_type,
            is_head=self.is_head, total=self.resources.total, instance_id=self.instance_id),
            timeout=10, wait_for_ready=True)  # the head's GCS may still be starting: it is
        # launched alongside this agent

    def _reregister(self) -> None:
        """The GCS restarted (or had declared this node dead): tell it again what is here."""
        self._register()
        self.objects.republish(self.store.listing(0))

    # ------------------------------------------------------------------ gRPC service
    def SubmitTasks(self, request, context):
        failed, actors = [], set()
        with self._lock:
            for spec in request.tasks:
                if spec.kind == pb.TaskSpec.ACTOR_METHOD:
                    missing = {d for d in spec.dependencies if not self.store.contains(d)}
                    try:
                        actors.add(self.actor_host.queue_call(spec, missing))
                    except ActorDiedError as error:
                        failed.append((spec, error))
                        continue
                    self.objects.want(missing)
                    self._expected.update(return_ids(spec))
                    self.task_events.note(spec, _pending_state(missing))
                else:
                    self._accept(spec)
        for spec, error in failed:
            self._fail(spec, error)
        for actor in actors:
            self.actor_host.pump(actor)
        self._schedule()
        return pb.Empty()

    def GetObjects(self, request, context):
        with self._fetching_for_get(self._to_look_up(request.object_ids)), \
                self._lending_cpus(request.blocked_task_id, request.object_ids):
            found = self.store.wait(request.object_ids, request.timeout,
                                    should_stop=lambda: not context.is_active())
        return pb.GetObjectsReply(objects=[self._object_data(i, request.map_files) for i in found],
                                  timed_out=len(found) < len(set(request.object_ids)))

    def _object_data(self, object_id: str, map_files: bool) -> pb.ObjectData:
        """An object for a get: its bytes, or for a caller on this node a large object's file."""
        if map_files:
            found = self.store.read(object_id)
            if isinstance(found, str):
                return pb.ObjectData(object_id=object_id, path=found)
            return pb.ObjectData(object_id=object_id, data=found)
        _, source = self.store.open(object_id)
        with source:
            return pb.ObjectData(object_id=object_id, data=source.read())

    def WaitObjects(self, request, context):
        ids = list(request.object_ids)
        with self._fetching_for_get(self._to_look_up(ids)), \
                self._lending_cpus(request.blocked_task_id, ids):
            ready = self.store.wait_some(ids, request.num_returns, request.timeout,
                                         should_stop=lambda: not context.is_active())
        return pb.WaitObjectsReply(ready=ready)

    @contextlib.contextmanager
    def _fetching_for_get(self, object_ids: list):
        """Pull these objects here while a get/wait on this node waits for them (so scheduling by
        locality never leaves them where they are)."""
        with self._lock:
            for object_id in object_ids:
                self._get_wants[object_id] = self._get_wants.get(object_id, 0) + 1
        self.objects.want(object_ids)
        try:
            yield
        finally:
            with self._lock:
                for object_id in object_ids:
                    self._get_wants[object_id] -= 1
                    if not self._get_wants[object_id]:
                        del self._get_wants[object_id]

    @contextlib.contextmanager
    def _lending_cpus(self, task_id: str, object_ids):
        """A task running here blocks in get/wait: its CPUs serve other work until it returns
        (not when what it waits for is here already)."""
        with self._lock:
            task = self._running.get(task_id) if task_id else None
            if task is not None and all(self.store.contains(i) for i in object_ids):
                task = None
            freed = task is not None and self.resources.lend(task)
        if freed:
            self._schedule()
        try:
            yield
        finally:
            if task is not None:
                with self._lock:
                    self.resources.take_back(task)

    def _to_look_up(self, object_ids) -> list:
        """The ids a get/wait must look up in the GCS: not here, and not the result of work this
        node has accepted (those are remembered, in case that work is forwarded after all)."""
        with self._lock:
            missing = [i for i in object_ids if not self.store.contains(i)]
            local = [i for i in missing if i in self._expected]
            self._awaited.update(local)
            return [i for i in missing if i not in self._expected]

    def KillActor(self, request, context):
        self.actor_host.kill(request.actor_id, request.no_restart)
        return pb.Empty()

    def PutObject(self, request, context):
        """An object from a process: its bytes, or (size set) the file it wrote into the store."""
        try:
            if request.size and not request.data:
                self.store.seal(request.object_id, request.size)
            else:
                self.store.put(request.object_id, request.data)
        except ObjectStoreFullError as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.Empty()

    def FetchObject(self, request, context):
        found = self.store.open(request.object_id)
        if found is None:
            yield pb.ObjectChunk(found=False)
            return
        size, source = found
        with source:
            for data in iter(lambda: source.read(CHUNK_BYTES), b""):
                yield pb.ObjectChunk(data=data, found=True, size=size)

    def FreeObjects(self, request, context):
        """Their owner holds no reference any more: drop them here, and (broadcast) everywhere."""
        self.store.free(request.object_ids)
        if request.broadcast:
            with self._lock:
                addresses = [n.address for n in self._view.values()]
            forward = pb.FreeObjectsRequest(object_ids=request.object_ids)
            for address in addresses:  # best effort: a node that misses it frees at its stop
                self.objects.agent(address).FreeObjects.future(forward, timeout=10)
        return pb.Empty()

    def GetStoreInfo(self, request, context):
        return pb.StoreInfo(directory=str(self.store.directory), capacity=self.store.capacity)

    def _objects_in_use(self) -> set:
        """Objects tasks running here read (their workers map the files): never spilled."""
        with self._lock:
            specs = [t.spec for t in self._running.values()]
            specs += self.actor_host.specs_running()
        return {d for spec in specs for d in spec.dependencies}

    # ------------------------------------------------------------------ scheduling
    def _accept(self, spec: pb.TaskSpec) -> None:
        self._expected.update(return_ids(spec))
        self.recovery.accepted(spec)
        task = Task(spec, dict(spec.resources), set())
        task.missing = {d for d in spec.dependencies if not self.store.contains(d)}
        self.task_events.note(spec, _pending_state(task.missing))
        if not task.missing:
            self._ready.append(task)
            return
        self._waiting[spec.task_id] = task
        for object_id in task.missing:
            self._dep_waiters.setdefault(object_id, []).append(spec.task_id)
        self.objects.want(task.missing)

    def _object_added(self, object_id: str) -> None:
        self.objects.added(object_id)
        with self._lock:
            self.recovery.made(object_id)
            self._pulled_for_gets.discard(object_id)
            for task_id in self._dep_waiters.pop(object_id, ()):
                task = self._waiting.get(task_id)
                if task is None:
                    continue
                task.missing.discard(object_id)
                if not task.missing:
                    del self._waiting[task_id]
                    self._ready.append(task)
            blocked = self.actor_host.waiting_for_arguments()
        for actor in blocked:
            self.actor_host.pump(actor)
        self._schedule()

    def _schedule(self) -> None:
        """Place every ready task: here if it fits, else on a node with room, else keep it queued."""
        to_run, to_spill, unschedulable = [], [], []
        with self._lock:
            for cls in self._ready.classes():  # the first of a class that finds no room stops it
                while (task := self._ready.head(cls)) is not None:
                    target = place(task, self.resources, self._view, self.node_id)
                    if target is None:
                        break
                    self._ready.pop(cls)
                    self._started += 1
                    if target is NOWHERE:
                        unschedulable.append(task)
                        continue
                    if target is not HERE:
                        subtract(target.available, task.need)
                        to_spill.append((target, task))
                        continue
                    if task.spec.kind == pb.TaskSpec.ACTOR_CREATION:
                        self.actor_host.host(task)
                    else:
                        task.gpu_ids = self.resources.claim(task.need)
                        self._running[task.spec.task_id] = task
                    to_run.append(task)
        for task in to_run:
            self._io.submit(self._run, task)
        if to_spill:
            # The forwarded work leaves this node's demand now, before the target reports it as
            # used: otherwise the GCS would count it twice for a heartbeat, as queued here and as
            # running there, and the autoscaler would launch a node for work that already has one.
            self.reporter.report_now()
        for target, task in to_spill:
            self._io.submit(self._spill, target, task)
        for task in unschedulable:
            self._io.submit(self._unschedulable, task)

    def _unschedulable(self, task: Task) -> None:
        """Work tied to a node that is not alive (hard NodeAffinitySchedulingStrategy) fails."""
        why = f"it must run on node {task.spec.node_affinity}, which is not alive"
        if task.spec.kind == pb.TaskSpec.ACTOR_CREATION:
            self._gcs.UpdateActor(pb.ActorInfo(actor_id=task.spec.actor_id, state="DEAD",
                                               death_cause=why), timeout=10)
        self._fail(task.spec, TaskUnschedulableError(f"task {task.spec.name} cannot be scheduled: "
                                                     f"{why}"))

    # ------------------------------------------------------------------ placement-group bundles
    def ReserveBundles(self, request, context):
        """Set aside a placement group's bundles here: their plain resources become resources
        named after the group, which only work scheduled into it asks for."""
        bundles = [dict(b.resources) for b in request.bundles]
        with self._lock:
            if not self.resources.reserve_bundles(request.pg_id, list(request.indexes), bundles):
                return pb.ReservationReply(ok=False)
        self.reporter.report_now()
        self._schedule()
        return pb.ReservationReply(ok=True)

    def ReturnBundles(self, request, context):
        """The group was removed (or is placed again): its resources here go back to the node,
        and the actors living in its bundles are killed, as in Ray."""
        with self._lock:
            offered = self.resources.return_bundles(request.pg_id, list(request.indexes))
            doomed = self.actor_host.doom_holders_of(offered)
        for worker in doomed:
            worker.process.kill()
        self.reporter.report_now()
        self._schedule()
        return pb.Empty()

    def ListObjects(self, request, context):
        return pb.ObjectList(objects=[
            pb.ObjectInfo(object_id=object_id, size=size, where=where, node_id=self.node_id)
            for object_id, size, where in self.store.listing(request.limit)
            if not request.state or where == request.state])

    # ------------------------------------------------------------------ cancelling
    def CancelTask(self, request, context):
        """Drop the task if it is queued here, or interrupt (force: kill) the worker running it."""
        task_id = request.task_id
        dropped, stopped = self._cancel(lambda t: t.spec.task_id == task_id, request.force,
                                        "it was cancelled")
        return pb.CancelReply(found=bool(dropped or stopped))

    def CancelJob(self, request, context):
        """A driver exited: its queued work here is dropped and its running tasks are killed, as
        in Ray (its actors were killed by the driver itself; detached work has no job)."""
        job = request.job_id
        if job:
            dropped, stopped = self._cancel(lambda t: t.spec.job_id == job, True, "its driver exited")
            if dropped or stopped:
                log.info("driver exited: dropped %d queued and stopped %d running task(s) of its "
                         "job", dropped, stopped)
        return pb.Empty()

    def _cancel(self, pick, force: bool, why: str) -> tuple[int, int]:
        """Cancel the tasks `pick` chooses: queued ones (ready, waiting for arguments, or in an
        actor's queue) are dropped, running ones are interrupted with SIGINT (KeyboardInterrupt
        in their code) or, with `force`, killed. Each caller gets a TaskCancelledError, and a
        cancelled task is not retried. Returns (dropped, stopped)."""
        with self._lock:
            dropped = self._ready.remove_if(pick)
            for task_id in [t for t, task in self._waiting.items() if pick(task)]:
                dropped.append(self._waiting.pop(task_id))
            dropped += self.actor_host.drop_queued(pick)
            running = [t for t, task in self._running.items() if pick(task)]
            self._cancelled.update(running)
        for task in dropped:
            self._fail(task.spec, TaskCancelledError(task.spec.name, why))
        for task_id in running:
            worker = self.pool.running(task_id)
            if worker is not None:
                worker.process.kill() if force else worker.process.send_signal(signal.SIGINT)
        return len(dropped), len(running)

    def _message(self, spec: pb.TaskSpec, gpu_ids: Optional[list]) -> bytes:
        """What a worker gets: the spec, its dependencies (small: their bytes; large: the file the
        worker maps), and the GPU devices it may see (None: leave CUDA_VISIBLE_DEVICES as it is, on
        a node without GPUs)."""
        dependencies = {d: self.store.read(d) for d in spec.dependencies}
        return pickle.dumps((spec.SerializeToString(), dependencies, gpu_ids), protocol=5)

    def _run(self, task: Task) -> None:
        spec = task.spec
        if spec.kind == pb.TaskSpec.ACTOR_CREATION:
            self.actor_host.start(self.actor_host.actors[spec.actor_id])
            return
        worker = self.pool.dispatch(spec.task_id, self._message(spec, task.gpu_ids))
        self.task_events.note(spec, "RUNNING", worker.pid)

    # ------------------------------------------------------------------ actors
    def _drop_killed_pending_actors(self) -> None:
        """Actor creations still queued here (no node fits them) whose actor was killed meanwhile
        are dropped, so they stop counting as demand."""
        with self._lock:
            pending = [t for cls in self._ready.classes() if cls[0] == pb.TaskSpec.ACTOR_CREATION
                       for t in self._ready.tasks(cls)]
        if len(pending) > MAX_PENDING_ACTOR_CHECKS:  # bound the heartbeat's cost; all get checked
            pending = random.sample(pending, MAX_PENDING_ACTOR_CHECKS)
        dead = set()
        for task in pending:
            try:
                reply = self._gcs.GetActor(pb.ActorRequest(actor_id=task.spec.actor_id), timeout=5)
            except Exception:
                return
            if reply.found and reply.info.state == "DEAD":
                dead.add(task.spec.actor_id)
        if dead:
            with self._lock:
                self._ready.remove_if(lambda t: t.spec.kind == pb.TaskSpec.ACTOR_CREATION
                                      and t.spec.actor_id in dead)

    def _spill(self, target: pb.NodeInfo, task: Task) -> None:
        with self._lock:
            ids = set(return_ids(task.spec))
            self._expected -= ids
            awaited = ids & self._awaited  # a get here waits for them: pull them once made
            self._awaited -= awaited
            self._pulled_for_gets |= awaited
        self.objects.want(awaited)
        spec = pb.TaskSpec()
        spec.CopyFrom(task.spec)
        spec.hops += 1
        try:
            self.objects.agent(target.address).SubmitTasks(pb.SubmitTasksRequest(tasks=[spec]), timeout=10)
        except Exception as exc:  # the node went away: keep the task here
            log.warning("forwarding task %s to %s failed: %s", spec.name, target.address, exc)
            with self._lock:
                self._expected.update(return_ids(task.spec))
                self._ready.appendleft(task)
            return
        self.recovery.forwarded(task, target.node_id)  # run it again if that node dies first

    # ------------------------------------------------------------------ node failures
    def _requeue(self, tasks: list) -> None:
        """Recovery: run these again here, first in line (their forward target died)."""
        with self._lock:
            for task in tasks:
                self._expected.update(return_ids(task.spec))
            self._ready.extendleft(reversed(tasks))
        self._schedule()

    def _resubmit(self, spec: pb.TaskSpec) -> None:
        """Recovery: run a lost object's task again, as if it were submitted again."""
        with self._lock:
            self._accept(spec)
        self._schedule()

    def _rebuilding(self) -> set:
        return self.recovery.rebuilding()

    def _object_lost(self, object_id: str) -> None:
        self.recovery.object_lost(object_id)

    def _fail(self, spec: pb.TaskSpec, error) -> None:
        """End a task that did not run to completion: `error` is its result."""
        self.task_events.note(spec, "FAILED", error_type=type(error).__name__)
        self._store_results(spec, [dumps_task_error(error)] * len(return_ids(spec)))

    def _store_results(self, spec: pb.TaskSpec, results: list) -> None:
        for object_id, data in zip(return_ids(spec), results):
            self._store_object(object_id, data, spec.name)
        with self._lock:
            self._expected.difference_update(return_ids(spec))
            self._awaited.difference_update(return_ids(spec))

    def _store_object(self, object_id: str, data, task_name: str = "") -> None:
        """A task's result or a generator's item: bytes, or the size of the file the worker
        wrote into the store; one that finds no room in shared memory is kept on disk."""
        try:
            if isinstance(data, int):
                self.store.seal(object_id, data, keep_on_disk=True)
            else:
                self.store.put(object_id, data, keep_on_disk=True)
        except (OSError, ValueError) as exc:  # its caller gets the error, the agent goes on
            error = TaskFailedError(task_name or object_id, f"its result could not be stored: {exc}")
            self.store.put(object_id, dumps_task_error(error))

    def _task_finished(self, task_id: str, results: list) -> None:
        with self._lock:
            actor, task = self.actor_host.finished(task_id)
            if actor is None:
                task = self._running.pop(task_id, None)
                if task is not None:
                    self.resources.release_task(task)
            if task_id in self._cancelled:
                self._cancelled.discard(task_id)
                results = [dumps_task_error(TaskCancelledError(task.spec.name))] * len(results)
        if task is not None:
            state, error_type = _finished_state(results)
            self.task_events.note(task.spec, state, error_type=error_type)
            self._store_results(task.spec, results)
            if error_type and task.spec.kind == pb.TaskSpec.ACTOR_CREATION:
                self.actor_host.end(actor, "it raised in its constructor:\n"  # never restarted
                                    + error_traceback(results[0]))
        if actor is None:
            self._schedule()

    def _worker_died(self, task_id: str, pid: int, returncode) -> None:
        """Retry the task here within its max_retries, else fail it. A worker killed because this
        node is stopping leaves no result: the node that forwarded the task runs it again when
        this one is gone (runtime.recovery), as Ray retries a task whose node died."""
        with self._lock:
            task = self._running.get(task_id)
            if task is None or self._stopping.is_set():
                return
            spec = task.spec
            retry = (task_id not in self._cancelled
                     and (spec.max_retries < 0 or spec.attempt < spec.max_retries))
            if retry:
                del self._running[task_id]
                self.resources.release_task(task)
                spec.attempt += 1
                log.info("retrying task %s (attempt %d): its worker (pid %d) exited with code %s",
                         spec.name, spec.attempt, pid, returncode)
                self._ready.appendleft(task)
        if retry:
            self._schedule()
            return
        detail = f"the worker process (pid {pid}) running it exited with code {returncode}"
        if spec.attempt:
            detail += f" (after {spec.attempt} retries)"
        error = dumps_task_error(WorkerCrashedError(spec.name, detail))
        self._task_finished(task_id, [error] * len(return_ids(spec)))

    # ------------------------------------------------------------------ heartbeats
    def _snapshot(self) -> tuple:
        """For the reporter: (free resources, busy now, tasks placed so far, demand)."""
        with self._lock:
            busy = bool(self._running or self._ready or self._waiting or self.resources.bundles
                        or self.actor_host.any_alive())
            return (dict(self.resources.available), busy, self._started,
                    demand(self._ready.counts()))

    def _heard(self, reply: pb.HeartbeatReply) -> None:
        """The GCS answered a heartbeat: the other nodes' free resources, and who died."""
        self._drop_killed_pending_actors()
        with self._lock:
            self._view = {n.node_id: n for n in reply.nodes if n.node_id != self.node_id}
        for node_id in self.recovery.new_deaths(reply.dead_nodes):
            self._io.submit(self.recovery.node_died, node_id)
        if self.recovery.has_forwarded() and time.monotonic() >= self._next_forward_check:
            self._next_forward_check = time.monotonic() + FORWARDED_CHECK_S
            self._io.submit(self.recovery.forget_finished_forwards)
        self._schedule()

    def _go_to_data(self, location: pb.ObjectLocation) -> bool:
        """Scheduling by locality: tasks here waiting for this large object that cannot run here
        now, but fit the node that holds it, are forwarded there instead of pulling the object.
        True when no task here waits for the object any more (so it is not fetched)."""
        if location.size < LOCALITY_BYTES:
            return False
        with self._lock:
            holder = self._view.get(location.node_id)
            if holder is None:
                return False
            room = dict(holder.available)
            moving = []
            for task_id in self._dep_waiters.get(location.object_id, ()):
                task = self._waiting.get(task_id)
                if task is None or task.spec.kind != pb.TaskSpec.TASK or \
                        task.spec.hops >= MAX_HOPS or fits(task.need, self.resources.available) or \
                        not fits(task.need, room):
                    continue
                subtract(room, task.need)
                moving.append(task)
            for task in moving:
                del self._waiting[task.spec.task_id]
            waiters = self._dep_waiters.get(location.object_id, [])
            waiters[:] = [t for t in waiters if t in self._waiting]
            still_wanted = bool(waiters) or location.object_id in self._get_wants or \
                location.object_id in self._pulled_for_gets
            if not still_wanted:
                self.objects.unwant(location.object_id)
        for task in moving:
            log.info("forwarding %s to %s, which holds its %d-byte argument", task.spec.name,
                     location.node_id, location.size)
            self._io.submit(self._spill, holder, task)
        return not still_wanted


def _pending_state(missing: set) -> str:
    return "PENDING_ARGS_AVAIL" if missing else "PENDING_NODE_ASSIGNMENT"


def _finished_state(results: list) -> tuple:
    """("FINISHED", "") or ("FAILED", the error's class name) from a task's result objects."""
    error_type = error_class_name(results[0]) if results else ""
    return ("FAILED", error_type) if error_type else ("FINISHED", "")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run this node's agent.")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--ip", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gcs-address", required=True)
    parser.add_argument("--node-type", default="")
    parser.add_argument("--head", action="store_true")
    parser.add_argument("--resources", required=True, help="JSON object of resource -> amount")
    parser.add_argument("--object-store-memory", type=int, default=0,
                        help="bytes of shared memory for large objects (default: detected)")
    args = parser.parse_args()
    from runtime.session import read_token

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logs_dir().mkdir(parents=True, exist_ok=True)
    remove_stale_dirs(runtime_dir())
    agent = NodeAgent(args.node_id, args.ip, args.node_type, args.head, json.loads(args.resources),
                      args.gcs_address, read_token(), args.object_store_memory)
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

