"""The `ray` command of a node: Ray's `ray start`, `ray stop` and `ray status` mapped onto this
runtime's `cluster start`, `cluster stop` and `cluster status`, so the start commands of Ray's
cluster YAMLs run unchanged and reach this runtime.

It is installed only on nodes, as a script in ~/.local/bin (launcher/runtime_install.py), never as
a console script of the project: on a user's machine that would shadow a real Ray's `ray`.
Ray's flags with a counterpart keep Ray's meaning; those without one (ports of Ray's own daemons,
the dashboard, ...) are accepted and named in one warning, so a YAML written for Ray still starts
the cluster; anything else is a one-line error.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import sys

import click
from click.core import ParameterSource

from runtime import cli, node

# Ray's options with nothing to do here: name -> whether it takes a value (else it is a flag).
IGNORED_START = {
    "--node-name": True, "--redis-username": True, "--redis-password": True,
    "--redis-shard-ports": True, "--gcs-server-port": True, "--object-manager-port": True,
    "--node-manager-port": True, "--min-worker-port": True, "--max-worker-port": True,
    "--worker-port-list": True, "--ray-client-server-port": True, "--include-dashboard": True,
    "--dashboard-host": True, "--dashboard-port": True, "--dashboard-agent-listen-port": True,
    "--dashboard-agent-grpc-port": True, "--dashboard-grpc-port": True,
    "--runtime-env-agent-port": True, "--metrics-export-port": True, "--plasma-directory": True,
    "--object-spilling-directory": True, "--temp-dir": True, "--system-config": True,
    "--tracing-startup-hook": True, "--labels": True, "--labels-file": True,
    "--include-log-monitor": True, "--system-reserved-cpu": True, "--system-reserved-memory": True,
    "--cgroup-path": True, "--no-redirect-output": False, "--enable-object-reconstruction": False,
    "--ray-debugger-external": False, "--disable-usage-stats": False,
    "--enable-resource-isolation": False,
}
LOGGING = {"--log-style": True, "--log-color": True}  # Ray's logging options, on every command


def _ignored(options: dict):
    """Accept Ray's options without a counterpart, noting the ones given for `_warn_ignored` (in
    the order given: click processes command-line options in that order)."""
    def note(ctx, param, _value):
        if ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            ctx.meta.setdefault("ignored", []).append(max(param.opts, key=len))

    def decorate(command):
        for name, takes_value in options.items():
            flag = {} if takes_value else {"is_flag": True}  # is_flag=False: an optional value
            command = click.option(name, hidden=True, expose_value=False, callback=note,
                                   **flag)(command)
        return click.option("-v", "--verbose", count=True, hidden=True, expose_value=False,
                            callback=note)(command)
    return decorate


def _warn_ignored(ctx: click.Context) -> None:
    if ctx.meta.get("ignored"):
        click.echo(f"{ctx.command_path}: ignoring options this runtime has no counterpart for: "
                   f"{', '.join(ctx.meta['ignored'])}", err=True)


class RayGroup(click.Group):
    """Errors as one line (Ray's options are many; a usage screen would hide what went wrong), and
    Ray's other subcommands named as unsupported rather than unknown."""

    def main(self, args=None, prog_name=None, **extra):
        extra.pop("standalone_mode", None)
        try:
            code = super().main(args, prog_name or "ray", standalone_mode=False, **extra)
        except click.ClickException as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) else "ray"
            click.echo(f"{where}: {' '.join(exc.format_message().split())}", err=True)
            code = exc.exit_code
        except click.Abort:
            code = 1
        sys.exit(code or 0)

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands:
            click.echo(f"ray {args[0]} is not supported by cluster-launcher's runtime", err=True)
            ctx.exit(2)
        return super().resolve_command(ctx, args)


def _print_version(ctx, _param, value):
    if value and not ctx.resilient_parsing:
        click.echo(f"ray: cluster-launcher {importlib.metadata.version('cluster-launcher')}'s "
                   "runtime (Ray-compatible commands, not Ray)")
        ctx.exit()


@click.group(cls=RayGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print the version and exit.")
@click.pass_context
def ray(ctx):
    """Ray's node commands, run by cluster-launcher's runtime."""
    if ctx.invoked_subcommand is None:  # help, not a usage error squeezed onto one line
        click.echo(ctx.get_help())


@ray.command()
@click.option("--head", is_flag=True, help="Start the head node.")
@click.option("--address", help="HOST:PORT of the head's GCS, to join as a worker node.")
@click.option("--port", type=click.IntRange(1, 65535), help="GCS port of the head (default 6379).")
@click.option("--node-ip-address", help="This node's address.")
@click.option("--num-cpus", type=int, help="CPUs this node offers.")
@click.option("--num-gpus", type=int, help="GPUs this node offers.")
@click.option("--memory", type=click.IntRange(min=0), help="Bytes of the `memory` resource.")
@click.option("--resources", help="Custom resources as a JSON object.")
@click.option("--object-store-memory", type=click.IntRange(min=1), help="Bytes for large objects.")
@click.option("--autoscaling-config", help="Cluster YAML; starts the autoscaler on the head.")
@click.option("--no-monitor", is_flag=True, hidden=True, help="Do not start the autoscaler.")
@click.option("--block", is_flag=True, help="Stay in the foreground until a runtime process exits.")
@_ignored({**IGNORED_START, **LOGGING})
@click.pass_context
def start(ctx, head, address, port, node_ip_address, num_cpus, num_gpus, memory, resources,
          object_store_memory, autoscaling_config, no_monitor, block):
    """`cluster start` with Ray's flags."""
    _warn_ignored(ctx)
    if port is not None and not head:  # as Ray: the port is the head's
        raise click.UsageError("--port should only be specified when starting the head with --head")
    if memory is not None:
        resources = json.dumps({**cli._parse_resources(resources), "memory": memory})
    ctx.invoke(cli.start, head=head, address=address, port=port or 6379,
               node_ip_address=node_ip_address, num_cpus=num_cpus, num_gpus=num_gpus,
               resources=resources, object_store_memory=object_store_memory,
               autoscaling_config=None if no_monitor else autoscaling_config)
    if block:
        _block()


def _block() -> None:
    """Ray's `--block` (a container's main process): wait until one of the runtime's processes, all
    children of this one, exits, or until told to stop; then stop the rest and exit."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        pid, _ = os.wait()
    finally:
        node.stop_node()
    click.echo(f"ray start --block: runtime process {pid} exited; stopped this node.", err=True)
    sys.exit(1)


@ray.command()
@click.option("-f", "--force", is_flag=True, help="Kill at once instead of SIGTERM first.")
@click.option("-g", "--grace-period", type=click.IntRange(min=0), default=16, show_default=True,
              help="Seconds to wait after SIGTERM before killing.")
@_ignored(LOGGING)
@click.pass_context
def stop(ctx, force, grace_period):
    """`cluster stop`, with Ray's grace period."""
    _warn_ignored(ctx)
    stopped = node.stop_node(grace_s=0 if force else grace_period)
    click.echo(f"Stopped {', '.join(stopped)}." if stopped else "Nothing was running.")


@ray.command()
@_ignored({"--address": True, **LOGGING})
@click.pass_context
def status(ctx):
    """`cluster status` of the cluster this node belongs to."""
    _warn_ignored(ctx)
    # the launcher renders it; the runtime reaches it by name only, as `autoscaler.monitor`
    cluster = os.path.join(os.path.dirname(sys.executable), "cluster")
    try:
        os.execv(cluster, [cluster, "status"])
    except OSError as exc:
        click.echo(f"ray status: not supported here ({cluster}: {exc.strerror})", err=True)
        sys.exit(2)


if __name__ == "__main__":
    ray()
