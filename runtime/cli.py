"""`cluster start` and `cluster stop`: the runtime's commands, run on each node."""

from __future__ import annotations

import json
import sys

import click

from runtime import node
from runtime.errors import RuntimeClusterError


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
def start(head, address, port, node_ip_address, num_cpus, num_gpus, resources, node_type,
          autoscaling_config, token_file):
    """Start the runtime on this node."""
    import os

    if head == bool(address):
        raise click.UsageError("give exactly one of --head or --address HOST:PORT")
    node_type = node_type or os.environ.get("CLUSTER_NODE_TYPE", "head" if head else "worker")
    res = node.detect_resources(num_cpus, num_gpus, _parse_resources(resources))
    token = None
    if token_file:
        from runtime.session import read_token
        token = read_token(token_file)
    try:
        if head:
            session = node.start_head(port, res, node_type, ip=node_ip_address,
                                      autoscaling_config=autoscaling_config, token=token)
        else:
            session = node.start_worker(address, res, node_type, ip=node_ip_address, token=token)
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
