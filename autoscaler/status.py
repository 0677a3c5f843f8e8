"""`cluster status` on a cluster node: what the runtime and the autoscaler report, as text."""

from __future__ import annotations

import json
import time

from runtime import rpc
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc
from runtime.session import AUTOSCALER_STATUS_KEY


def fetch(gcs_address: str, token: str) -> tuple:
    """(cluster state, autoscaler status dict or None) from the GCS."""
    gcs = pb_grpc.GcsStub(rpc.make_channel(gcs_address, token))
    state = gcs.GetClusterState(pb.Empty(), timeout=10)
    reply = gcs.KvGet(pb.KvRequest(key=AUTOSCALER_STATUS_KEY), timeout=10)
    return state, (json.loads(reply.value) if reply.found else None)


def find_task(gcs_address: str, token: str, task_id: str):
    """The latest event of the task whose id is or starts with `task_id`, or None."""
    gcs = pb_grpc.GcsStub(rpc.make_channel(gcs_address, token))
    for event in gcs.ListTasks(pb.ListRequest(), timeout=10).events:
        if event.task_id.startswith(task_id):
            return event
    return None


def format_shape(shape) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(dict(shape).items())) + "}"


_BYTES = ("memory", "object_store_memory")  # resources counted in bytes: shown in GiB, as Ray does


def _usage(total: dict, available: dict) -> str:
    def amount(key: str, value: float) -> str:
        return f"{value / 2 ** 30:.1f}" if key in _BYTES else f"{value:g}"

    parts = [
        f"{k} {amount(k, total[k] - available.get(k, 0.0))}/{amount(k, total[k])}"
        + (" GiB" if k in _BYTES else "")
        for k in sorted(total)
        if not k.startswith("accelerator_type:")
    ]
    return ", ".join(parts) or "-"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _node_line(row: dict, info, now: float) -> str:
    """One node: kind, type, id, IP, lifecycle state and age in it, then use or install stage."""
    state = row.get("state") or "?"
    since = row.get("since")
    lifecycle = f"{state} {_age(now - since)}" if since else state
    if info is not None:
        activity = "idle" if info.idle_seconds >= 0 else "busy"
        detail = f"{_usage(dict(info.total), dict(info.available))}  ({activity})"
    elif state == "installing" and row.get("stage"):
        detail = row["stage"]
    else:
        detail = ""
    return (f"  {row['kind']:<6} {row['node_type']:<12} {row['node_id']:<16} {row['ip']:<15} "
            f"{lifecycle:<18} {detail}").rstrip()


def render(state, status, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = []
    name = status["cluster_name"] if status else "?"
    lines.append(f"======== Cluster {name} ========")
    lines.append("Nodes:")
    live = {n.node_id: n for n in state.nodes}
    rows = status["nodes"] if status else [
        {"node_id": n.node_id, "node_type": n.node_type, "kind": "head" if n.is_head else "worker",
         "ip": n.ip, "state": "running"} for n in state.nodes]
    for row in rows:
        lines.append(_node_line(row, live.get(row["node_id"]), now))
    total, available = {}, {}
    for n in state.nodes:
        for k, v in n.total.items():
            total[k] = total.get(k, 0.0) + v
        for k, v in n.available.items():
            available[k] = available.get(k, 0.0) + v
    lines.append(f"Usage: {_usage(total, available)}")
    demand = [f"{format_shape(d.shape)} x {d.count}" for d in state.demand]
    lines.append("Pending demand: " + (", ".join(demand) if demand else "none"))
    if status is None:
        lines.append("Autoscaler: no status yet")
        return "\n".join(lines)
    infeasible = [format_shape(s) for s in status["infeasible"]]
    if infeasible:
        lines.append(
            "Infeasible demand (fits no node type, never launched for): " + ", ".join(infeasible)
        )
    for backoff in status.get("backoffs", []):
        what = "every type" if backoff["node_type"] == "*" else backoff["node_type"]
        lines.append(f"Not launching {what} for {_age(backoff['until'] - now)} "
                     f"({backoff['kind']}, {backoff['failures']} failure(s)): {backoff['message']}")
    lines.append(f"Autoscaler: last update {now - status['time']:.0f}s ago")
    lines.append("Recent transitions:")
    steps = sorted((step[1], row["node_id"], step[0], step[2])
                   for row in status["nodes"] + status.get("gone", [])
                   for step in row.get("history", []))
    for when, node_id, to, reason in steps[-10:] or [(None, "", "none", "")]:
        stamp = time.strftime("%H:%M:%S", time.localtime(when)) if when else ""
        lines.append(f"  {stamp} {node_id} -> {to}{': ' + reason if reason else ''}".rstrip())
    lines.append("Recent events:")
    for event in status["events"][-10:] or [{"time": None, "message": "none"}]:
        stamp = time.strftime("%H:%M:%S", time.localtime(event["time"])) if event["time"] else ""
        lines.append(f"  {stamp} {event['message']}")
    return "\n".join(lines)
