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


class CallSender:
    """Delivers one process's calls on one actor, in submission order, batched, to the node agent
    hosting the actor (looked up in the GCS and cached). With `fixed_address`, the process's task
    submissions to its own node agent."""

    def __init__(self, client, actor_id: str, label: str, fixed_address: str = ""):
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
