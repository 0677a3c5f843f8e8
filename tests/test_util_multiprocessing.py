"""`ray.util.multiprocessing.Pool` with `import runtime as ray`, used as multiprocessing.Pool code
uses it, on one module-scoped two-node cluster (head and worker on their own loopback addresses,
2 CPUs each): results and their order, chunks, callbacks, initializers, errors, closing."""

from __future__ import annotations

import os
import sys
import time

import cloudpickle
import pytest

from runtime.exceptions import RayActorError
from runtime.util.multiprocessing import Pool, TimeoutError
from tests.conftest import module_two_node_cluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
HEAD_IP, WORKER_IP = "127.0.12.1", "127.0.12.2"
CLUSTER_CPUS = 4  # the head's 2 and the worker's 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with module_two_node_cluster(tmp_path_factory, HEAD_IP, WORKER_IP, {"CPU": 2}) as nodes:
        yield nodes


@pytest.fixture
def pool(cluster):
    with Pool(2) as p:
        yield p


class QuotaError(Exception):
    """A user's own exception class, to see it re-raised as itself."""


def fail_on_three(x):
    if x == 3:
        raise QuotaError(f"no quota for {x}")
    return x


def remember(tag):
    """An initializer: its effect is the process's (its environment), as a pool process's is."""
    os.environ["POOL_INITIALIZED"] = os.environ.get("POOL_INITIALIZED", "") + tag + ";"


def initialized(_):
    return os.getpid(), os.environ.get("POOL_INITIALIZED", "")


# ---------------------------------------------------------------- map, starmap, chunks

def test_map_returns_results_in_the_order_of_the_iterable(pool):
    offset = 100  # a closure: pickled with the lambda
    slow_first = pool.map(lambda x: time.sleep(0.02 * (10 - x)) or x + offset, range(10))
    assert slow_first == [x + 100 for x in range(10)]
    assert pool.map(abs, []) == []


def test_default_pool_size_is_the_cluster_cpus_and_never_more(cluster):
    with Pool() as p:
        pids = p.map(lambda _: (time.sleep(0.3), os.getpid())[1], range(CLUSTER_CPUS),
                     chunksize=1)
    assert len(set(pids)) == CLUSTER_CPUS  # one chunk each, all at once: four processes
    with pytest.raises(ValueError, match="CPUs"):
        Pool(CLUSTER_CPUS + 1)


def test_starmap_unpacks_each_item_as_the_arguments(pool):
    assert pool.starmap(pow, [(2, 3), (3, 2), (10, 0)]) == [8, 9, 1]
    assert pool.starmap_async(divmod, [(7, 2), (9, 3)], chunksize=1).get(10) == [(3, 1), (3, 0)]


def test_a_chunk_runs_in_one_process(pool):
    pids = pool.map(initialized, range(6), chunksize=3)
    assert len({pid for pid, _ in pids[:3]}) == 1 and len({pid for pid, _ in pids[3:]}) == 1
    assert pids[0][0] != pids[3][0]  # two chunks, two processes
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(abs, [1], chunksize=0)


# ---------------------------------------------------------------- imap

def test_imap_yields_in_order_and_imap_unordered_as_results_finish(pool):
    assert list(pool.imap(lambda x: time.sleep(0.05 * (4 - x)) or x * 2, range(5))) == \
        [0, 2, 4, 6, 8]
    first = next(pool.imap_unordered(lambda x: time.sleep(x) or x, [1.5, 0.0]))
    assert first == 0.0  # the quick one did not wait for the slow one
    assert sorted(pool.imap_unordered(abs, range(-3, 3), chunksize=2)) == [0, 1, 1, 2, 2, 3]


def test_imap_next_with_a_timeout(pool):
    results = pool.imap(lambda x: time.sleep(x) or x, [1.0])
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        results.next(timeout=0.1)
    assert time.monotonic() - started < 0.8
    assert results.next(timeout=10) == 1.0
    with pytest.raises(StopIteration):
        results.next()


def test_imap_raises_a_failed_item_at_its_turn_and_goes_on(pool):
    results = pool.imap(fail_on_three, range(5))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(QuotaError, match="no quota for 3"):
        next(results)
    assert list(results) == [4]


# ---------------------------------------------------------------- apply, AsyncResult

def test_apply_and_apply_async_with_callbacks(pool):
    assert pool.apply(divmod, (7, 2)) == (3, 1)
    assert pool.apply(lambda a, b=0: a - b, (5,), {"b": 2}) == 3
    seen = []
    result = pool.apply_async(lambda: time.sleep(0.3) or "done", callback=seen.append)
    assert not result.ready()
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    with pytest.raises(TimeoutError):
        result.get(timeout=0.05)
    assert result.get(timeout=10) == "done" and seen == ["done"]  # the callback ran first
    assert result.ready() and result.successful()

    failed = pool.apply_async(fail_on_three, (3,), callback=seen.append,
                              error_callback=seen.append)
    failed.wait(10)
    assert failed.ready() and not failed.successful()
    assert isinstance(seen[-1], QuotaError) and len(seen) == 2  # error_callback only


def test_map_async_callback_gets_the_whole_list(pool):
    seen = []
    assert pool.map_async(lambda x: -x, range(5), callback=seen.append).get(10) == \
        [0, -1, -2, -3, -4]
    assert seen == [[0, -1, -2, -3, -4]]


# ---------------------------------------------------------------- errors

def test_an_error_in_the_function_is_raised_as_itself_with_the_remote_traceback(pool):
    with pytest.raises(QuotaError) as raised:
        pool.map(fail_on_three, range(6))
    assert raised.value.args == ("no quota for 3",)  # as raised, as Ray's Pool gives it back
    assert "in fail_on_three" in str(raised.value.__cause__)
    with pytest.raises(ZeroDivisionError):
        pool.apply(lambda: 1 / 0)
    assert pool.map(fail_on_three, [0, 1]) == [0, 1]  # the pool still works


def test_unsupported_actor_options_are_refused_by_name(cluster):
    with pytest.raises(NotImplementedError, match="label_selector"):
        Pool(1, ray_remote_args={"label_selector": {"zone": "a"}})
    with pytest.raises(ValueError, match="processes"):
        Pool(0)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(1, maxtasksperchild=0)


# ---------------------------------------------------------------- initializer, maxtasksperchild

def test_initializer_runs_once_in_each_process(cluster):
    with Pool(2, initializer=remember, initargs=("ready",)) as p:
        results = p.map(initialized, range(8), chunksize=1)
    assert len({pid for pid, _ in results}) == 2
    assert {tags for _, tags in results} == {"ready;"}


def test_maxtasksperchild_replaces_a_process_after_that_many_chunks(cluster):
    with Pool(1, initializer=remember, initargs=("fresh",), maxtasksperchild=2) as p:
        results = p.map(initialized, range(6), chunksize=1)
    pids = [pid for pid, _ in results]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
    assert {tags for _, tags in results} == {"fresh;"}  # each new one initialized once


# ---------------------------------------------------------------- close, join, terminate

def test_close_lets_submitted_work_finish_and_join_waits(cluster):
    p = Pool(2)
    with pytest.raises(ValueError, match="still running"):
        p.join()
    pending = p.map_async(lambda x: time.sleep(0.2) or x, range(4), chunksize=1)
    rest = p.imap(lambda x: x * 10, range(6))  # most of it not submitted yet
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(abs, (1,))
    p.join()
    assert pending.ready() and pending.get() == [0, 1, 2, 3]
    assert list(rest) == [0, 10, 20, 30, 40, 50]


def test_leaving_the_with_block_terminates_the_pool(cluster):
    with Pool(1, context=object()) as p:  # a multiprocessing context is ignored, as in Ray
        running = p.apply_async(time.sleep, (30,))
        assert p.apply_async(abs, (-1,)) is not None
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(abs, [1])
    with pytest.raises(RayActorError):
        running.get(timeout=10)  # its process was stopped
    p.join()
