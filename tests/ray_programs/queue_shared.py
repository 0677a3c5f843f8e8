import ray
from ray.util.queue import Empty, Queue


@ray.remote
def produce(queue, count):
    for i in range(count):
        queue.put(i * i)
    queue.put(None)
    return f"produced {count}"


@ray.remote
class Consumer:
    def __init__(self, queue):
        self.queue = queue

    def drain(self):
        items = []
        while (item := self.queue.get(timeout=20)) is not None:
            items.append(item)
        return items


queue = Queue()
consumer = Consumer.remote(queue)
drained = consumer.drain.remote()
print(ray.get(produce.remote(queue, 5)))
print(ray.get(drained))
try:
    queue.get(block=False)
except Empty:
    print("Empty")
print(queue.empty(), queue.qsize())
