"""The error -> reaction table of the autoscaler, one error class at a time."""

from __future__ import annotations

import pytest

from autoscaler import reactions as R
from launcher import errors


@pytest.mark.parametrize("error,kind", [
    (errors.CapacityError("x"), R.CAPACITY), (errors.QuotaError("x"), R.QUOTA),
    (errors.AuthError("x"), R.AUTH), (errors.InvalidNodeConfig("x"), R.CONFIG),
    (errors.ConfigError("x"), R.CONFIG), (errors.TransientError("x"), R.TRANSIENT),
    (errors.ProviderError("x"), R.OTHER), (RuntimeError("x"), R.OTHER),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v)
def test_errors_are_classed_by_their_type(error, kind):
    assert R.classify(error) == kind


def test_capacity_backs_off_exponentially_up_to_a_cap_and_a_success_resets_it():
    backoffs, waits = {}, []
    for attempt in range(7):
        backoffs = R.react(backoffs, "gpu", R.CAPACITY, "no g5 anywhere", 1000.0)
        waits.append(backoffs["gpu"].until - 1000.0)
    assert waits == [30, 60, 120, 240, 480, 600, 600]
    assert R.blocked(backoffs, "gpu", 1500.0) is not None and R.blocked(backoffs, "cpu", 1500) is None
    assert R.blocked(backoffs, "gpu", 1601.0) is None  # it expires
    assert R.succeeded(backoffs, "gpu") == {}


def test_quota_stops_the_type_and_says_how_to_raise_it():
    backoffs = R.react({}, "gpu", R.QUOTA, "VcpuLimitExceeded: 32 vCPUs of G", 0.0)
    backoff = R.blocked(backoffs, "gpu", 599.0)
    assert backoff.kind == "quota" and "VcpuLimitExceeded" in backoff.message
    assert "raise the quota" in backoff.message and R.blocked(backoffs, "gpu", 600.0) is None


def test_an_auth_error_stops_every_type_at_once():
    backoffs = R.react({}, "gpu", R.AUTH, "AuthFailure", 0.0)
    assert R.blocked(backoffs, "cpu", 800.0).kind == "auth"
    assert R.blocked(backoffs, "gpu", 800.0).node_type == R.ALL_TYPES
    assert R.blocked(backoffs, "cpu", 900.0) is None


def test_a_config_error_stops_only_its_type_with_advice():
    backoffs = R.react({}, "gpu", R.CONFIG, "InvalidAMIID.NotFound", 0.0)
    assert "node_config" in R.blocked(backoffs, "gpu", 10.0).message
    assert R.blocked(backoffs, "cpu", 10.0) is None


def test_transient_errors_retry_soon_with_jitter_that_differs_between_attempts():
    waits = {R.react({}, "cpu", R.TRANSIENT, "throttled", now)["cpu"].until - now
             for now in (1.0, 2.0, 3.0, 4.0)}
    assert all(R.TRANSIENT_S <= w < 2 * R.TRANSIENT_S for w in waits) and len(waits) > 1


def test_the_failure_count_outlives_the_back_off_only_for_a_while():
    backoffs = R.react({}, "gpu", R.CAPACITY, "short", 0.0)  # until 30
    assert "gpu" in R.expired(backoffs, 100.0)
    assert R.react(R.expired(backoffs, 100.0), "gpu", R.CAPACITY, "again", 100.0)["gpu"].failures == 2
    assert R.expired(backoffs, 30.0 + R.CAPACITY_MAX_S) == {}
