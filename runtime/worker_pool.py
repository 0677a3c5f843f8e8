"""The node agent's worker processes: each runs one task at a time, talking over a private socket.

A worker is `python -m runtime.worker FD`; the agent sends it a pickled (TaskSpec, dependency
values) and reads back ("result", task_id, [object bytes, one per return id]), preceded by one
("item", object id, object) per value a generator task yields; "last result" when the worker
exits after it (max_calls), so it is not handed more work. A worker that dies
mid-task is reported through `on_death` so the task can be retried or its caller gets an error
instead of waiting forever. An actor's worker is `dedicated`: it never goes back to the idle pool,
and its death is reported through its own `on_exit`.
"""

from __future__ import annotations

import logging
import pickle
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Callable, Optional

from runtime.session import logs_dir

log = logging.getLogger("worker_pool")


class Worker:
    def __init__(self, process: subprocess.Popen, conn: Connection):
        self.process = process
        self.conn = conn
        self.task_id: Optional[str] = None
        self.send_lock = threading.Lock()
        self.on_exit: Optional[Callable] = None  # set for an actor's dedicated worker

    def send(self, message: bytes) -> None:
        try:
            with self.send_lock:
                self.conn.send_bytes(message)
        except OSError:
            pass  # the reader thread reports the death

    @property
    def pid(self) -> int:
        return self.process.pid


class WorkerPool:
    def __init__(self, env: dict, on_result: Callable, on_item: Callable, on_death: Callable):
        self._env = env
        self._on_result = on_result
        self._on_item = on_item
        self._on_death = on_death
        self._idle: list[Worker] = []
        self._all: set[Worker] = set()
        self._lock = threading.Lock()

    def dispatch(self, task_id: str, message: bytes) -> Worker:
        """Hand a task to an idle worker, starting a new one when none is idle; returns it."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = self._start_worker()
        worker.task_id = task_id
        try:
            with worker.send_lock:
                worker.conn.send_bytes(message)
        except OSError:
            pass  # the reader thread reports the death with this task attached
        return worker

    def dedicated(self, on_exit: Callable) -> Worker:
        """A worker for one actor: never returned to the idle pool; on_exit(worker) when it dies."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
            if worker is not None:
                worker.on_exit = on_exit
        if worker is None:
            worker = self._start_worker(on_exit)
        return worker

    def _start_worker(self, on_exit: Optional[Callable] = None) -> Worker:
        parent_sock, child_sock = socket.socketpair()
        log_path = logs_dir() / "workers.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "runtime.worker", str(child_sock.fileno())],
                pass_fds=[child_sock.fileno()], env=self._env, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT,
            )
        child_sock.close()
        worker = Worker(process, Connection(parent_sock.detach()))
        worker.on_exit = on_exit
        with self._lock:
            self._all.add(worker)
        threading.Thread(target=self._read, args=(worker,), daemon=True).start()
        return worker

    def _read(self, worker: Worker) -> None:
        while True:
            try:
                kind, task_id, data = pickle.loads(worker.conn.recv_bytes())
            except (EOFError, OSError):
                break
            if kind == "item":  # (the id is the item's object id)
                self._on_item(task_id, data)
                continue
            worker.task_id = None
            with self._lock:
                if worker.on_exit is None and kind != "last result":
                    self._idle.append(worker)
            self._on_result(task_id, data)
        worker.process.wait()
        with self._lock:
            self._all.discard(worker)
            if worker in self._idle:
                self._idle.remove(worker)
        if worker.on_exit is not None:
            worker.on_exit(worker)
        elif worker.task_id is not None:
            self._on_death(worker.task_id, worker.pid, worker.process.returncode)

    def shutdown(self) -> None:
        with self._lock:
            workers = list(self._all)
        for worker in workers:
            worker.process.kill()
        for worker in workers:
            worker.process.wait()

    def running(self, task_id: str) -> Optional[Worker]:
        """The worker running that task, if any."""
        with self._lock:
            return next((w for w in self._all if w.task_id == task_id), None)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._all]
