"""Failure recovery on a node agent: work forwarded to a node that died runs again, and objects
whose every copy died are made again from their task (lineage) or become ObjectLostError.

The agent keeps each task it forwarded until the GCS knows its results (checked every
FORWARDED_CHECK_S), so when the target dies first it can run the task again here. It keeps the
specs of the last MAX_LINEAGE tasks submitted on this node (arguments under MAX_LINEAGE_ARGS) to
rebuild their results when they are lost, within the task's max_retries; arguments lost too are
rebuilt the same way, when they are asked for.

Lock discipline: `_lock` guards the maps below and is a leaf: nothing here calls the GCS, the
store or the agent while holding it. The agent calls in with or without its own lock held;
`requeue` and `resubmit` (back into the agent) are called without this lock.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable

from runtime.exceptions import ObjectLostError
from runtime.generated import runtime_pb2 as pb
from runtime.scheduler import Task, return_ids
from runtime.serialization import dumps_task_error

log = logging.getLogger("node_agent")

FORWARDED_CHECK_S = 5.0  # forwarded tasks whose results exist are forgotten this often
MAX_LINEAGE = 10_000  # specs of tasks submitted here kept to rebuild their lost results
MAX_LINEAGE_ARGS = 100 << 10  # a task with larger inline arguments is not kept


class Recovery:
    def __init__(self, gcs, store, requeue: Callable[[list], None],
                 resubmit: Callable[[pb.TaskSpec], None]):
        self._gcs = gcs
        self._store = store
        self._requeue = requeue  # (tasks): run them again here, first in line
        self._resubmit = resubmit  # (spec): accept it as if it were submitted again
        self._lock = threading.Lock()
        self._forwarded: dict[str, tuple] = {}  # task id -> (task, node id) it was forwarded to
        self._dead_nodes: set[str] = set()  # deaths already handled
        self._lineage: OrderedDict[str, pb.TaskSpec] = OrderedDict()  # return id -> its task
        self._reconstructing: set[str] = set()  # lost objects whose task runs again

    def accepted(self, spec: pb.TaskSpec) -> None:
        """A task was accepted here: one submitted here (not forwarded) is kept as lineage."""
        if spec.hops or spec.kind != pb.TaskSpec.TASK or len(spec.args) > MAX_LINEAGE_ARGS:
            return
        with self._lock:
            for object_id in return_ids(spec):
                self._lineage[object_id] = spec
                self._lineage.move_to_end(object_id)
            while len(self._lineage) > MAX_LINEAGE:
                self._lineage.popitem(last=False)

    def forwarded(self, task: Task, node_id: str) -> None:
        with self._lock:
            self._forwarded[task.spec.task_id] = (task, node_id)

    def made(self, object_id: str) -> None:
        with self._lock:
            self._reconstructing.discard(object_id)

    def rebuilding(self) -> set:
        with self._lock:
            return set(self._reconstructing)

    def has_forwarded(self) -> bool:
        return bool(self._forwarded)

    def new_deaths(self, dead_nodes) -> list:
        """The nodes the GCS names dead that were not handled yet."""
        with self._lock:
            died = [n for n in dead_nodes if n not in self._dead_nodes]
            self._dead_nodes.update(died)
            return died

    def _results_known(self, task_ids) -> set:
        """Those of the forwarded tasks whose results exist on a live node (asks the GCS)."""
        with self._lock:
            first = {return_ids(self._forwarded[t][0].spec)[0]: t for t in task_ids
                     if t in self._forwarded}
        if not first:
            return set()
        reply = self._gcs.WaitObjectLocations(
            pb.WaitLocationsRequest(object_ids=list(first), timeout=0), timeout=10)
        return {first[loc.object_id] for loc in reply.locations}

    def forget_finished_forwards(self) -> None:
        with self._lock:
            task_ids = list(self._forwarded)
        done = self._results_known(task_ids)
        with self._lock:
            for task_id in done:
                self._forwarded.pop(task_id, None)

    def node_died(self, node_id: str) -> None:
        """Run again here the work forwarded to a node that died before its results existed."""
        with self._lock:
            lost = [t for t, (_, target) in self._forwarded.items() if target == node_id]
        done = self._results_known(lost)
        rerun = []
        with self._lock:
            for task_id in lost:
                task, _ = self._forwarded.pop(task_id, (None, None))
                if task is not None and task_id not in done:
                    self._reconstructing.update(return_ids(task.spec))  # no second rebuild
                    task.spec.attempt += 1
                    rerun.append(task)
        if rerun:
            log.info("node %s died: running %d task(s) forwarded there again", node_id, len(rerun))
            self._requeue(rerun)

    def object_lost(self, object_id: str) -> None:
        """Every copy of the object died with its nodes: run its task again if it was submitted
        here (lineage), else give its waiters an ObjectLostError."""
        if self._store.contains(object_id):
            return
        with self._lock:
            if object_id in self._reconstructing:
                return
            spec = self._lineage.get(object_id)
            rebuild = spec is not None and (spec.max_retries < 0 or spec.attempt < spec.max_retries)
            if rebuild:
                again = pb.TaskSpec()
                again.CopyFrom(spec)
                again.attempt += 1
                self._reconstructing.update(return_ids(again))
        if rebuild:
            log.info("object %s was lost: running %s again to rebuild it", object_id, spec.name)
            self._resubmit(again)
            return
        why = (f"its task {spec.name} ran out of retries" if spec is not None else
               "the node holding it died, and no task submitted on this node made it")
        self._store.put(object_id, dumps_task_error(ObjectLostError(object_id, why)))
