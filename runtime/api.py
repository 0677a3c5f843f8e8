"""The user API under Ray's names, so `import runtime as ray` runs Ray programs: this module
gathers it; each part lives in its own module (client: connecting; remote_function and actor:
submitting work; objects_api: objects; generators; runtime_context)."""

from __future__ import annotations

from typing import Optional, Sequence

from runtime.actor import ActorClass, ActorHandle, exit_actor, get_actor, kill, method
from runtime.client import (connected, get_gpu_ids, init, is_initialized, shutdown)
from runtime.generated import runtime_pb2 as pb
from runtime.objects_api import cancel, get, put, wait
from runtime.remote_function import RemoteFunction
from runtime.runtime_context import get_runtime_context

__all__ = ["ActorClass", "ActorHandle", "RemoteFunction", "available_resources", "cancel",
           "cluster_resources", "exit_actor", "get", "get_actor", "get_gpu_ids",
           "get_runtime_context", "init", "is_initialized", "kill", "method", "nodes", "put",
           "remote", "request_resources", "shutdown", "wait"]


def remote(*args, **options):
    """`@remote` or `@remote(num_cpus=2, num_gpus=1, resources={"x": 1})` on a function or class."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("remote() takes a function or class, or only keyword options")
    return lambda target: _make_remote(target, options)


def _make_remote(target, options):
    if isinstance(target, type):
        return ActorClass(target, **options)
    return RemoteFunction(target, **options)


def request_resources(num_cpus: Optional[int] = None,
                      bundles: Optional[Sequence[dict]] = None) -> None:
    """Ask the autoscaler to keep room for `num_cpus` 1-CPU bundles plus `bundles` at once,
    whatever the queued work; each call replaces the last (request_resources() clears it)."""
    shapes = [{"CPU": 1.0}] * int(num_cpus or 0) + [
        {k: float(v) for k, v in b.items()} for b in bundles or ()]
    connected().gcs.RequestResources(
        pb.ResourceRequest(bundles=[pb.Bundle(resources=s) for s in shapes]), timeout=30)


def cluster_state() -> pb.ClusterState:
    return connected().gcs.GetClusterState(pb.Empty(), timeout=10)


def nodes() -> list[dict]:
    return [{"NodeID": n.node_id, "NodeManagerAddress": n.ip, "Alive": True, "NodeType": n.node_type,
             "IsHead": n.is_head, "Resources": dict(n.total)}
            for n in cluster_state().nodes]


def cluster_resources() -> dict:
    return _sum_resources(lambda n: n.total)


def available_resources() -> dict:
    return _sum_resources(lambda n: n.available)


def _sum_resources(pick) -> dict:
    total: dict[str, float] = {}
    for n in cluster_state().nodes:
        for k, v in pick(n).items():
            total[k] = total.get(k, 0.0) + v
    return total
