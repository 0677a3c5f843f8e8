"""Cloud instances backed by container nodes: the bridge every cloud's end-to-end test uses.

A fake or mocked cloud API (moto for AWS, the fake REST servers for GCP and Azure) hands out
instance IPs in a 127.x range. InstanceWatcher polls the cloud's own API for live instances, boots a
container node (tests/harness/containers.py) on each new instance's IP and powers it off once the
instance is gone, so `cluster up` reaches every instance over real SSH.

    watcher = InstanceWatcher(lambda: {instance_id: ip, ...}, containers)
    watcher.start() ... watcher.stop()   # raises AssertionError if a sync failed
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator, Mapping, Optional

from tests.harness.containers import ContainerCluster, assert_loopback


class InstanceWatcher(threading.Thread):
    """Boots a container node on each live instance's IP; powers it off once the instance is gone.

    live_instances: returns instance id -> IP (None while the cloud has not assigned one) for every
    instance the cloud counts as pending or running.
    """

    def __init__(self, live_instances: Callable[[], Mapping[str, Optional[str]]],
                 containers: ContainerCluster, period_s: float = 0.5):
        super().__init__(daemon=True, name="instance-watcher")
        self.live_instances, self.containers, self.period_s = live_instances, containers, period_s
        self.nodes: dict = {}
        self.errors: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.period_s):
            try:
                self._sync()
            except Exception as exc:  # reported by stop(), in the test that owns the failure
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self._done.set()
        self.join(5)
        assert not self.errors, self.errors

    def _sync(self) -> None:
        live = self.live_instances()
        for instance in [i for i in self.nodes if i not in live]:  # first: an IP may be reused
            self.nodes.pop(instance).stop()
        for instance, ip in live.items():
            if instance not in self.nodes and ip:
                assert_loopback(ip)
                self.nodes[instance] = self.containers.start(ip)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `predicate` every second until it is true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


@contextlib.contextmanager
def watching(live_instances: Callable[[], Mapping[str, Optional[str]]],
             containers: ContainerCluster) -> Iterator[InstanceWatcher]:
    """An InstanceWatcher for the duration of the block; its sync errors fail the test."""
    watcher = InstanceWatcher(live_instances, containers)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()
