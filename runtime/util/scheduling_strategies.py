"""`scheduling_strategy=` values, under Ray's names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run the task or actor in a bundle of `placement_group` (-1: any of its bundles)."""

    placement_group: object  # runtime.util.placement_group.PlacementGroup
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool = False  # accepted; child tasks are not captured
