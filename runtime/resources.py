"""Resource arithmetic shared by the scheduler and the GCS: dicts of name -> amount."""

from __future__ import annotations

from typing import Mapping

EPSILON = 1e-9

Resources = Mapping[str, float]


def fits(need: Resources, available: Resources) -> bool:
    return all(available.get(k, 0.0) + EPSILON >= v for k, v in need.items() if v > 0)


def subtract(available: dict, need: Resources) -> None:
    for k, v in need.items():
        available[k] = available.get(k, 0.0) - v


def add(available: dict, amount: Resources) -> None:
    for k, v in amount.items():
        available[k] = available.get(k, 0.0) + v


def shape_key(need: Resources) -> tuple:
    """A hashable, canonical form of a resource shape, for aggregating demand."""
    return tuple(sorted((k, float(v)) for k, v in need.items() if v > 0))
