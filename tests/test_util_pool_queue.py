"""`ray.util.ActorPool` and `ray.util.queue.Queue` with `import runtime as ray`, as Ray programs use
them, on one module-scoped two-node cluster (a head and a worker on different loopback addresses;
the worker alone has the resource "special", so a queue can be put there with actor_options)."""

from __future__ import annotations

import asyncio
import queue as std_queue
import time

import pytest

import runtime as ray
from runtime.util import ActorPool
from runtime.util.queue import Empty, Full, Queue
from tests.conftest import module_two_node_cluster

HEAD_IP, WORKER_IP = "127.0.6.1", "127.0.6.2"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with module_two_node_cluster(tmp_path_factory, HEAD_IP, WORKER_IP, {"CPU": 2}) as nodes:
        yield nodes


@ray.remote
class Doubler:
    def double(self, value, delay=0.0):
        time.sleep(delay)
        return 2 * value


def call_double(actor, value):
    return actor.double.remote(value)


def call_double_after(actor, value_and_delay):
    return actor.double.remote(*value_and_delay)


# ---------------------------------------------------------------- ActorPool

def test_map_returns_results_in_the_order_of_the_values(cluster):
    pool = ActorPool([Doubler.remote() for _ in range(3)])
    values = [(i, 0.05 * (8 - i)) for i in range(8)]  # more values than actors; early ones slower
    assert list(pool.map(call_double_after, values)) == [2 * i for i in range(8)]
    assert not pool.has_next() and pool.has_free()


def test_map_unordered_returns_every_result_as_it_is_ready(cluster):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    results = list(pool.map_unordered(call_double_after, [(1, 1.0), (2, 0.0), (3, 0.0)]))
    assert sorted(results) == [2, 4, 6]
    assert results[0] == 4  # the quick call's result did not wait for the slow one


def test_submit_queues_while_every_actor_is_busy(cluster):
    a1 = Doubler.remote()
    pool = ActorPool([a1])
    pool.submit(call_double, 1)
    pool.submit(call_double, 2)  # waits for a1
    assert not pool.has_free()
    assert [pool.get_next(), pool.get_next()] == [2, 4]
    with pytest.raises(StopIteration):
        pool.get_next()


def test_get_next_timeout_raises_timeout_error_and_keeps_or_drops_the_call(cluster):
    pool = ActorPool([Doubler.remote()])
    pool.submit(call_double_after, (5, 1.5))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        pool.get_next(timeout=0.2)
    assert time.monotonic() - started < 1.2
    assert pool.get_next() == 10  # a timeout leaves the call in place

    pool.submit(call_double_after, (6, 1.5))
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next(timeout=0.2, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()  # given up: its actor takes new work

    pool.submit(call_double_after, (7, 1.5))
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.2)
    assert pool.get_next_unordered() == 14


def test_pop_idle_and_push(cluster):
    a1, a2 = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a1])
    pool.submit(call_double, 1)
    assert pool.pop_idle() is None  # a1 is busy
    assert pool.get_next() == 2
    assert pool.pop_idle() == a1
    assert pool.pop_idle() is None and not pool.has_free()

    pool.submit(call_double, 3)  # no actor: it waits in the pool
    assert not pool.has_next()
    pool.push(a2)  # takes the waiting submission at once
    assert pool.has_next() and pool.get_next() == 6
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a2)


# ---------------------------------------------------------------- Queue

@ray.remote
def produce(q, items):
    for item in items:
        q.put(item)
    return len(items)


@ray.remote
class Consumer:
    def __init__(self, q):
        self.q = q

    def take(self, n):
        return [self.q.get(timeout=30) for _ in range(n)]


def test_queue_carries_items_from_a_task_to_an_actor_in_order(cluster):
    q = ray.util.queue.Queue(actor_options={"resources": {"special": 1}})  # on the worker node
    consumer = Consumer.remote(q)
    taken = consumer.take.remote(10)  # blocks on the empty queue until the producer puts
    assert ray.get(produce.remote(q, list(range(10))), timeout=30) == 10
    assert ray.get(taken, timeout=30) == list(range(10))
    assert q.empty() and len(q) == 0
    q.shutdown()


def test_get_on_an_empty_queue_raises_empty(cluster):
    q = Queue()
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(std_queue.Empty):  # catchable as the standard library's Empty
        q.get_nowait()
    started = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.5)
    assert 0.4 < time.monotonic() - started < 5
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    q.put(1)
    assert q.get(timeout=0) == 1  # a zero timeout still takes what is there
    q.shutdown()


def test_put_on_a_full_queue_raises_full_or_waits_for_room(cluster):
    q = Queue(maxsize=2)
    q.put("a")
    q.put_nowait("b")
    assert q.full() and not q.empty() and len(q) == q.size() == q.qsize() == 2
    with pytest.raises(Full):
        q.put("c", block=False)
    with pytest.raises(std_queue.Full):
        q.put_nowait("c")
    with pytest.raises(Full):
        q.put("c", timeout=0.3)

    blocked = produce.remote(q, ["c"])  # a blocking put elsewhere: done once a get makes room
    assert ray.wait([blocked], timeout=0.5)[0] == []
    assert q.get() == "a"
    assert ray.get(blocked, timeout=30) == 1
    assert [q.get(), q.get()] == ["b", "c"]
    q.shutdown()


def test_batches_go_in_and_out_whole_or_not_at_all(cluster):
    q = Queue(maxsize=4)
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Full):
        q.put_nowait_batch([4, 5])
    assert q.size() == 3
    with pytest.raises(Empty):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(3) == [1, 2, 3]
    assert q.empty()
    with pytest.raises(TypeError):
        q.put_nowait_batch(7)
    q.shutdown()


def test_async_put_and_get(cluster):
    q = Queue()

    async def roundtrip():
        getter = asyncio.ensure_future(q.get_async(timeout=30))  # waits while the loop goes on
        await q.put_async("x")
        return await getter

    assert asyncio.run(roundtrip()) == "x"
    q.shutdown()


def test_shutdown_ends_the_queues_actor(cluster):
    q = Queue()
    q.put(1)
    actor = q.actor
    q.shutdown()
    with pytest.raises(ray.ActorDiedError):
        ray.get(actor.qsize.remote(), timeout=30)
    q.shutdown()  # a second time does nothing
