"""Delivery of one process's submissions: calls on one actor (to the agent hosting it) or tasks
(to the process's own agent), in submission order, batched when they pile up, never lost."""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

import grpc

from runtime.exceptions import ActorDiedError, TaskFailedError
from runtime.generated import runtime_pb2 as pb
from runtime.scheduler import return_ids

CHECK_S = 1.0  # calls sent to an actor are checked this often while one has no result


class CallSender:
    """Delivers one process's calls on one actor, in submission order, batched, to the node agent
    hosting the actor (looked up in the GCS and cached). With `fixed_address`, the process's task
    submissions to its own node agent.

    Calls sent to an actor are remembered until their results exist (or no ref here wants them):
    when the actor has moved meanwhile (its node died and the GCS restarted it on another) or
    died, they are sent again while its max_task_retries allows, else fail with ActorDiedError,
    as Ray's caller-side retries do."""

    def __init__(self, client, actor_id: str, label: str, fixed_address: str = ""):
        self._client = client
        self._actor_id = actor_id
        self._label = label
        self._queue: list = []
        self._cond = threading.Condition()
        self._fixed = fixed_address  # tasks: always this node's agent, no lookup
        self._address: Optional[str] = fixed_address or None
        self._busy = False  # a delivery is under way (keeps calls in order)
        self._sent: dict[str, tuple] = {}  # actor calls: task id -> (spec, address), no result seen
        self._next_check = 0.0
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
        future.add_done_callback(lambda f: self._direct_done(spec, f, address))

    def flush(self, timeout: float) -> None:
        """Wait until every queued call has been delivered (or `timeout` passes)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(0.05)

    def _direct_done(self, spec: pb.TaskSpec, future, address: str = "") -> None:
        try:
            failed = future is None or future.exception() is not None
        except Exception:  # cancelled
            failed = True
        with self._cond:
            if failed:  # let the sender thread find the actor again and retry
                self._address = self._fixed or None
                self._queue.insert(0, spec)
            else:
                self._note_sent([spec], address)
            self._busy = False
            self._cond.notify_all()

    def _note_sent(self, specs: list, address: str) -> None:
        """(Lock held.) Remember delivered actor calls until their results are seen."""
        if self._fixed:
            return
        if not self._sent:
            self._next_check = time.monotonic() + CHECK_S
        for spec in specs:
            self._sent[spec.task_id] = (spec, address)

    def _check_due(self) -> bool:
        return bool(self._sent) and time.monotonic() >= self._next_check

    def _loop(self) -> None:
        while True:
            with self._cond:
                while (not self._queue or self._busy) and not self._check_due():
                    self._cond.wait(CHECK_S if self._sent else None)
                batch = None
                if self._queue and not self._busy:
                    batch, self._queue = self._queue, []
                    self._busy = True
                else:
                    self._next_check = time.monotonic() + CHECK_S
            if batch is None:
                try:
                    self._check_sent()
                except Exception as exc:  # the GCS may be restarting: check again later
                    logging.getLogger("runtime").debug("checking actor calls failed: %s", exc)
                continue
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
        return TaskFailedError(spec.name, why) if self._fixed else ActorDiedError(self._label, why)

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
                with self._cond:
                    self._note_sent(batch, self._address)
                return
            except grpc.RpcError:  # the node went away: the GCS will say where it is, or that it died
                self._address = self._fixed or None
                time.sleep(min(0.05 * (attempt + 1), 1.0))
        raise ConnectionError(f"cannot reach the node hosting actor {self._label}")

    def _check_sent(self) -> None:
        with self._cond:
            sent = list(self._sent.items())
        first = {return_ids(spec)[0]: task_id for task_id, (spec, _) in sent}
        wanted = self._client.refs.alive(first)
        done = {first[i] for i in first if i not in wanted}
        done |= {first[i] for i in self._client.existing(sorted(wanted))}
        with self._cond:
            for task_id in done:
                self._sent.pop(task_id, None)
            left = list(self._sent.items())
        if not left:
            return
        info = self._client.gcs.GetActor(pb.ActorRequest(actor_id=self._actor_id), timeout=30).info
        dead = info.state == "DEAD"
        lost = [spec for _, (spec, address) in left if dead or address != info.address]
        if not lost:
            return
        retries = pb.TaskSpec.FromString(info.creation_spec).max_task_retries
        again = [s for s in lost if not dead and (retries < 0 or s.attempt < retries)]
        for spec in again:
            spec.attempt += 1
        with self._cond:
            for spec in lost:
                self._sent.pop(spec.task_id, None)
            if again:
                self._queue[:0] = again
                self._address = None
                self._cond.notify_all()
        cause = info.death_cause if dead else (
            f"its node died while the call ran, and max_task_retries={retries} allows no retry")
        retried = {spec.task_id for spec in again}
        for spec in lost:
            if spec.task_id not in retried:
                self._client.fail(spec, ActorDiedError(self._label, cause))
        if again:
            logging.getLogger("runtime").info(
                "actor %s moved to %s: sending %d call(s) in flight again", self._label,
                info.address or "(restarting)", len(again))

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
