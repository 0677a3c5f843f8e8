"""Starting and stopping this node's runtime processes: GCS (head only), node agent, autoscaler.

They run under the node's supervisor (runtime.supervisor), which starts them and restarts any
that exits. Processes are started without a new session so they stay in the caller's process
group (a `local` node is one process group); they ignore SIGHUP and write to ~/.cluster/logs, so
they outlive the command or SSH session that started them. The agent gets a fixed port, so a
restarted agent is found where its predecessor was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import grpc

from runtime import gcs_store, object_store, rpc, supervisor
from runtime.exceptions import RuntimeClusterError
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc
from runtime.session import (RUNTIME_DIR_ENV, TOKEN_ENV, Session, logs_dir, new_token, read_session,
                             read_token, runtime_dir, session_path, write_session, write_token)

READY_TIMEOUT_S = 30.0


def detect_resources(num_cpus=None, num_gpus=None, resources=None) -> dict:
    """This node's resources: flags first, then $CLUSTER_NODE_RESOURCES (set by the autoscaler
    from the node type), then what the machine has (CPU count, NVIDIA GPUs)."""
    detected = {"CPU": float(os.cpu_count() or 1)}
    gpus = _nvidia_gpus()
    if gpus:
        detected["GPU"] = float(len(gpus))
        detected[f"accelerator_type:{gpus[0]}"] = 1.0
    from_node_type = json.loads(os.environ.get("CLUSTER_NODE_RESOURCES") or "{}")
    if from_node_type:  # a node type without `resources` leaves detection to the node
        detected = {k: float(v) for k, v in from_node_type.items()}
    if num_cpus is not None:
        detected["CPU"] = float(num_cpus)
    if num_gpus is not None:
        detected["GPU"] = float(num_gpus)
    detected.update({k: float(v) for k, v in (resources or {}).items()})
    detected.setdefault("memory", _memory_resource())
    return {k: v for k, v in detected.items() if v > 0}


def _memory_resource() -> float:
    """Bytes of the `memory` resource (what `memory=` options ask for): 70% of the machine's
    RAM, as Ray's default, leaving room for the object store and the system."""
    return float(int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.7))


def _nvidia_gpus() -> list[str]:
    """GPU model names from nvidia-smi, e.g. ["H200"], or [] without NVIDIA GPUs."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [_short_gpu_name(line) for line in out.splitlines() if line.strip()]


def _short_gpu_name(name: str) -> str:
    """"NVIDIA H200" -> "H200", "NVIDIA A10G" -> "A10G", "Tesla T4" -> "T4"."""
    words = [w for w in name.replace("-", " ").split() if w not in ("NVIDIA", "Tesla", "GeForce")]
    return words[0] if words else name.strip()


def node_ip(toward: Optional[str] = None) -> str:
    """The address this node's processes bind to: $CLUSTER_NODE_IP, else the local address that
    routes toward the head (no packet is sent), else 127.0.0.1."""
    if os.environ.get("CLUSTER_NODE_IP"):
        return os.environ["CLUSTER_NODE_IP"]
    if toward:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((toward, 1))
            return s.getsockname()[0]
    return "127.0.0.1"


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _log_tail(name: str, lines: int = 15) -> str:
    try:
        return "\n".join((logs_dir() / f"{name}.log").read_text().splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait_ready(name: str, process: subprocess.Popen, check) -> None:
    """Until check() holds; fails with the log's tail if the supervisor or the child `name` exits
    first (a child failing at start is not left to the supervisor's restarts)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeClusterError(f"the supervisor exited with code {process.returncode}:\n"
                                      f"{_log_tail('supervisor')}")
        code = supervisor.read_status(runtime_dir()).get("children", {}).get(name, {}).get("last_exit")
        if code is not None:
            raise RuntimeClusterError(f"{name} exited with code {code}:\n{_log_tail(name)}")
        try:
            if check():
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.05)
    raise RuntimeClusterError(f"{name} did not become ready in {READY_TIMEOUT_S:.0f}s:\n{_log_tail(name)}")


def _gcs_stub(address: str, token: str):
    return pb_grpc.GcsStub(rpc.make_channel(address, token))


def _check_gcs(address: str, token: str, wait_s: float = 10.0) -> None:
    """Fail with one line when the head's GCS is unreachable or refuses the token."""
    try:
        _gcs_stub(address, token).KvGet(pb.KvRequest(key="ping"), timeout=wait_s, wait_for_ready=True)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise RuntimeClusterError(f"the GCS at {address} refused this node's cluster token") from None
        raise RuntimeClusterError(f"cannot reach the GCS at {address} ({exc.code().name}): "
                                  "is the head running and the address right?") from None


def _agent_argv(gcs_address, ip, port, resources, node_type, node_id, is_head,
                object_store_memory: Optional[int]) -> list:
    return ["runtime.node_agent", "--node-id", node_id, "--ip", ip, "--port", str(port),
            "--gcs-address", gcs_address, "--node-type", node_type,
            "--resources", json.dumps(resources),
            "--object-store-memory", str(object_store_memory or 0)] + (["--head"] if is_head else [])


def _wait_registered(process: subprocess.Popen, gcs_address: str, token: str, node_id: str) -> None:
    gcs = _gcs_stub(gcs_address, token)
    _wait_ready("agent", process, lambda: any(
        n.node_id == node_id for n in gcs.GetClusterState(pb.Empty(), timeout=2).nodes))


def _supervise(children: list, env: dict, ready) -> dict:
    """Start the supervisor of these children and wait for ready(supervisor process); returns the
    pids to record (the supervisor's and its children's), or stops everything and raises."""
    (runtime_dir() / supervisor.STATUS_FILE).unlink(missing_ok=True)  # a killed one's
    process = supervisor.spawn("supervisor", ["runtime.supervisor", "--children",
                                              json.dumps(children)], env)
    try:
        ready(process)
        _wait_ready(children[-1][0], process, lambda: len(supervisor.child_pids(runtime_dir())) ==
                    len(children))  # held ones too
    except BaseException:
        _kill_all(_with_children(runtime_dir(), {"supervisor": process.pid}))
        raise
    return _with_children(runtime_dir(), {"supervisor": process.pid})


def start_head(port: int, resources: dict, node_type: str = "head", ip: Optional[str] = None,
               node_id: Optional[str] = None, autoscaling_config: Optional[str] = None,
               token: Optional[str] = None, object_store_memory: Optional[int] = None,
               gcs_storage: Optional[str] = None) -> Session:
    """Start the head's GCS, agent (and autoscaler) under one supervisor. The GCS's tables live
    in `gcs_storage` (else $CLUSTER_GCS_STORAGE, else SQLite in the runtime dir); tables left
    there by a head that crashed are read back, while `stop_node` clears them."""
    ip = ip or node_ip()
    node_id = node_id or os.environ.get("CLUSTER_NODE_ID") or uuid.uuid4().hex[:12]
    token = token or read_token() or new_token()
    storage = gcs_storage or os.environ.get(gcs_store.STORAGE_ENV) or \
        gcs_store.default_url(runtime_dir())
    gcs_store.open_store(storage)  # a wrong URL or a missing package fails here, in one line
    write_token(token)
    env = dict(os.environ, **{TOKEN_ENV: token})
    gcs_address = f"{ip}:{port}"
    agent_address = f"{ip}:{_free_port(ip)}"
    children = [  # the GCS and the agent start at once (the agent waits for the GCS); the
        # autoscaler once both are up
        ("gcs", ["runtime.gcs", "--ip", ip, "--port", str(port), "--storage", storage], False),
        ("agent", _agent_argv(gcs_address, ip, agent_address.rsplit(":", 1)[1], resources,
                              node_type, node_id, True, object_store_memory), False)]
    if autoscaling_config:
        children.append(("autoscaler", ["autoscaler.monitor", "--config",
                                        os.path.expanduser(autoscaling_config),
                                        "--gcs-address", gcs_address], True))
    stub = _gcs_stub(gcs_address, token)

    def ready(process):
        _wait_ready("gcs", process, lambda: stub.KvGet(pb.KvRequest(key="ping"), timeout=1) is not None)
        _wait_registered(process, gcs_address, token, node_id)
        process.send_signal(signal.SIGUSR1)  # the autoscaler may start

    pids = _supervise(children, env, ready)
    session = Session(gcs_address, agent_address, node_id, ip, True, pids, storage)
    write_session(session)
    return session


def start_worker(gcs_address: str, resources: dict, node_type: str = "", ip: Optional[str] = None,
                 node_id: Optional[str] = None, token: Optional[str] = None,
                 object_store_memory: Optional[int] = None) -> Session:
    ip = ip or node_ip(toward=gcs_address.rsplit(":", 1)[0])
    node_id = node_id or os.environ.get("CLUSTER_NODE_ID") or uuid.uuid4().hex[:12]
    token = token or read_token()
    if not token:
        raise RuntimeClusterError("no cluster token: set $CLUSTER_AUTH_TOKEN or pass --token-file")
    _check_gcs(gcs_address, token)
    write_token(token)
    env = dict(os.environ, **{TOKEN_ENV: token})
    agent_address = f"{ip}:{_free_port(ip)}"
    children = [("agent", _agent_argv(gcs_address, ip, agent_address.rsplit(":", 1)[1], resources,
                                      node_type, node_id, False, object_store_memory), False)]
    pids = _supervise(children, env,
                      lambda process: _wait_registered(process, gcs_address, token, node_id))
    session = Session(gcs_address, agent_address, node_id, ip, False, pids)
    write_session(session)
    return session


def stop_node(grace_s: float = 5.0) -> list[str]:
    """Stop the processes `start_*` started on this node (also those its supervisor restarted
    since, and even when the supervisor itself was killed); a head's GCS tables are cleared.
    Returns the names of the processes."""
    session = read_session()
    if session is None:
        return []
    pids = _with_children(runtime_dir(), session.pids)
    _kill_all(pids, grace_s)
    if session.is_head:  # the cluster is gone: so are its tables
        with contextlib.suppress(RuntimeClusterError):  # a Redis out of reach keeps them
            gcs_store.open_store(session.gcs_storage or gcs_store.default_url(runtime_dir())).clear()
    session_path().unlink(missing_ok=True)
    return sorted(name for name in pids if name != "supervisor")


def _with_children(directory: Path, pids: dict) -> dict:
    """Recorded pids, updated with the children the supervisor runs now."""
    return {**pids, **supervisor.child_pids(directory)}


def _kill_all(pids: dict, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after grace_s. A live supervisor stops its children itself, in
    order; without one, the autoscaler goes first, so it launches nothing while the rest goes
    down."""
    deadline = time.monotonic() + grace_s
    if "supervisor" in pids and _alive(pids["supervisor"]):
        _signal(pids["supervisor"], signal.SIGTERM)
        _wait_gone([pids["supervisor"]], deadline)
    for name in sorted(pids, key=lambda name: name != "autoscaler"):
        _signal(pids[name], signal.SIGTERM)
    _wait_gone(pids.values(), deadline)
    for pid in pids.values():
        _signal(pid, signal.SIGKILL)
    _wait_gone(pids.values(), time.monotonic() + 1.0)
    object_store.remove_dirs(runtime_dir(), pids.values())  # an agent killed leaves its store
    object_store.remove_stale_dirs(runtime_dir())  # and so does one its supervisor restarted


def _wait_gone(pids, deadline: float) -> None:
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)


def _signal(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


@dataclass
class LocalCluster:
    """A single-node cluster a driver started for itself with `init()`; gone at `shutdown()`."""

    gcs_address: str
    agent_address: str
    token: str
    directory: str
    pids: dict = field(default_factory=dict)

    def stop(self) -> None:
        _kill_all(_with_children(Path(self.directory), self.pids), grace_s=2.0)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_local_cluster(num_cpus=None, num_gpus=None, resources=None,
                        object_store_memory=None) -> LocalCluster:
    directory = tempfile.mkdtemp(prefix="cluster-runtime-")
    previous = os.environ.get(RUNTIME_DIR_ENV)
    os.environ[RUNTIME_DIR_ENV] = directory
    try:
        session = start_head(_free_port("127.0.0.1"), detect_resources(num_cpus, num_gpus, resources),
                             ip="127.0.0.1", node_id=uuid.uuid4().hex[:12],
                             object_store_memory=object_store_memory,
                             gcs_storage=gcs_store.default_url(Path(directory)))
    finally:
        if previous is None:
            os.environ.pop(RUNTIME_DIR_ENV)
        else:
            os.environ[RUNTIME_DIR_ENV] = previous
    return LocalCluster(session.gcs_address, session.agent_address, read_token_from(directory),
                        directory, session.pids)


def read_token_from(directory: str) -> str:
    return (Path(directory) / "token").read_text().strip()
