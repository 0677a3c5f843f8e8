"""GPU devices: each task and actor sees only the devices it was given, through
CUDA_VISIBLE_DEVICES and get_gpu_ids(), as Ray programs expect."""

from __future__ import annotations

import os

import pytest

import runtime as ray
from runtime.gpus import GpuSlots


def test_whole_gpus_go_to_one_holder_each_and_come_back():
    slots = GpuSlots(["0", "1"])
    first = slots.allocate(1)
    second = slots.allocate(1)
    assert sorted(first + second) == ["0", "1"]
    assert slots.allocate(1) is None
    slots.release(first, 1)
    assert slots.allocate(1) == first


def test_fractions_share_a_device_before_breaking_into_an_empty_one():
    slots = GpuSlots(["0", "1"])
    a, b = slots.allocate(0.5), slots.allocate(0.5)
    assert a == b  # best fit: the half-used device first
    assert slots.allocate(2) is None  # one device is shared, so two whole ones are not free
    assert slots.allocate(1) is not None
    slots.release(a, 0.5)
    assert slots.allocate(0.75) is None  # the shared device is still half used
    slots.release(b, 0.5)
    assert slots.allocate(0.75) == a


def test_more_than_one_gpu_must_be_whole():
    assert GpuSlots(["0", "1", "2"]).allocate(1.5) is None


@ray.remote(num_gpus=1)
class GpuHolder:
    def devices(self):
        return os.environ["CUDA_VISIBLE_DEVICES"], ray.get_gpu_ids()


@ray.remote
def devices():
    return os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_gpu_ids()


@pytest.fixture
def two_gpu_node(runtime_home, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")  # the node was given these two devices
    ray.init(num_cpus=4, num_gpus=2)
    yield
    ray.shutdown()


def test_each_gpu_task_and_actor_sees_only_its_own_devices(two_gpu_node):
    holder = GpuHolder.remote()
    held, held_ids = ray.get(holder.devices.remote())
    assert held in ("4", "7") and held_ids == [int(held)]
    other = "7" if held == "4" else "4"
    # while the actor holds its device, every GPU task gets the other one, halves sharing it
    assert ray.get(devices.options(num_gpus=1).remote()) == (other, [int(other)])
    assert ray.get([devices.options(num_gpus=0.5).remote() for _ in range(2)]) == \
        [(other, [int(other)])] * 2
    assert ray.get(devices.remote()) == ("", [])  # CPU work on a GPU node sees no GPU

    ray.kill(holder)  # its device comes back: a task can now have both
    both = ray.get(devices.options(num_gpus=2).remote(), timeout=30)
    assert sorted(both[0].split(",")) == ["4", "7"] and sorted(both[1]) == [4, 7]


def test_the_driver_has_no_gpu_ids(two_gpu_node):
    assert ray.get_gpu_ids() == []
