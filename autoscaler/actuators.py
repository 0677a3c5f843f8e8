"""Carrying out the reconciler's actions in the background, each ending in a Result.

Launch, terminate and drain calls run on a few threads of their own, installs (minutes each) on
up to MAX_PARALLEL_SETUPS others, so a long setup never delays a termination. `snapshot` hands
the reconciler, in one consistent cut, the results that arrived and what still runs. An action
never raises out of here: an error becomes a Result with its class (autoscaler.reactions).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping

from autoscaler import lifecycle as L
from autoscaler import reactions
from autoscaler.actions import Drain, Install, Launch, Result, Terminate
from launcher import tags as T
from launcher.errors import LauncherError
from launcher.updater import NodeUpdater, launch_hash, node_env
from runtime.session import logs_dir

MAX_PARALLEL_SETUPS = 16  # nodes set up at once; more wait their turn
CALL_THREADS = 4


@dataclass(frozen=True)
class Snapshot:
    results: tuple[Result, ...]
    busy_nodes: frozenset  # node ids an install, drain or termination runs on
    launches: Mapping[str, Launch]  # launches in flight, by request id


class Actuators:
    def __init__(self, config, provider, gcs, head_ip: str, token: str, installer=None):
        self.config, self.provider, self.gcs = config, provider, gcs
        self.head_ip, self.token, self.installer = head_ip, token, installer
        self._calls = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="cloud-call")
        self._setups = ThreadPoolExecutor(MAX_PARALLEL_SETUPS, thread_name_prefix="setup")
        self._lock = threading.Lock()
        self._results: list[Result] = []
        self._busy: dict[str, int] = {}  # node id -> actions running on it
        self._launches: dict[str, Launch] = {}

    def start(self, action) -> None:
        nodes = () if isinstance(action, Launch) else \
            (action.node_id,) if isinstance(action, Install) else action.node_ids
        with self._lock:
            for node_id in nodes:
                self._busy[node_id] = self._busy.get(node_id, 0) + 1
            if isinstance(action, Launch):
                self._launches[action.request_id] = action
        pool = self._setups if isinstance(action, Install) else self._calls
        pool.submit(self._run, action, nodes)

    def snapshot(self) -> Snapshot:
        with self._lock:
            results, self._results = tuple(self._results), []
            return Snapshot(results, frozenset(self._busy), dict(self._launches))

    def carry_out(self, action) -> Result:
        """Do the action here and now; its Result, never an exception."""
        try:
            return self._carry_out(action)
        except Exception as exc:  # the top of an action: it becomes its Result
            kind = reactions.classify(exc)
            message = str(exc) if isinstance(exc, LauncherError) else \
                f"{type(exc).__name__}: {exc}"
            return Result(action, error_kind=kind, error=message)

    def _run(self, action, nodes: tuple) -> None:
        result = self.carry_out(action)
        with self._lock:
            self._results.append(result)
            self._launches.pop(getattr(action, "request_id", None), None)
            for node_id in nodes:
                self._busy[node_id] -= 1
                if not self._busy[node_id]:
                    del self._busy[node_id]

    def _carry_out(self, action) -> Result:
        from runtime.generated import runtime_pb2 as pb

        if isinstance(action, Launch):
            return Result(action, node_ids=tuple(self._launch(action)))
        if isinstance(action, Terminate):
            self.provider.terminate(list(action.node_ids))
        elif isinstance(action, Drain):
            self.gcs.DrainNodes(pb.DrainRequest(node_ids=list(action.node_ids),
                                                undrain=action.undrain), timeout=10)
        else:
            return Result(action, detail=self._install(action))
        return Result(action)

    def _launch(self, launch: Launch) -> list[str]:
        spec = self.config.node_types[launch.node_type]
        requested = L.transition(L.NodeLifecycle(launch.request_id), L.REQUESTED, launch.reason,
                                 launch.requested_at)
        tags = {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: launch.node_type,
                T.TAG_LAUNCH_HASH: launch_hash(spec.node_config, self.config.auth),
                T.TAG_LAUNCH_REQUEST: launch.request_id, **L.tags_of(requested)}
        node_config = (launch.on_demand and self.provider.on_demand(spec.node_config)) or \
            spec.node_config
        return self.provider.create(launch.node_type, node_config, tags, launch.count)

    def _install(self, install: Install) -> str:
        """Run the node's updater, its output and stages going to the node's own log file;
        returns what ran and how long it took."""
        node_id, node_type = install.node_id, install.node_type
        env = node_env(self.config, node_type, node_id, self.provider.internal_ip(node_id),
                       self.head_ip, self.token)
        log_dir = logs_dir() / "nodes"
        log_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(log_dir / f"{node_id}.log", "a") as node_log:
            def write(text: str) -> None:
                node_log.write(text if text.endswith("\n") else text + "\n")
                node_log.flush()

            updater = NodeUpdater(self.provider, node_id, self.config, T.KIND_WORKER, node_type,
                                  env=env, installer=self.installer, on_output=write,
                                  on_stage=lambda stage: write(f"==> {stage}"))
            try:
                ran = updater.run()
            except LauncherError as exc:
                write(f"==> failed: {exc}")
                raise
        return f"{', '.join(ran) or 'nothing to do'} in {time.monotonic() - started:.1f}s"

    def shutdown(self) -> None:
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._setups.shutdown(wait=False, cancel_futures=True)
