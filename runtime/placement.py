"""Placement groups: where bundles go (pure), and how work is pinned to a bundle (resource names).

A reserved bundle turns its resources into resources named after the group on its node, as Ray
does: {"CPU": 2} in bundle 0 of group G becomes "CPU_group_0_G" (that bundle) and "CPU_group_G"
(any bundle of G on this node), plus "bundle_group_0_G"/"bundle_group_G" tokens so work that needs
no resources can still be pinned. Work scheduled into a group asks for those names instead of the
plain ones, so the ordinary scheduler places it, spills it and queues it without knowing about
groups.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

from runtime.resources import add, fits, subtract

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
BUNDLE_TOKENS = 1000.0  # pin tokens each bundle offers; work in it takes one (so <= 1000 at once)
_GROUP_RESOURCE = re.compile(r"_group_(\d+_)?[0-9a-f]{32}$")

Resources = Mapping[str, float]


def is_group_resource(name: str) -> bool:
    return bool(_GROUP_RESOURCE.search(name))


def group_of(need: Resources) -> str:
    """The placement group whose resources `need` asks for ("" when none)."""
    for name in need:
        if is_group_resource(name):
            return name[-32:]
    return ""


def in_bundle(need: Resources, pg_id: str, index: int) -> dict:
    """`need` rewritten to be served by bundle `index` of the group (-1: any of its bundles)."""
    wildcard = {f"{k}_group_{pg_id}": v for k, v in need.items() if v > 0}
    wildcard[f"bundle_group_{pg_id}"] = 1.0
    if index < 0:
        return wildcard
    indexed = {f"{k}_group_{index}_{pg_id}": v for k, v in need.items() if v > 0}
    indexed[f"bundle_group_{index}_{pg_id}"] = 1.0
    return {**wildcard, **indexed}


def scheduled_need(need: dict, options: Mapping) -> dict:
    """The resources a task or actor asks the scheduler for, given its options: renamed into a
    bundle with `placement_group=`/`placement_group_bundle_index=` or a
    PlacementGroupSchedulingStrategy, else unchanged."""
    strategy = options.get("scheduling_strategy")
    pg = options.get("placement_group")
    index = options.get("placement_group_bundle_index")
    if hasattr(strategy, "placement_group_bundle_index"):  # a PlacementGroupSchedulingStrategy
        pg, index = strategy.placement_group, strategy.placement_group_bundle_index
    elif strategy not in (None, "DEFAULT", "SPREAD"):
        raise ValueError(f"unsupported scheduling_strategy {strategy!r}")
    if pg is None or pg == "default":
        return need
    index = -1 if index is None else index
    if not -1 <= index < pg.bundle_count:
        raise ValueError(f"placement_group_bundle_index {index} is out of range: the group has "
                         f"{pg.bundle_count} bundle(s)")
    return in_bundle(need, pg.id, index)


def bundle_resources(pg_id: str, indexes: Sequence[int], bundles: Sequence[Resources]) -> dict:
    """What a node offers once it reserved these bundles of the group (added to its resources)."""
    offered: dict = {}
    for index, bundle in zip(indexes, bundles):
        add(offered, {f"{k}_group_{index}_{pg_id}": v for k, v in bundle.items()})
        add(offered, {f"{k}_group_{pg_id}": v for k, v in bundle.items()})
        add(offered, {f"bundle_group_{index}_{pg_id}": BUNDLE_TOKENS,
                      f"bundle_group_{pg_id}": BUNDLE_TOKENS})
    return offered


def plain_amount(need: Resources, name: str) -> float:
    """How much of the plain resource `name` (e.g. "GPU") `need` takes, inside a group or not: a
    grouped need always names the group-wide resource once."""
    group_wide = re.compile(rf"{re.escape(name)}_group_[0-9a-f]{{32}}")
    return need.get(name, 0.0) + sum(v for k, v in need.items() if group_wide.fullmatch(k))


def place(bundles: Sequence[Resources], strategy: str,
          available: Mapping[str, Resources]) -> Optional[list]:
    """A node id per bundle, or None while the bundles do not fit as the strategy demands.

    PACK: as few nodes as possible (all on one if it fits); SPREAD: as many distinct nodes as
    possible; STRICT_PACK: all on one node; STRICT_SPREAD: each on a different node. Bigger
    bundles are placed first; among fitting nodes the one with the least room left wins (packing)
    or the one with the most (spreading).
    """
    free = {node: dict(res) for node, res in sorted(available.items())}
    order = sorted(range(len(bundles)), key=lambda i: -sum(bundles[i].values()))
    if strategy in ("PACK", "STRICT_PACK"):
        total: dict = {}
        for bundle in bundles:
            add(total, bundle)
        whole = [n for n, res in free.items() if fits(total, res)]
        if whole:
            node = min(whole, key=lambda n: _room(free[n], total))
            return [node] * len(bundles)
        if strategy == "STRICT_PACK":
            return None
    placed: list = [None] * len(bundles)
    used: set = set()
    for i in order:
        candidates = [n for n, res in free.items() if fits(bundles[i], res)]
        if strategy == "STRICT_SPREAD":
            candidates = [n for n in candidates if n not in used]
        if not candidates:
            return None
        if strategy == "PACK":
            node = min(candidates, key=lambda n: (n not in used, _room(free[n], bundles[i])))
        else:
            node = max(candidates, key=lambda n: (n not in used, _room(free[n], bundles[i])))
        subtract(free[node], bundles[i])
        used.add(node)
        placed[i] = node
    return placed


def _room(free: Resources, need: Resources) -> float:
    """Room left on a node after `need`, over the resources `need` names (for best/worst fit)."""
    return sum(free.get(k, 0.0) - v for k, v in need.items())
