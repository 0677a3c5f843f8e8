"""A tree of tasks that block on their children, on a cluster of 2 nodes with 2 CPUs each."""
import ray


@ray.remote
def fib(n):
    if n < 2:
        return n
    return sum(ray.get([fib.remote(n - 1), fib.remote(n - 2)]))


@ray.remote
def quicksort(items):
    if len(items) <= 2:
        return sorted(items)
    pivot, rest = items[0], items[1:]
    low = quicksort.remote([x for x in rest if x < pivot])
    high = quicksort.remote([x for x in rest if x >= pivot])
    return ray.get(low) + [pivot] + ray.get(high)


@ray.remote
def leaf(i):
    return i * i


@ray.remote
def gather_with_wait(n):
    pending = [leaf.remote(i) for i in range(n)]
    done = []
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        done.extend(ray.get(ready))
    return sorted(done)


ray.init()
print(int(ray.cluster_resources()["CPU"]))
print(ray.get(fib.remote(6)))
print(ray.get(quicksort.remote([5, 3, 8, 1, 9, 2, 7, 4, 6, 0, 11, 10])))
print(ray.get([gather_with_wait.remote(4) for _ in range(6)]))
