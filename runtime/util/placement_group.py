"""Placement groups, as in Ray: reserve bundles of resources across nodes, then run tasks and
actors in them (`.options(placement_group=pg, placement_group_bundle_index=i)` or
`scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)`).

The GCS places the bundles (runtime.gcs_placement_groups); a group that fits no live node stays
PENDING and counts as demand, so the autoscaler launches nodes for it.
"""

from __future__ import annotations

import functools
import numbers
import uuid
from typing import Mapping, Optional, Sequence

from runtime import client as client_state
from runtime.generated import runtime_pb2 as pb
from runtime.placement import STRATEGIES


class PlacementGroupID(str):
    def hex(self) -> str:
        return str(self)


class PlacementGroup:
    """A handle on a placement group; picklable, so tasks and actors can be given one."""

    def __init__(self, pg_id: str, bundle_specs: Sequence[Mapping[str, float]], strategy: str = ""):
        self.id = PlacementGroupID(pg_id)
        self.bundle_specs = [dict(b) for b in bundle_specs]
        self.strategy = strategy

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self):
        """An ObjectRef that resolves (to this group) once every bundle is reserved: a task that
        needs nothing but a place in bundle 0."""
        return _ready_task().options(placement_group=self,
                                     placement_group_bundle_index=0).remote(self)

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Whether the group is placed within the timeout."""
        reply = client_state.connected().gcs.WaitPlacementGroup(
            pb.PlacementGroupRequest(pg_id=self.id, timeout=timeout_seconds),
            timeout=timeout_seconds + 30)
        return reply.found and reply.info.state == "CREATED"

    def __reduce__(self):
        return PlacementGroup, (str(self.id), self.bundle_specs, self.strategy)

    def __eq__(self, other):
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"PlacementGroup({self.id}, {self.strategy}, {self.bundle_specs})"


def _echo(pg: PlacementGroup) -> PlacementGroup:
    return pg


@functools.lru_cache(maxsize=None)
def _ready_task():
    from runtime.remote_function import RemoteFunction  # (it imports this package)

    return RemoteFunction(_echo, num_cpus=0, name="PlacementGroup.ready")


def placement_group(bundles: Sequence[Mapping[str, float]], strategy: str = "PACK",
                    name: str = "", lifetime: Optional[str] = None) -> PlacementGroup:
    """Ask for `bundles` (e.g. [{"CPU": 2}, {"GPU": 1}]) placed by `strategy`: PACK, SPREAD,
    STRICT_PACK or STRICT_SPREAD. Returns at once; `ray.get(pg.ready())` waits for the placement."""
    if strategy not in STRATEGIES:
        raise ValueError(f"placement group strategy must be one of {', '.join(STRATEGIES)}, "
                         f"got {strategy!r}")
    if not bundles:
        raise ValueError("a placement group needs at least one bundle")
    for index, bundle in enumerate(bundles):
        if not isinstance(bundle, Mapping) or not bundle or any(
                not isinstance(v, numbers.Real) or v < 0 for v in bundle.values()) or \
                not any(v > 0 for v in bundle.values()):
            raise ValueError(f"bundle {index} must map resource names to non-negative numbers, "
                             f"at least one positive; got {bundle!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {lifetime!r}")
    client = client_state.auto_connected()
    pg_id = uuid.uuid4().hex
    specs = [{k: float(v) for k, v in b.items() if v > 0} for b in bundles]
    reply = client.gcs.CreatePlacementGroup(pb.PlacementGroupInfo(
        pg_id=pg_id, name=name, strategy=strategy, lifetime=lifetime or "",
        bundles=[pb.Bundle(resources=b) for b in specs]), timeout=30)
    if reply.error:
        raise ValueError(reply.error)
    if client.is_driver and lifetime != "detached":
        client.owned_placement_groups.append(pg_id)
    return PlacementGroup(pg_id, specs, strategy)


def remove_placement_group(pg: PlacementGroup) -> None:
    """Give the group's resources back; actors living in it are killed."""
    client_state.connected().gcs.RemovePlacementGroup(pb.PlacementGroupRequest(pg_id=pg.id), timeout=30)


def get_current_placement_group() -> Optional[PlacementGroup]:
    """The group the calling task or actor runs in; None in a driver and outside groups."""
    pg_id = client_state.task_context.placement_group
    if not pg_id:
        return None
    reply = client_state.connected().gcs.GetPlacementGroup(pb.PlacementGroupRequest(pg_id=pg_id),
                                                           timeout=30)
    return _handle(reply.info) if reply.found else None


def get_placement_group(name: str) -> PlacementGroup:
    reply = client_state.connected().gcs.GetPlacementGroup(pb.PlacementGroupRequest(name=name), timeout=30)
    if not reply.found or reply.info.state == "REMOVED":
        raise ValueError(f"no placement group named {name!r}")
    return _handle(reply.info)


def placement_group_table(pg: Optional[PlacementGroup] = None) -> dict:
    """Every group's record (or one group's), keyed by id, with Ray's field names."""
    groups = client_state.connected().gcs.ListPlacementGroups(pb.Empty(), timeout=30).groups
    table = {g.pg_id: _record(g) for g in groups}
    return table.get(pg.id, {}) if pg is not None else table


def _handle(info: pb.PlacementGroupInfo) -> PlacementGroup:
    return PlacementGroup(info.pg_id, [dict(b.resources) for b in info.bundles], info.strategy)


def _record(info: pb.PlacementGroupInfo) -> dict:
    return {"placement_group_id": info.pg_id, "name": info.name, "strategy": info.strategy,
            "state": info.state, "bundles": {i: dict(b.resources) for i, b in enumerate(info.bundles)},
            "bundles_to_node_id": {i: b.node_id for i, b in enumerate(info.bundles) if b.node_id}}

