"""Ray's `ray.util` names: placement groups and scheduling strategies."""

from runtime.util.placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = ["PlacementGroup", "get_placement_group", "placement_group", "placement_group_table",
           "remove_placement_group"]
