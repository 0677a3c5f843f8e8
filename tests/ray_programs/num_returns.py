import ray


@ray.remote
class Splitter:
    @ray.method(num_returns=2)
    def split(self, text):
        head, tail = text.split(",", 1)
        return head, tail

    def pair(self, x):
        return x, -x


@ray.remote
def triple(x):
    return x, x * 2, x * 3


splitter = Splitter.remote()
left, right = splitter.split.remote("key,value")
print(ray.get(left), ray.get(right))
plus, minus = splitter.pair.options(num_returns=2).remote(7)
print(ray.get([plus, minus]), ray.get(splitter.pair.remote(7)))
one, two, three = triple.options(num_returns=3).remote(5)
print(ray.get([one, two, three]))
print(ray.get(triple.remote(1)))
