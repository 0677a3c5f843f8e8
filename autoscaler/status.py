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


def format_shape(shape) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(dict(shape).items())) + "}"


def _usage(total: dict, available: dict) -> str:
    parts = [
        f"{k} {total[k] - available.get(k, 0.0):g}/{total[k]:g}"
        for k in sorted(total)
        if not k.startswith("accelerator_type:")
    ]
    return ", ".join(parts) or "-"


def render(state, status) -> str:
    lines = []
    name = status["cluster_name"] if status else "?"
    lines.append(f"======== Cluster {name} ========")
    lines.append("Nodes:")
    live = {n.node_id: n for n in state.nodes}
    rows = (
        status["nodes"]
        if status
        else [
            {
                "node_id": n.node_id,
                "node_type": n.node_type,
                "kind": "head" if n.is_head else "worker",
                "ip": n.ip,
                "status": "running",
            }
            for n in state.nodes
        ]
    )
    for row in rows:
        info = live.get(row["node_id"])
        if info is not None:
            activity = "idle" if info.idle_seconds >= 0 else "busy"
            detail = f"{_usage(dict(info.total), dict(info.available))}  ({activity})"
        else:
            detail = row["status"]
        lines.append(
            f"  {row['kind']:<6} {row['node_type']:<12} {row['node_id']:<16} {row['ip']:<15} {detail}"
        )
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
    age = time.time() - status["time"]
    lines.append(f"Autoscaler: last update {age:.0f}s ago")
    lines.append("Recent events:")
    for event in status["events"][-10:] or [{"time": None, "message": "none"}]:
        stamp = time.strftime("%H:%M:%S", time.localtime(event["time"])) if event["time"] else ""
        lines.append(f"  {stamp} {event['message']}")
    return "\n".join(lines)
