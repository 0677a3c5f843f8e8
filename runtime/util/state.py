"""What the cluster is doing, as Ray's state API (`ray.util.state`) shows it: nodes, tasks,
actors, objects, placement groups. Each call returns plain dicts with Ray's field names; `cluster list`
prints the same records as a table.

Tasks come from the GCS task table, which node agents fill in batches about once a second: a
task's state can lag that much, and only the latest MAX_TASK_RECORDS tasks are kept.
"""

from __future__ import annotations

from typing import Optional

from runtime import api, client as client_state
from runtime.generated import runtime_pb2 as pb
from runtime.util.placement_group import placement_group_table

DEFAULT_LIMIT = 1000


def list_nodes(state: Optional[str] = None, limit: int = DEFAULT_LIMIT) -> list[dict]:
    """Live nodes (dead ones leave the GCS)."""
    records = [{"node_id": n.node_id, "state": "ALIVE", "node_ip": n.ip, "node_type": n.node_type,
                "is_head_node": n.is_head, "idle_s": max(n.idle_seconds, 0.0),
                "resources_total": dict(n.total), "resources_available": dict(n.available)}
               for n in api.cluster_state().nodes]
    return _pick(records, state, limit)


def list_tasks(state: Optional[str] = None, limit: int = DEFAULT_LIMIT) -> list[dict]:
    """Tasks, newest first: PENDING_ARGS_AVAIL, PENDING_NODE_ASSIGNMENT, RUNNING, FINISHED, FAILED."""
    events = client_state.connected().gcs.ListTasks(pb.ListRequest(state=state or "", limit=limit),
                                            timeout=30).events
    return [{"task_id": e.task_id, "name": e.name, "state": e.state, "type": e.kind,
             "node_id": e.node_id, "worker_pid": e.worker_pid or None,
             "error_type": e.error_type or None, "actor_id": e.actor_id or None,
             "required_resources": dict(e.required_resources) or None} for e in events]


def list_actors(state: Optional[str] = None, limit: int = DEFAULT_LIMIT) -> list[dict]:
    """Actors: PENDING, ALIVE, RESTARTING, DEAD."""
    actors = client_state.connected().gcs.ListActors(pb.ListRequest(state=state or "", limit=limit),
                                             timeout=30).actors
    return [{"actor_id": a.actor_id, "class_name": a.class_name, "name": a.name,
             "namespace": a.namespace, "state": a.state, "node_id": a.node_id,
             "pid": a.pid or None, "num_restarts": a.num_restarts,
             "death_cause": a.death_cause or None} for a in actors]


def list_objects(state: Optional[str] = None, limit: int = DEFAULT_LIMIT) -> list[dict]:
    """Objects in every node's store, by where they are: IN_MEMORY (small, in the node agent),
    SHARED_MEMORY, SPILLED (on the node's disk). A copy on each node that holds one."""
    client = client_state.connected()
    records = []
    for node in api.cluster_state().nodes:
        request = pb.ListRequest(state=state or "", limit=limit)
        for o in client.agent_at(node.address).ListObjects(request, timeout=30).objects:
            records.append({"object_id": o.object_id, "state": o.where, "node_id": o.node_id,
                            "object_size": o.size})
    return records[:limit or None]


def list_placement_groups(state: Optional[str] = None, limit: int = DEFAULT_LIMIT) -> list[dict]:
    """Placement groups: PENDING, CREATED, REMOVED."""
    return _pick(list(placement_group_table().values()), state, limit)


def _pick(records: list, state: Optional[str], limit: int) -> list:
    return [r for r in records if not state or r["state"] == state][:limit or None]
