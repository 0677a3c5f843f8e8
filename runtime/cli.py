"""`cluster start`, `cluster stop` and `cluster list`: the runtime's commands, run on a node."""

from __future__ import annotations

import json
import sys

import click

from runtime import node
from runtime.exceptions import RuntimeClusterError


def _parse_resources(value: str | None) -> dict:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(parsed, dict) or not all(
            isinstance(v, (int, float)) and v >= 0 for v in parsed.values()):
        raise click.BadParameter('expected a JSON object of name -> non-negative number, e.g. {"TPU": 4}')
    return parsed


@click.command()
@click.option("--head", is_flag=True, help="Start the head: GCS, node agent (and autoscaler).")
@click.option("--address", help="HOST:PORT of the head's GCS, to join as a worker node.")
@click.option("--port", default=6379, show_default=True, help="GCS port (head only).")
@click.option("--node-ip-address", help="Address to bind to (default: $CLUSTER_NODE_IP or detected).")
@click.option("--num-cpus", type=int, help="CPUs this node offers (default: detected).")
@click.option("--num-gpus", type=int, help="GPUs this node offers (default: detected).")
@click.option("--resources", help='Custom resources as JSON, e.g. \'{"TPU": 4}\'.')
@click.option("--node-type", default=None, help="Node type name (default: $CLUSTER_NODE_TYPE).")
@click.option("--autoscaling-config", help="Cluster YAML; starts the autoscaler on the head.")
@click.option("--token-file", help="File holding the cluster token (default: $CLUSTER_AUTH_TOKEN).")
@click.option("--object-store-memory", type=click.IntRange(min=1), help="Bytes of shared memory for "
              "large objects (default: 30% of memory or 80% of /dev/shm, whichever is less).")
@click.option("--gcs-storage", help="Where the GCS keeps its tables across restarts (head only): "
              "sqlite:///PATH or redis://HOST:PORT[/DB] (default: $CLUSTER_GCS_STORAGE, else "
              "~/.cluster/gcs.sqlite3).")
def start(head, address, port, node_ip_address, num_cpus, num_gpus, resources, node_type,
          autoscaling_config, token_file, object_store_memory, gcs_storage):
    """Start the runtime on this node."""
    import os

    if head == bool(address):
        raise click.UsageError("give exactly one of --head or --address HOST:PORT")
    if gcs_storage and not head:
        raise click.UsageError("--gcs-storage is for the head (--head)")
    node_type = node_type or os.environ.get("CLUSTER_NODE_TYPE", "head" if head else "worker")
    res = node.detect_resources(num_cpus, num_gpus, _parse_resources(resources))
    token = None
    if token_file:
        from runtime.session import read_token
        token = read_token(token_file)
    try:
        if head:
            session = node.start_head(port, res, node_type, ip=node_ip_address,
                                      autoscaling_config=autoscaling_config, token=token,
                                      object_store_memory=object_store_memory,
                                      gcs_storage=gcs_storage)
        else:
            session = node.start_worker(address, res, node_type, ip=node_ip_address, token=token,
                                        object_store_memory=object_store_memory)
    except RuntimeClusterError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    role = "head" if head else "worker"
    click.echo(f"Started {role} node {session.node_id} at {session.node_ip} "
               f"(resources {json.dumps(res)}); GCS at {session.gcs_address}.")
    if head:
        click.echo(f"Connect with runtime.init(address='{session.gcs_address}') "
                   f"or runtime.init('auto') on a cluster node.")


@click.command()
def stop():
    """Stop the runtime processes on this node."""
    stopped = node.stop_node()
    click.echo(f"Stopped {', '.join(stopped)}." if stopped else "Nothing was running.")


LISTS = {  # kind -> (state API function name, columns of the table)
    "nodes": ("list_nodes", ["node_id", "state", "node_ip", "node_type", "is_head_node", "idle_s",
                             "resources_total"]),
    "tasks": ("list_tasks", ["task_id", "name", "state", "type", "node_id", "worker_pid",
                             "error_type"]),
    "actors": ("list_actors", ["actor_id", "class_name", "name", "state", "node_id", "pid",
                               "num_restarts", "death_cause"]),
    "objects": ("list_objects", ["object_id", "state", "node_id", "object_size"]),
    "placement-groups": ("list_placement_groups", ["placement_group_id", "name", "strategy",
                                                   "state", "bundles", "bundles_to_node_id"]),
}


@click.command(name="list")
@click.argument("kind", type=click.Choice(list(LISTS)))
@click.option("--state", help="Only records in this state, e.g. RUNNING, ALIVE, PENDING.")
@click.option("--limit", default=100, show_default=True, help="At most this many rows.")
@click.option("--address", default="auto", show_default=True,
              help="HOST:PORT of the GCS; `auto` = the cluster this node belongs to.")
def list_state(kind, state, limit, address):
    """List the cluster's nodes, tasks, actors, objects or placement groups (run it on a node, or
    from your machine through `cluster exec CONFIG "cluster list tasks"`)."""
    import runtime
    from runtime.util import state as state_api

    function, columns = LISTS[kind]
    try:
        runtime.init(address)
        records = getattr(state_api, function)(state=state.upper() if state else None, limit=limit)
    except (RuntimeClusterError, ConnectionError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    finally:
        runtime.shutdown()
    click.echo(format_table(records, columns))


def format_table(records: list, columns: list) -> str:
    """Records as aligned text columns, long values cut to keep rows on one line."""
    def cell(value) -> str:
        text = "-" if value is None else str(value)
        return text if len(text) <= 60 else text[:57] + "..."

    rows = [[c.upper() for c in columns]] + [[cell(r.get(c)) for c in columns] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + [f"({len(records)} {'row' if len(records) == 1 else 'rows'})"])
