"""The `cluster` command: launcher verbs here, composed with the runtime's `start`/`stop`.

Each command parses its arguments, calls one function of launcher.cluster_ops, and renders the
result. Errors the user can fix are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
import time

import click

from launcher import cluster_ops
from launcher.config import bootstrap_yaml
from launcher.errors import LauncherError

config_argument = click.argument("config", type=click.Path(dir_okay=False))
name_option = click.option("-n", "--cluster-name", help="Override the cluster_name of the YAML.")


def _echo(line: str) -> None:
    click.echo(line.rstrip("\n"))


def reports_errors(command):
    """Turn launcher errors into one line and the error's exit code."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LauncherError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted; nodes created so far are tagged and `cluster down` removes them.",
                       err=True)
            sys.exit(130)
    return wrapper


def _print_version(ctx, _param, value):
    if value and not ctx.resilient_parsing:
        click.echo(cluster_ops.version())
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print the version and exit (`cluster version CONFIG` also asks the head).")
def cli():
    """Autoscaling compute clusters from one YAML file."""


@cli.command(name="version")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@name_option
@reports_errors
def version_(config, cluster_name):
    """Print this installation's version; with CONFIG, also the runtime's on the head, warning
    when they differ."""
    here = cluster_ops.version()
    click.echo(here)
    if config:
        head, there = cluster_ops.head_version(config, cluster_name=cluster_name)
        click.echo(f"head {head}: {there}")
        if there != here:
            click.echo("Warning: the head runs another version than this machine; `cluster up "
                       f"{config}` installs this one there.", err=True)


@cli.command()
@config_argument
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-restart", is_flag=True, help="Run setup but do not restart the runtime.")
@click.option("--restart-only", is_flag=True, help="Skip setup; only restart the runtime.")
@click.option("--dry-run", is_flag=True,
              help="Bootstrap read-only: print the resolved config and what would be created; "
                   "create nothing.")
@name_option
@reports_errors
def up(config, yes, no_restart, restart_only, dry_run, cluster_name):
    """Create or update a cluster."""
    if no_restart and restart_only:
        raise click.UsageError("--no-restart and --restart-only exclude each other")
    if dry_run:
        resolved, lines = cluster_ops.plan(cluster_ops.load(config, cluster_name))
        click.echo(bootstrap_yaml(resolved).rstrip("\n"))
        click.echo("\n# cluster up would (dry run: only read, nothing created):")
        for line in lines:
            click.echo(f"#   {line}")
        return
    confirm = (lambda _: True) if yes else (lambda q: click.confirm(q, default=False))
    cluster_ops.up(config, _echo, no_restart=no_restart, restart_only=restart_only,
                   cluster_name=cluster_name, confirm=confirm)
    click.echo("\nCluster is up. Next:")
    click.echo(f"  cluster status {config}            # nodes, usage, demand, autoscaler events")
    click.echo(f"  cluster submit {config} script.py  # run a driver on the head")
    click.echo(f"  cluster exec {config} 'CMD'        # run a shell command on the head")
    click.echo(f"  cluster down {config}              # remove every node")


@cli.command()
@config_argument
@click.option("--print", "show", is_flag=True, help="Also print the resolved config.")
@name_option
@reports_errors
def validate(config, show, cluster_name):
    """Check a config (Ray's keys included) without contacting anything."""
    resolved = cluster_ops.load(config, cluster_name)
    if show:
        click.echo(bootstrap_yaml(resolved).rstrip("\n"))
    types = ", ".join(resolved.node_types)
    click.echo(f"{config}: valid ({resolved.provider['type']} provider; node types: {types}; "
               f"head: {resolved.head_node_type})")


@cli.command()
@config_argument
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--workers-only", is_flag=True, help="Terminate the workers, keep the head.")
@name_option
@reports_errors
def down(config, yes, workers_only, cluster_name):
    """Remove every node of a cluster."""
    if not yes:
        what = "the worker nodes" if workers_only else "every node"
        click.confirm(f"This terminates {what} of the cluster. Continue?", abort=True)
    removed = cluster_ops.down(config, _echo, workers_only=workers_only, cluster_name=cluster_name)
    click.echo(f"Terminated {len(removed)} node(s).")


node_option = click.option("--node", "node_ip", metavar="IP", help="A worker's IP instead of the head.")
tmux_option = click.option("--tmux", is_flag=True, help="Run in a detached tmux session on the node.")
screen_option = click.option("--screen", is_flag=True, help="Run in a detached screen session.")


@cli.command(name="exec")
@config_argument
@click.argument("command")
@node_option
@tmux_option
@screen_option
@click.option("--start", is_flag=True, help="`cluster up` first, if the cluster is not up to date.")
@click.option("--stop", is_flag=True, help="`cluster down` after the command finishes.")
@click.option("-p", "--port-forward", "ports", type=int, multiple=True, metavar="PORT",
              help="Forward this port on this machine to the node while the command runs.")
@name_option
@reports_errors
def exec_(config, command, node_ip, tmux, screen, start, stop, ports, cluster_name):
    """Run a shell command on the head node (or --node IP)."""
    if start:
        cluster_ops.up(config, _echo, cluster_name=cluster_name)
    code = cluster_ops.exec_on_node(config, command, _stream, node_ip=node_ip, tmux=tmux,
                                    screen=screen, port_forwards=ports, cluster_name=cluster_name)
    if stop:
        cluster_ops.down(config, _echo, cluster_name=cluster_name)
    sys.exit(code)


def _stream(text: str) -> None:
    click.echo(text, nl=False)


@cli.command()
@config_argument
@tmux_option
@node_option
@name_option
@reports_errors
def attach(config, tmux, node_ip, cluster_name):
    """Open an interactive shell on the head node."""
    argv = cluster_ops.attach_argv(config, tmux=tmux, node_ip=node_ip, cluster_name=cluster_name)
    os.execvp(argv[0], argv)


@cli.command(context_settings={"ignore_unknown_options": True})
@config_argument
@click.argument("script", type=click.Path(dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@tmux_option
@screen_option
@name_option
@reports_errors
def submit(config, script, args, tmux, screen, cluster_name):
    """Copy a Python script to the head and run it there."""
    sys.exit(cluster_ops.submit(config, script, list(args), _stream, tmux=tmux, screen=screen,
                                cluster_name=cluster_name))


@cli.command(name="rsync-up")
@config_argument
@click.argument("source")
@click.argument("target")
@click.option("--all-nodes", is_flag=True, help="Also copy to every worker node.")
@name_option
@reports_errors
def rsync_up(config, source, target, all_nodes, cluster_name):
    """Copy a local file or directory to the head (SOURCE local, TARGET on the node)."""
    nodes = cluster_ops.rsync_up(config, source, target, _echo, all_nodes=all_nodes,
                                 cluster_name=cluster_name)
    click.echo(f"Copied to {len(nodes)} node(s).")


@cli.command(name="rsync-down")
@config_argument
@click.argument("source")
@click.argument("target")
@node_option
@name_option
@reports_errors
def rsync_down(config, source, target, node_ip, cluster_name):
    """Copy a file or directory from the head to here (SOURCE on the node, TARGET local)."""
    cluster_ops.rsync_down(config, source, target, node_ip=node_ip, cluster_name=cluster_name)


@cli.command()
@config_argument
@click.option("-n", "--lines", default=100, show_default=True, help="Lines of history to show first.")
@click.option("--cluster-name", help="Override the cluster_name of the YAML.")
@reports_errors
def monitor(config, lines, cluster_name):
    """Follow the autoscaler's log on the head (Ctrl-C to stop)."""
    sys.exit(cluster_ops.monitor(config, _stream, lines=lines, cluster_name=cluster_name))


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@name_option
@reports_errors
def status(config, cluster_name):
    """Nodes, usage, demand and autoscaler events (with CONFIG: of that cluster, from anywhere;
    without: of the cluster this node belongs to)."""
    if config:
        cluster_ops.on_head(config, "cluster status", _stream, cluster_name=cluster_name)
        return
    from autoscaler import status as autoscaler_status

    gcs_address, token = _this_cluster()
    click.echo(autoscaler_status.render(*_fetch(autoscaler_status.fetch, gcs_address, token)))


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="[CONFIG] TASK_ID|SHAPE")
@name_option
@reports_errors
def why(args, cluster_name):
    """Why work is not running or not scaling: a task's id (or its start) or a shape such as
    CPU=2,GPU=1 (with CONFIG: of that cluster, from anywhere; without: of this node's)."""
    if len(args) > 2:
        raise click.UsageError("give at most CONFIG and one TASK_ID or SHAPE")
    if len(args) == 2:
        config, what = args
        cluster_ops.on_head(config, f"cluster why {shlex.quote(what)}", _stream,
                            cluster_name=cluster_name)
        return
    from autoscaler import status as autoscaler_status
    from autoscaler import why as autoscaler_why

    gcs_address, token = _this_cluster()
    state, status = _fetch(autoscaler_status.fetch, gcs_address, token)
    shape = autoscaler_why.parse_shape(args[0])
    if shape is not None:
        click.echo(autoscaler_why.explain(shape, status, state.nodes, time.time()))
        return
    event = _fetch(autoscaler_status.find_task, gcs_address, token, args[0])
    if event is None:
        raise LauncherError(f"{args[0]}: no such task (and not a shape such as CPU=2,GPU=1)")
    click.echo(autoscaler_why.explain_task(event, status, state.nodes, time.time()))


def _this_cluster() -> tuple[str, str]:
    """(GCS address, token) of the cluster this node belongs to."""
    from runtime.session import read_session, read_token

    session = read_session()
    if session is None:
        raise LauncherError("no cluster runs on this node (no ~/.cluster/session.json)")
    return session.gcs_address, read_token()


def _fetch(call, gcs_address: str, *args):
    """`call(gcs_address, *args)`, a GCS that cannot be reached being one line."""
    import grpc

    try:
        return call(gcs_address, *args)
    except grpc.RpcError as exc:
        raise LauncherError(f"cannot reach this cluster's GCS at {gcs_address}: "
                            f"{exc.code().name}") from None


@cli.command(name="get-head-ip")
@config_argument
@name_option
@reports_errors
def get_head_ip(config, cluster_name):
    """Print the head node's IP."""
    click.echo(cluster_ops.head_ip(config, cluster_name=cluster_name))


@cli.command(name="get-worker-ips")
@config_argument
@name_option
@reports_errors
def get_worker_ips(config, cluster_name):
    """Print the worker nodes' IPs, one per line."""
    for ip in cluster_ops.worker_ips(config, cluster_name=cluster_name):
        click.echo(ip)


def main():
    from runtime.cli import list_state, start, stop

    cli.add_command(start)
    cli.add_command(stop)
    cli.add_command(list_state)
    cli()
