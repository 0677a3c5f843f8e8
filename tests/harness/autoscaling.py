"""Driving the autoscaler's parts against a real provider (moto, the fake GCP and Azure servers)."""

from __future__ import annotations

from autoscaler import reactions
from autoscaler.actuators import Actuators
from autoscaler.actions import Launch


def launch_and_react(config, provider, node_type: str, now: float = 100.0) -> tuple:
    """Launch one node of the type as the autoscaler's actuator does, expecting a failure;
    returns (the error's class, the back-off the reaction table gives the type)."""
    actuators = Actuators(config, provider, gcs=None, head_ip="127.0.0.1", token="t")
    result = actuators.carry_out(Launch("test-launch", node_type, 1, "a test", now))
    assert not result.ok, f"the launch of {node_type} was expected to fail"
    backoffs = reactions.react({}, node_type, result.error_kind, result.error, now)
    return result.error_kind, backoffs[node_type]
