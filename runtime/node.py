"""Starting and stopping this node's runtime processes: GCS (head only), node agent, autoscaler.

Processes are started without a new session so they stay in the caller's process group (a `local`
node is one process group); they ignore SIGHUP and write to ~/.cluster/logs, so they outlive the
command or SSH session that started them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import grpc

from runtime import object_store, rpc
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


def _spawn(name: str, argv: list[str], env: dict) -> subprocess.Popen:
    logs_dir().mkdir(parents=True, exist_ok=True)
    with open(logs_dir() / f"{name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", *argv], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)


def _log_tail(name: str, lines: int = 15) -> str:
    try:
        return "\n".join((logs_dir() / f"{name}.log").read_text().splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait_ready(name: str, process: subprocess.Popen, check) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeClusterError(f"{name} exited with code {process.returncode}:\n{_log_tail(name)}")
        try:
            if check():
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.05)
    process.kill()
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


def _start_agent(gcs_address, ip, resources, node_type, node_id, is_head, env,
                 object_store_memory: Optional[int] = None) -> tuple:
    """Spawn the node agent; returns (its process, a function that waits until it registered
    with the GCS and returns its address)."""
    argv = ["runtime.node_agent", "--node-id", node_id, "--ip", ip, "--gcs-address", gcs_address,
            "--node-type", node_type, "--resources", json.dumps(resources),
            "--object-store-memory", str(object_store_memory or 0)] + (["--head"] if is_head else [])
    process = _spawn("agent", argv, env)
    gcs = _gcs_stub(gcs_address, env[TOKEN_ENV])
    found = {}

    def registered():
        for n in gcs.GetClusterState(pb.Empty(), timeout=2).nodes:
            if n.node_id == node_id:
                found["address"] = n.address
                return True
        return False

    def wait() -> str:
        _wait_ready("agent", process, registered)
        return found["address"]

    return process, wait


def start_head(port: int, resources: dict, node_type: str = "head", ip: Optional[str] = None,
               node_id: Optional[str] = None, autoscaling_config: Optional[str] = None,
               token: Optional[str] = None, object_store_memory: Optional[int] = None) -> Session:
    ip = ip or node_ip()
    node_id = node_id or os.environ.get("CLUSTER_NODE_ID") or uuid.uuid4().hex[:12]
    token = token or read_token() or new_token()
    write_token(token)
    env = dict(os.environ, **{TOKEN_ENV: token})
    gcs = _spawn("gcs", ["runtime.gcs", "--ip", ip, "--port", str(port)], env)
    gcs_address = f"{ip}:{port}"
    pids = {"gcs": gcs.pid}
    try:  # the agent starts alongside the GCS (it waits for it to register): both boot at once
        agent, wait_agent = _start_agent(gcs_address, ip, resources, node_type, node_id, True, env,
                                         object_store_memory)
        pids["agent"] = agent.pid
        stub = _gcs_stub(gcs_address, token)
        _wait_ready("gcs", gcs, lambda: stub.KvGet(pb.KvRequest(key="ping"), timeout=1) is not None)
        agent_address = wait_agent()
        if autoscaling_config:
            config_path = os.path.expanduser(autoscaling_config)
            monitor = _spawn("autoscaler", ["autoscaler.monitor", "--config", config_path,
                                            "--gcs-address", gcs_address], env)
            pids["autoscaler"] = monitor.pid
    except BaseException:
        _kill_all(pids)
        raise
    session = Session(gcs_address, agent_address, node_id, ip, True, pids)
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
    agent, wait_agent = _start_agent(gcs_address, ip, resources, node_type, node_id, False, env,
                                     object_store_memory)
    session = Session(gcs_address, wait_agent(), node_id, ip, False, {"agent": agent.pid})
    write_session(session)
    return session


def stop_node(grace_s: float = 5.0) -> list[str]:
    """Stop the processes `start_*` recorded on this node; returns their names."""
    session = read_session()
    if session is None:
        return []
    _kill_all(session.pids, grace_s)
    session_path().unlink(missing_ok=True)
    return sorted(session.pids)


def _kill_all(pids: dict, grace_s: float = 5.0) -> None:
    # the autoscaler first, so it launches nothing while the rest goes down
    order = sorted(pids, key=lambda name: name != "autoscaler")
    for name in order:
        _signal(pids[name], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        time.sleep(0.05)
    for pid in pids.values():
        _signal(pid, signal.SIGKILL)
    object_store.remove_dirs(runtime_dir(), pids.values())  # an agent killed leaves its store


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
        _kill_all(self.pids, grace_s=2.0)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_local_cluster(num_cpus=None, num_gpus=None, resources=None,
                        object_store_memory=None) -> LocalCluster:
    directory = tempfile.mkdtemp(prefix="cluster-runtime-")
    previous = os.environ.get(RUNTIME_DIR_ENV)
    os.environ[RUNTIME_DIR_ENV] = directory
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        session = start_head(port, detect_resources(num_cpus, num_gpus, resources), ip="127.0.0.1",
                             node_id=uuid.uuid4().hex[:12], object_store_memory=object_store_memory)
    finally:
        if previous is None:
            os.environ.pop(RUNTIME_DIR_ENV)
        else:
            os.environ[RUNTIME_DIR_ENV] = previous
    return LocalCluster(session.gcs_address, session.agent_address, read_token_from(directory),
                        directory, session.pids)


def read_token_from(directory: str) -> str:
    return (Path(directory) / "token").read_text().strip()
