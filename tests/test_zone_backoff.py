"""The zone half of the capacity reaction: a zone without capacity for a machine is tried last."""

from __future__ import annotations

from launcher.providers.base import ZoneBackoff


def test_a_zone_without_capacity_goes_last_for_that_machine_only_and_comes_back():
    now = [0.0]
    zones = ZoneBackoff(lambda: now[0])
    zones.failed("g5", "a")
    assert zones.order("g5", ["a", "b", "c"]) == ["b", "c", "a"]
    assert zones.order("m5", ["a", "b", "c"]) == ["a", "b", "c"]
    now[0] = 31.0
    assert zones.order("g5", ["a", "b", "c"]) == ["a", "b", "c"]  # 30 s passed


def test_failures_in_a_row_wait_longer_and_a_success_forgets_them():
    now = [0.0]
    zones = ZoneBackoff(lambda: now[0])
    for _ in range(3):
        zones.failed("g5", "a")  # 30, 60, 120 s
    now[0] = 100.0
    assert zones.order("g5", ["a", "b"]) == ["b", "a"]
    zones.succeeded("g5", "a")
    assert zones.order("g5", ["a", "b"]) == ["a", "b"]
