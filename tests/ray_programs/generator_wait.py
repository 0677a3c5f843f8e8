"""ray.wait() takes a streaming generator: it is ready when its next item is."""
import time

import ray


@ray.remote
def ticks(n):
    for i in range(n):
        time.sleep(0.05)
        yield f"tick-{i}"


stream = ticks.remote(3)
for _ in range(3):
    ready, not_ready = ray.wait([stream], timeout=20)
    print(len(ready), len(not_ready), ray.get(next(stream)))
print(next(stream, "finished"))
