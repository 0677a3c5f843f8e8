"""The provider contract: every cloud (and `local`) is one module implementing NodeProvider.

Node state lives in the provider's tags (see launcher.tags), so any process holding a provider
can crash and resume. Errors are raised as the typed errors of launcher.errors.
"""

from __future__ import annotations

import abc
import time
from typing import Callable, Mapping, Optional, Sequence, TypeVar

from launcher.command_runner import CommandRunner

R = TypeVar("R")


class Changes:
    """Every create or modify of a bootstrap (in the cloud account, or a key file on this machine)
    goes through `create`, so `cluster up --dry-run` can run the same bootstrap read-only: reads
    still run (bad input fails the same way), changes are only reported ("would create X"), and
    later steps get a placeholder that says what it stands for."""

    def __init__(self, echo: Callable[[str], None] = lambda _: None, apply: bool = True):
        self.echo, self.apply = echo, apply

    def create(self, what: str, make: Callable[[], R], placeholder: R) -> R:
        if not self.apply:
            self.echo(f"would create {what}")
            return placeholder
        self.echo(f"Creating {what}")
        return make()


def placeholder(what: str) -> str:
    """An id that does not exist yet, in a dry run's resolved config."""
    return f"<to be created: {what}>"


class ZoneBackoff:
    """The zone half of the reaction to a capacity error (autoscaler.reactions has the type half):
    a zone (or subnet) that had no capacity for a machine type is tried last for that type, for
    30 s doubling to 10 min with each failure in a row, so the next launch goes to a zone that may
    have some. Backed-off zones are still tried, after the others: capacity returns unannounced.
    Kept by the provider object, i.e. for the life of the autoscaler (or `cluster up`)."""

    BASE_S, MAX_S = 30.0, 600.0

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._until: dict[tuple, tuple[float, int]] = {}  # (machine, zone) -> (until, failures)

    def order(self, machine: str, zones: Sequence) -> list:
        """`zones` in their configured order, those backed off for `machine` last."""
        now = self._clock()
        return sorted(zones, key=lambda z: self._until.get((machine, z), (0.0, 0))[0] > now)

    def failed(self, machine: str, zone) -> None:
        _, failures = self._until.get((machine, zone), (0.0, 0))
        wait = min(self.MAX_S, self.BASE_S * 2 ** failures)
        self._until[(machine, zone)] = (self._clock() + wait, failures + 1)

    def succeeded(self, machine: str, zone) -> None:
        self._until.pop((machine, zone), None)


class NodeProvider(abc.ABC):
    """One cluster's view of one provider.

    `provider_config` is the YAML's `provider` section after defaults were merged.
    """

    installs_runtime = True
    """Whether nodes need this project's runtime installed on them (not so when they share this
    machine's Python environment, as `local` nodes do)."""

    runtime_extras: tuple = ()
    """Optional dependency groups of this project the nodes need too (e.g. a cloud SDK for the
    head's autoscaler), installed with the runtime."""

    def __init__(self, provider_config: Mapping, cluster_name: str, auth: Optional[Mapping] = None):
        self.provider_config = provider_config
        self.cluster_name = cluster_name
        self.auth = dict(auth or {})  # the config's `auth`: how to log in to nodes over SSH
        self.zone_backoff = ZoneBackoff(time.time)  # used by providers that launch in zones

    @abc.abstractmethod
    def nodes(self, tag_filters: Mapping[str, str]) -> list[str]:
        """Ids of this cluster's live (not terminated) nodes whose tags include all tag_filters."""

    @abc.abstractmethod
    def node_tags(self, node_id: str) -> dict[str, str]:
        """The node's tags."""

    @abc.abstractmethod
    def create(
        self, node_type: str, node_config: Mapping, tags: Mapping[str, str], count: int
    ) -> list[str]:
        """Create `count` nodes carrying `tags` (plus the cluster-name tag); return their ids."""

    @abc.abstractmethod
    def terminate(self, node_ids: Sequence[str]) -> None:
        """Remove the nodes and everything running on them. Unknown ids are ignored."""

    def preempted(self, node_ids: Sequence[str]) -> dict[str, str]:
        """Of these nodes (gone from `nodes`, or dead to the runtime), those the cloud took
        away (a spot reclaim, an eviction), each with the cloud's reason. Default: none; a
        provider without spot capacity has nothing to report."""
        return {}

    def on_demand(self, node_config: Mapping) -> Optional[Mapping]:
        """The node_config asking for on-demand capacity instead of spot (a spot type falling
        back after its spot failures), or None when it asks for no spot capacity."""
        return None

    @abc.abstractmethod
    def set_tags(self, node_id: str, tags: Mapping[str, str]) -> None:
        """Merge `tags` into the node's tags."""

    @abc.abstractmethod
    def internal_ip(self, node_id: str) -> str:
        """The address other nodes of the cluster use to reach this node."""

    @abc.abstractmethod
    def external_ip(self, node_id: str) -> Optional[str]:
        """The address the user's machine uses to reach this node, if any."""

    def bootstrap(self, config, echo: Callable[[str], None] = lambda _: None,
                  dry_run: bool = False):
        """Prepare the account (keys, network, firewall) and fill in derived config, reporting
        progress through `echo`. Returns the (possibly updated) ClusterConfig. With dry_run,
        only read: what would be created is reported instead (see Changes). Default: nothing
        to prepare."""
        if dry_run:
            echo(f"provider {self.provider_config['type']}: nothing to bootstrap")
        return config

    @abc.abstractmethod
    def command_runner(self, node_id: str) -> CommandRunner:
        """A runner that executes commands on the node."""
