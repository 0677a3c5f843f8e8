"""Driving the autoscaler's parts against a real provider (moto, the fake GCP and Azure servers)."""

from __future__ import annotations

import contextlib

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


@contextlib.contextmanager
def head_gcs(token: str):
    """A real GCS on 127.0.0.1 in this process, with a 1-CPU head node registered; its stub."""
    from runtime import gcs, rpc
    from runtime.generated import runtime_pb2 as pb
    from runtime.generated import runtime_pb2_grpc as pb_grpc

    server, port = gcs.serve("127.0.0.1", 0, token)
    stub = pb_grpc.GcsStub(rpc.make_channel(f"127.0.0.1:{port}", token))
    stub.RegisterNode(pb.NodeInfo(node_id="head", address="127.0.0.1:1", ip="127.0.0.1",
                                  node_type="head", is_head=True, total={"CPU": 1}))
    try:
        yield stub
    finally:
        server.stop(0)


def queue_demand(stub, shape: dict, count: int) -> None:
    """The head reports `count` tasks of `shape` that no node can take."""
    from runtime.generated import runtime_pb2 as pb

    stub.Heartbeat(pb.HeartbeatRequest(node_id="head", available={"CPU": 1}, idle_seconds=-1,
                                       demand=[pb.ShapeCount(shape=shape, count=count)]))
