"""The object store with real processes: large objects in shared memory, read without a copy,
moved between nodes in chunks, spilled to disk when the store is full, freed when unreferenced."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

import runtime as ray
from runtime import node, object_store
from tests.conftest import free_port, two_node_cluster, wait_for

HEAD_IP, WORKER_IP = "127.0.5.1", "127.0.5.2"
MB = 1 << 20
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module


def mapped_file(array: np.ndarray) -> str:
    """The file whose mapping in this process holds the array's data ("" when none: a copy)."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return fields[5] if len(fields) > 5 else ""
    return ""


@ray.remote
def inspect(array):
    """What a task sees of its array argument: where its data lies, writable or not, its sum."""
    return mapped_file(array), array.flags.writeable, float(array.sum())


@ray.remote
def ones(n):
    return np.ones(n)


@ray.remote
def add(a, b):
    return a + b


def store_files(directory) -> list:
    return sorted(p.name for p in Path(directory).glob("*")) if Path(directory).exists() else []


@pytest.fixture
def private_cluster(runtime_home):
    """A single-node cluster of this driver's own, with a 50 MB store; yields its store directory."""
    ray.init(num_cpus=2, object_store_memory=50 * MB)
    directory = ray.client.connected().store_directory()
    try:
        yield directory
    finally:
        ray.shutdown()
    assert not Path(directory).exists()  # nothing left in /dev/shm


@pytest.fixture
def two_nodes(runtime_home, monkeypatch):
    with two_node_cluster(monkeypatch, runtime_home, HEAD_IP, WORKER_IP, {"CPU": 1}) as cluster:
        yield cluster


def test_large_array_comes_back_from_shared_memory_read_only(runtime_home):
    ray.init(num_cpus=1)
    directory = ray.client.connected().store_directory()
    try:
        array = np.random.default_rng(0).random(100 * MB // 8)
        ref = ray.put(array)
        first, second = ray.get(ref), ray.get(ref)
        assert np.array_equal(first, array)
        for got in (first, second):  # each get maps the same file: no copy of the data
            assert mapped_file(got) == f"{directory}/{ref.hex()}"
            assert not got.flags.writeable
        with pytest.raises(ValueError):
            first[0] = 1.0
    finally:
        ray.shutdown()
    assert not Path(directory).exists()


def test_task_reads_a_large_argument_and_writes_a_large_result_in_shared_memory(private_cluster):
    array = np.arange(10 * MB // 8, dtype=np.float64)
    where, writable, total = ray.get(inspect.remote(ray.put(array)))
    assert where.startswith(f"{private_cluster}/") and not writable
    assert total == float(array.sum())
    result = ones.remote(5 * MB // 8)
    got = ray.get(result)
    assert got.sum() == 5 * MB // 8
    assert mapped_file(got) == f"{private_cluster}/{result.hex()}"


def test_small_objects_stay_out_of_shared_memory(private_cluster):
    ref = ray.put(np.arange(10))
    assert list(ray.get(ref)) == list(range(10))
    assert ref.hex() not in store_files(private_cluster)


def test_large_objects_move_between_nodes_into_the_other_store(two_nodes):
    array = np.arange(20 * MB // 8, dtype=np.float64)
    on_worker = inspect.options(resources={"special": 1})
    where, _, total = ray.get(on_worker.remote(ray.put(array)))
    head_store = ray.client.connected().store_directory()
    assert where.startswith(str(object_store.SHM_ROOT / object_store.DIR_PREFIX))
    assert not where.startswith(f"{head_store}/")  # a copy in the worker node's own store
    assert total == float(array.sum())
    back = ones.options(resources={"special": 1}).remote(20 * MB // 8)
    got = ray.get(back)
    assert got.sum() == 20 * MB // 8 and mapped_file(got) == f"{head_store}/{back.hex()}"


def test_full_store_spills_least_recently_used_objects_and_restores_them(private_cluster):
    arrays = [np.full(20 * MB // 8, i, dtype=np.float64) for i in range(3)]
    refs = [ray.put(a) for a in arrays]  # 60 MB into 50 MB: the first goes to disk
    in_shm = store_files(private_cluster)
    assert refs[0].hex() not in in_shm and {r.hex() for r in refs[1:]} <= set(in_shm)
    spilled = [p.name for p in Path(ray.client.connected().local_node.directory).glob("spill/*/*")]
    assert refs[0].hex() in spilled
    first = ray.get(refs[0])  # restored into shared memory, spilling the least recent other
    assert np.array_equal(first, arrays[0])
    assert mapped_file(first) == f"{private_cluster}/{refs[0].hex()}"
    assert [np.array_equal(ray.get(r), a) for r, a in zip(refs, arrays)] == [True] * 3


def test_full_store_with_nothing_to_spill_raises_and_keeps_serving(private_cluster, tmp_path):
    with pytest.raises(ray.ObjectStoreFullError, match=r"\d+ bytes\) is larger than the object store"):
        ray.put(np.zeros(60 * MB // 8))

    @ray.remote
    def hold(array, started, release):
        Path(started).touch()
        while not Path(release).exists():
            time.sleep(0.05)
        return float(array[0])

    started, release = tmp_path / "started", tmp_path / "release"
    running = hold.remote(ray.put(np.ones(30 * MB // 8)), str(started), str(release))
    wait_for(started.exists, 30, "the task to start")
    with pytest.raises(ray.ObjectStoreFullError, match="by running tasks and cannot be spilled"):
        ray.put(np.zeros(30 * MB // 8))  # the running task's argument cannot make room
    release.touch()
    assert ray.get(running) == 1.0
    assert ray.get(ray.put(np.zeros(30 * MB // 8))).sum() == 0  # now it can be spilled
    assert ray.get(add.remote(1, 2)) == 3


def test_objects_are_freed_when_their_refs_go_and_when_the_driver_exits(runtime_home, monkeypatch,
                                                                        tmp_path):
    head = node.start_head(free_port(HEAD_IP), {"CPU": 2}, ip=HEAD_IP, node_id="head")
    directory = object_store.shm_dir(head.pids["agent"])
    try:
        ray.init(address=head.gcs_address)
        ref = ray.put(np.zeros(MB))
        assert store_files(directory) == [ref.hex()]
        del ref
        wait_for(lambda: not store_files(directory), 30, "the dropped object to be freed")

        ray.get(ones.remote(MB))  # a large result nobody keeps a ref to
        wait_for(lambda: not store_files(directory), 30, "the dropped result to be freed")

        @ray.remote
        def slow_sum(array, release):
            while not Path(release).exists():
                time.sleep(0.05)
            return float(array.sum())

        argument = ray.put(np.ones(MB))
        argument_id = argument.hex()
        result = slow_sum.remote(argument, str(tmp_path / "release"))
        del argument  # the queued or running task still needs it
        time.sleep(1.0)
        assert argument_id in store_files(directory)
        (tmp_path / "release").touch()
        assert ray.get(result) == float(MB)
        wait_for(lambda: argument_id not in store_files(directory), 30, "the argument to be freed")

        kept = ray.put(np.ones(MB))
        assert kept.hex() in store_files(directory)
        ray.shutdown()  # what the driver owns goes with it
        assert not store_files(directory)
    finally:
        ray.shutdown()
        node.stop_node()
    assert not directory.exists()


def test_store_of_a_killed_agent_is_removed_by_stop(runtime_home):
    head = node.start_head(free_port(HEAD_IP), {"CPU": 1}, ip=HEAD_IP, node_id="head")
    directory = object_store.shm_dir(head.pids["agent"])
    assert directory.exists()
    os.kill(head.pids["agent"], 9)
    node.stop_node()
    assert not directory.exists()
