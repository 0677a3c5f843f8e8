"""`scheduling_strategy=` values, under Ray's names ("DEFAULT" and "SPREAD" are plain strings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run the task or actor in a bundle of `placement_group` (-1: any of its bundles); with
    `placement_group_capture_child_tasks`, the work it submits goes into the group too."""

    placement_group: object  # runtime.util.placement_group.PlacementGroup
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool = False


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on the node `node_id` (hex, as `get_runtime_context().get_node_id()` and `nodes()` give
    it). If that node is dead the work fails with TaskUnschedulableError, unless `soft`: then, as
    when it has no room, the work may run elsewhere."""

    node_id: str
    soft: bool
    _spill_on_unavailable: bool = False
    _fail_on_unavailable: bool = False

    def __post_init__(self):
        if self._spill_on_unavailable or self._fail_on_unavailable:
            raise NotImplementedError("NodeAffinitySchedulingStrategy: _spill_on_unavailable and "
                                      "_fail_on_unavailable are not supported by this runtime")
