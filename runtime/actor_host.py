"""The actors a node agent hosts: each has a dedicated worker, and its calls run in order.

An actor comes to live here when the scheduler places its creation task on this node. Its calls
are queued in submission order and sent to its worker up to the first one whose arguments are not
here yet; results come back through the agent's worker pool. When the worker exits, the actor is
restarted (max_restarts) or marked dead, and the GCS is told. The calls it had are failed, except
across a restart those with retries left (max_task_retries), which run again first, in order. A
worker that exits with code 0 ended the actor on purpose (exit_actor(), sys.exit()): no restart.

Lock discipline: `lock` is the agent's lock; it guards the two maps below and each actor's queue,
inflight calls and worker. An actor's `send_lock` keeps its sends in order and is always taken
before `lock`, never while holding it. Nothing here calls the GCS or a worker while holding `lock`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable, Optional

from runtime.exceptions import ActorDiedError
from runtime.generated import runtime_pb2 as pb
from runtime.scheduler import NodeResources, Task

log = logging.getLogger("node_agent")


class Actor:
    """An actor hosted on this node: its dedicated worker, and its calls in submission order."""

    def __init__(self, creation: pb.TaskSpec, hold: dict):
        self.creation = creation
        self.actor_id = creation.actor_id
        self.label = creation.name
        self.hold = hold
        self.gpu_ids: Optional[list] = None  # the devices it holds while alive
        self.worker = None
        self.queue: deque[Task] = deque()  # accepted, not yet sent to the worker
        self.inflight: dict[str, Task] = {}  # sent, no result yet
        self.send_lock = threading.Lock()  # held while taking calls off the queue and sending them
        self.num_restarts = creation.attempt  # restarted here after its node died: counted
        self.restarts_left = creation.max_restarts - creation.attempt \
            if creation.max_restarts >= 0 else -1
        self.killed = False
        self.end_cause = ""  # why it was ended on purpose by the host, if it was
        self.dead = ""  # the death cause once dead


class ActorHost:
    def __init__(self, lock: threading.RLock, resources: NodeResources, pool, store, gcs,
                 where: Callable[[], tuple], message: Callable, task_events, fail: Callable,
                 reschedule: Callable[[], None], stopping: threading.Event):
        self._lock = lock
        self._resources = resources
        self._pool = pool
        self._store = store
        self._gcs = gcs
        self._where = where  # () -> (node id, agent address), for the GCS's actor table
        self._message = message  # (spec, gpu ids) -> what a worker gets
        self._events = task_events
        self._fail = fail  # (spec, error): the call ends with that error as its result
        self._reschedule = reschedule  # resources came free: the agent places queued work
        self._stopping = stopping
        self.actors: dict[str, Actor] = {}
        self.calls: dict[str, Actor] = {}  # task id of a sent call (or creation) -> its actor

    # ---------------------------------------------------------------- under the agent's lock
    def host(self, creation: Task) -> Actor:
        """The scheduler placed this creation here: the actor takes what it holds for its life."""
        actor = Actor(creation.spec, dict(creation.spec.hold_resources))
        actor.gpu_ids = self._resources.claim(actor.hold)
        self.actors[actor.actor_id] = actor
        return actor

    def queue_call(self, spec: pb.TaskSpec, missing: set) -> Actor:
        """Queue a method call; raises ActorDiedError when the actor is dead or not here."""
        actor = self.actors.get(spec.actor_id)
        if actor is None or actor.dead:
            raise ActorDiedError(actor.label if actor else spec.actor_id,
                                 actor.dead if actor else "it is not on this node")
        actor.queue.append(Task(spec, {}, missing))
        return actor

    def drop_queued(self, pick: Callable[[Task], bool]) -> list[Task]:
        """Take the queued (not yet sent) calls `pick` chooses off their queues."""
        dropped = []
        for actor in self.actors.values():
            calls = [t for t in actor.queue if pick(t)]
            for task in calls:
                actor.queue.remove(task)
            dropped += calls
        return dropped

    def finished(self, task_id: str) -> tuple[Optional[Actor], Optional[Task]]:
        """The call (or creation) with this id returned: (its actor, the call), or (None, None)
        when it is no actor's."""
        actor = self.calls.pop(task_id, None)
        if actor is None:
            return None, None
        task = actor.inflight.pop(task_id, None)
        if task is None and task_id == actor.creation.task_id:
            task = Task(actor.creation, {}, set())
        return actor, task

    def waiting_for_arguments(self) -> list[Actor]:
        return [a for a in self.actors.values() if a.queue and a.queue[0].missing]

    def specs_running(self) -> list[pb.TaskSpec]:
        return [t.spec for a in self.actors.values() for t in a.inflight.values()] + [
            a.creation for a in self.calls.values()]

    def any_alive(self) -> bool:
        return any(not a.dead for a in self.actors.values())

    def doom_holders_of(self, resources) -> list:
        """Actors holding any of these resources are killed for good (their placement group is
        gone); returns the workers to kill."""
        doomed = []
        for actor in self.actors.values():
            if any(k in resources for k in actor.hold):
                actor.killed = True
                if actor.worker is not None:
                    doomed.append(actor.worker)
        return doomed

    # ---------------------------------------------------------------- taking the lock themselves
    def kill(self, actor_id: str, no_restart: bool) -> None:
        with self._lock:
            actor = self.actors.get(actor_id)
            if actor is None or actor.dead:
                return
            actor.killed = actor.killed or no_restart
            worker = actor.worker
        if worker is not None:
            worker.process.kill()

    def end(self, actor: Actor, cause: str) -> None:
        """End the actor for good (its constructor raised): no restart, `cause` says why."""
        with self._lock:
            actor.killed = True
            actor.end_cause = cause
            worker = actor.worker
        if worker is not None:
            worker.process.kill()

    def start(self, actor: Actor) -> None:
        """Give the actor a fresh dedicated worker, send it the creation call, then its queue."""
        with actor.send_lock:
            worker = self._pool.dedicated(on_exit=lambda w, a=actor: self._worker_exited(a, w))
            with self._lock:
                actor.worker = worker
                self.calls[actor.creation.task_id] = actor
                actor.creation.attempt = actor.num_restarts  # (was_current_actor_reconstructed)
            worker.send(self._message(actor.creation, actor.gpu_ids))
        self._events.note(actor.creation, "RUNNING", worker.pid)
        record = self._publish(actor, "ALIVE", pid=worker.pid)
        if record is not None and record.state == "DEAD":  # killed while it waited to be placed
            with self._lock:
                actor.killed = True
            worker.process.kill()
            return
        self.pump(actor)

    def pump(self, actor: Actor) -> None:
        """Send the actor's queued calls to its worker, in order, up to the first one whose
        arguments are not here yet."""
        with actor.send_lock:
            with self._lock:
                worker = actor.worker
                if worker is None or actor.dead:
                    return
                batch = []
                while actor.queue:
                    task = actor.queue[0]
                    task.missing = {d for d in task.missing if not self._store.contains(d)}
                    if task.missing:
                        break
                    actor.queue.popleft()
                    actor.inflight[task.spec.task_id] = task
                    self.calls[task.spec.task_id] = actor
                    batch.append(task)
            for task in batch:
                worker.send(self._message(task.spec, actor.gpu_ids))
                self._events.note(task.spec, "RUNNING", worker.pid)

    def _publish(self, actor: Actor, state: str, cause: str = "", pid: int = 0):
        node_id, address = self._where()
        try:
            reply = self._gcs.UpdateActor(pb.ActorInfo(
                actor_id=actor.actor_id, state=state, node_id=node_id, address=address,
                death_cause=cause, num_restarts=actor.num_restarts, pid=pid), timeout=10)
            return reply.info if reply.found else None
        except Exception as exc:
            log.warning("updating actor %s in the GCS failed: %s", actor.label, exc)
            return None

    def _worker_exited(self, actor: Actor, worker) -> None:
        """Restart the actor here or end it. On a node that is stopping, neither: the GCS treats
        the node's end as a node death, and restarts the actor elsewhere if it may."""
        code = worker.process.returncode
        with self._lock:
            if actor.worker is not worker or self._stopping.is_set():
                return
            actor.worker = None
            lost = list(actor.inflight.values())
            actor.inflight.clear()
            for task in lost:
                self.calls.pop(task.spec.task_id, None)
            restart = not actor.killed and code != 0 and actor.restarts_left != 0
            if actor.end_cause:
                cause = actor.end_cause
            elif actor.killed:
                cause = "it was killed (kill() or its driver exited)"
            elif code == 0:
                cause = "it exited on purpose (exit_actor() or sys.exit() in one of its methods)"
            else:
                cause = f"its worker process (pid {worker.pid}) exited with code {code}"
            if restart:
                actor.restarts_left -= 1 if actor.restarts_left > 0 else 0
                actor.num_restarts += 1
                retried = _retried_calls(lost, actor.creation.max_task_retries)
                actor.queue.extendleft(reversed(retried))
                lost = [t for t in lost if t not in retried]
            else:
                actor.dead = cause
                lost += list(actor.queue)
                actor.queue.clear()
                self._resources.release(actor.hold, actor.gpu_ids)
        for task in lost:
            self._fail(task.spec, ActorDiedError(actor.label, cause))
        if restart:
            log.info("restarting actor %s (%s)", actor.label, cause)
            self.start(actor)
        else:
            self._publish(actor, "DEAD", cause)
            self._reschedule()


def _retried_calls(lost: list[Task], max_task_retries: int) -> list[Task]:
    """The calls a restarted actor runs again, in submission order (task ids are not ordered:
    the order they were sent in is kept by `inflight`, an insertion-ordered dict)."""
    retried = [t for t in lost if max_task_retries < 0 or t.spec.attempt < max_task_retries]
    for task in retried:
        task.spec.attempt += 1
    return retried
