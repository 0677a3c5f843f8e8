"""Where a ready task goes, decided on a snapshot: here, another node, or nowhere yet.

The node agent keeps the state (its ready queue, this node's resource ledger, the cluster view
from its last heartbeat) and calls `place` under its lock; nothing here does I/O or locks, so the
policy is tested on plain values (tests/test_scheduler.py).

`NodeResources` is this node's ledger: totals, free amounts, GPU devices, and the placement-group
bundles reserved here, whose plain resources become resources named after the group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

from runtime.generated import runtime_pb2 as pb
from runtime.gpus import GpuSlots
from runtime.placement import bundle_resources, plain_amount
from runtime.resources import EPSILON, add, fits, shape_key, subtract

MAX_HOPS = 4  # a task forwarded this often stays where it is
HERE = "here"  # place(): run on this node
NOWHERE = "nowhere"  # place(): can never run (tied to a node that is gone)


@dataclass
class Task:
    spec: pb.TaskSpec
    need: dict
    missing: set
    key: tuple = ()  # scheduling_class(), computed once
    gpu_ids: Optional[list] = None  # the devices it got here; None on a node without GPUs
    blocked: int = 0  # get/wait calls it is blocked in now
    lent: dict = field(default_factory=dict)  # its CPUs, given back to the node while blocked


def return_ids(spec: pb.TaskSpec) -> list:
    return list(spec.return_ids) or [spec.return_id]


def scheduling_class(task: Task) -> tuple:
    """Tasks of one class are placed alike: same kind, resources (placed and held), and whether
    they may still be forwarded."""
    if not task.key:
        spec = task.spec
        task.key = (spec.kind, shape_key(task.need), shape_key(spec.hold_resources),
                    spec.hops >= MAX_HOPS, spec.node_affinity, spec.node_affinity_soft)
    return task.key


@dataclass
class NodeResources:
    """This node's resources; `available` goes down as work is placed here, up as it ends."""

    total: dict
    available: dict = field(default_factory=dict)
    gpus: Optional[GpuSlots] = None  # the devices behind the GPU count; None without GPUs
    bundles: dict = field(default_factory=dict)  # (pg id, bundle index) -> resources reserved here

    def __post_init__(self):
        self.available = self.available or dict(self.total)

    def fits(self, task: Task) -> bool:
        """Room here now, counting GPU devices (fractions may fragment them)."""
        if not fits(task.need, self.available):
            return False
        if self.gpus is None:
            return True
        held = task.spec.hold_resources if task.spec.kind == pb.TaskSpec.ACTOR_CREATION else task.need
        return self.gpus.can_allocate(plain_amount(held, "GPU"))

    def claim(self, need: dict) -> Optional[list]:
        """Take `need` from the free resources; the GPU devices it gets (None without GPUs)."""
        subtract(self.available, need)
        return self.gpus.allocate(plain_amount(need, "GPU")) if self.gpus is not None else None

    def release(self, need: dict, gpu_ids: Optional[list]) -> None:
        """Give back what `claim` took; a placement group removed meanwhile took its own back."""
        add(self.available, {k: v for k, v in need.items() if k in self.total})
        if gpu_ids:
            self.gpus.release(gpu_ids, plain_amount(need, "GPU"))

    def release_task(self, task: Task) -> None:
        """A running task ended: give back what it holds (less what it has lent out)."""
        self.take_back(task, force=True)
        self.release(task.need, task.gpu_ids)

    def lend(self, task: Task) -> bool:
        """The running task blocks in get/wait: its CPUs (plain or a bundle's) go back to the node
        until it returns, as in Ray, so the work it waits for can run. True when some came free."""
        task.blocked += 1
        if task.blocked > 1:
            return False
        task.lent = {k: v for k, v in task.need.items()
                     if (k == "CPU" or k.startswith("CPU_group_")) and k in self.total}
        add(self.available, task.lent)
        return bool(task.lent)

    def take_back(self, task: Task, force: bool = False) -> None:
        """The task returned from its last get/wait (or ended: `force`): it holds its CPUs again,
        even when that leaves the node over-committed for a while (Ray does the same)."""
        task.blocked = 0 if force else max(0, task.blocked - 1)
        if task.blocked == 0 and task.lent:
            subtract(self.available, task.lent)
            task.lent = {}

    def reserve_bundles(self, pg_id: str, indexes: list, bundles: list[dict]) -> bool:
        """Set the bundles aside (all or none): their plain resources leave the free amounts and
        come back named after the group, for the work scheduled into it."""
        needed: dict = {}
        for bundle in bundles:
            add(needed, bundle)
        keys = [(pg_id, i) for i in indexes]
        if any(k in self.bundles for k in keys) or not fits(needed, self.available) or \
                (self.gpus is not None and not self.gpus.can_allocate(needed.get("GPU", 0))):
            return False
        subtract(self.available, needed)
        offered = bundle_resources(pg_id, indexes, bundles)
        add(self.total, offered)
        add(self.available, offered)
        self.bundles.update(zip(keys, bundles))
        return True

    def return_bundles(self, pg_id: str, indexes: list) -> dict:
        """The group's bundles here go back to the node; returns the group resources they had
        offered (work holding any of them loses its place)."""
        keys = [(pg_id, i) for i in indexes if (pg_id, i) in self.bundles]
        bundles = [self.bundles.pop(k) for k in keys]
        offered = bundle_resources(pg_id, [i for _, i in keys], bundles)
        for name, amount in offered.items():
            self.total[name] = self.total.get(name, 0.0) - amount
            self.available[name] = self.available.get(name, 0.0) - amount
            if self.total[name] <= EPSILON:
                self.total.pop(name)
                self.available.pop(name, None)
        for bundle in bundles:
            add(self.available, bundle)
        return offered


def place(task: Task, here: NodeResources, view: Mapping[str, pb.NodeInfo],
          node_id: str = "") -> Union[str, pb.NodeInfo, None]:
    """HERE, another node of `view` (the others' free resources as last heard), None: wait
    here, or NOWHERE. Work that needs no GPU avoids GPU nodes while a node without GPUs has room,
    so GPUs stay free for the work that needs them; among nodes with room, the one with most
    spare CPU. Work tied to a node (`node_affinity`, this node being `node_id`) goes there, or
    waits for room there, or (soft) goes where the rest would; tied to a node that is not alive,
    it can never run, unless soft."""
    affinity = task.spec.node_affinity
    if affinity:
        tied = _tied(task, here, view, node_id)
        if tied is not None or not task.spec.node_affinity_soft:
            return tied
    room = [] if task.spec.hops >= MAX_HOPS else [
        n for n in view.values() if fits(task.need, n.available)]
    needs_gpu = task.need.get("GPU", 0) > 0
    if not needs_gpu:
        cpu_only = [n for n in room if n.total.get("GPU", 0) <= 0]
        if cpu_only and here.total.get("GPU", 0) > 0:
            return max(cpu_only, key=_spare_cpu)
    if here.fits(task):
        return HERE
    if room:
        return max(room, key=lambda n: (needs_gpu or n.total.get("GPU", 0) <= 0, *_spare_cpu(n)))
    return None


def _tied(task: Task, here: NodeResources, view: Mapping[str, pb.NodeInfo], node_id: str):
    """Placement by node affinity: HERE, the node, NOWHERE (hard, node gone), or None (wait,
    or for soft affinity: place it as any other work)."""
    soft = task.spec.node_affinity_soft
    if task.spec.node_affinity == node_id:
        return HERE if here.fits(task) else None
    target = view.get(task.spec.node_affinity)
    if target is None:
        return None if soft else NOWHERE
    if soft and not fits(task.need, target.available):
        return None
    return target


def _spare_cpu(node: pb.NodeInfo) -> tuple:
    return node.available.get("CPU", 0.0), node.node_id
