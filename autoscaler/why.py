"""`cluster why`: one paragraph on why work of a shape waits, from what `cluster status` shows.

Pure: `explain` reads the status document the autoscaler publishes (node types, nodes with their
lifecycle states, back-offs, what the last plan could not launch) and the GCS's live nodes, and
names the first reason that applies: a node has room now; no node type can hold the shape; a
node able to hold it is on its way (installing, since when); every type able to hold it is
backed off (until when, why), at its max_workers, or the cluster at its max_workers; the
upscaling speed held the launch back.
"""

from __future__ import annotations

import re
import time
from typing import Mapping, Optional

from autoscaler.binpack import fits, to_shape
from autoscaler.status import format_shape

_PAIR = re.compile(r"^\s*([A-Za-z_][\w:.\-/]*)\s*[=:]\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*$")


def parse_shape(text: str) -> Optional[dict]:
    """"CPU=2,GPU=1" or "{CPU: 2, GPU: 1}" as a shape; None when `text` is no shape (a task id)."""
    pairs = [p for p in text.strip().strip("{}").split(",") if p.strip()]
    matches = [_PAIR.match(p) for p in pairs]
    if not pairs or not all(matches):
        return None
    return {m.group(1): float(m.group(2)) for m in matches}


def explain(shape: Mapping[str, float], status: Optional[dict], live_nodes, now: float) -> str:
    """Why work needing `shape` is not running; `live_nodes` are the GCS's NodeInfos."""
    wanted = to_shape(shape)
    label = format_shape(shape)
    if not wanted:
        return f"{label} asks for no resources: it runs as soon as a worker is free."
    with_room = [n.node_id for n in live_nodes if not n.draining and fits(dict(n.available), wanted)]
    if with_room:
        return (f"Node {with_room[0]} has room for {label} now: the work starts as soon as its "
                "arguments are ready (its state then leaves PENDING_ARGS_AVAIL).")
    if status is None:
        return (f"No node has room for {label} now, and the autoscaler has published no status "
                "yet: is it running? (`cluster monitor CONFIG` shows its log.)")
    types = status.get("node_types", {})
    able = sorted(t for t, spec in types.items() if fits(spec["resources"], wanted))
    if not able:
        sizes = "; ".join(f"{t}: {format_shape(spec['resources'])}" for t, spec in sorted(types.items()))
        return (f"No node type can hold {label}, so nothing is launched for it (infeasible). "
                f"The node types offer {sizes}. Add a node type that large or ask for less.")
    coming = [row for row in status["nodes"]
              if row["node_type"] in able and row.get("state") in ("requested", "allocated",
                                                                    "installing")]
    if coming:
        row = coming[0]
        stage = f", {row['stage']}" if row.get("stage") else ""
        return (f"Node {row['node_id']} of type {row['node_type']} is on its way and can hold "
                f"{label}: {row['state']} for {now - row['since']:.0f}s{stage}. The work starts "
                "there once it has joined.")
    return _blocked(label, able, status, now)


def _blocked(label: str, able: list, status: dict, now: float) -> str:
    """Every type able to hold the shape is held back: say by what, type by type."""
    backoffs = {b["node_type"]: b for b in status.get("backoffs", []) if b["until"] > now}
    counts: dict[str, int] = {}
    for row in status["nodes"]:
        if row.get("kind") == "worker" and row.get("state") not in ("terminating",):
            counts[row["node_type"]] = counts.get(row["node_type"], 0) + 1
    workers = sum(counts.values())
    reasons = []
    for name in able:
        spec, backoff = status["node_types"][name], backoffs.get(name) or backoffs.get("*")
        if backoff is not None:
            reasons.append(f"{name} is not launched until {_clock(backoff['until'])} after a "
                           f"{backoff['kind']} error ({backoff['message']})")
        elif counts.get(name, 0) >= spec["max_workers"]:
            reasons.append(f"{name} is at its max_workers ({spec['max_workers']})")
        elif workers >= status.get("max_workers", workers + 1):
            reasons.append(f"{name} could grow, but the cluster is at max_workers "
                           f"({status['max_workers']})")
    if reasons:
        return f"No node has room for {label} and none is launched: " + "; ".join(reasons) + "."
    if status.get("unfulfilled"):
        return (f"No node has room for {label}; types {', '.join(able)} can hold it, and the "
                "upscaling speed held this round's launches back (upscaling_speed): more follow "
                "as the launched nodes join.")
    return (f"No node has room for {label}; types {', '.join(able)} can hold it and nothing holds "
            "them back: the autoscaler's next round launches one (every "
            "autoscaler_update_interval_s).")


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def explain_task(event, status: Optional[dict], live_nodes, now: float) -> str:
    """Why the task of this TaskEvent (its latest state in the GCS) is not running."""
    task = f"Task {event.task_id} ({event.name})"
    if not event.state.startswith("PENDING"):
        where = f" on node {event.node_id}" if event.node_id else ""
        return f"{task} is {event.state}{where}: it is not waiting."
    if event.state == "PENDING_ARGS_AVAIL":
        return (f"{task} waits for its arguments: objects that other tasks have not produced "
                "yet (or that are being fetched from another node).")
    return f"{task} waits for a node: " + explain(dict(event.required_resources), status,
                                                   live_nodes, now)
