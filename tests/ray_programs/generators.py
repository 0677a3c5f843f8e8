import ray


@ray.remote
def squares(n):
    for i in range(n):
        yield i * i


@ray.remote
def breaks_after_two(n):
    for i in range(n):
        if i == 2:
            raise ValueError("stream broke at item 2")
        yield i


@ray.remote(num_returns="dynamic")
def labels(n):
    for i in range(n):
        yield f"label-{i}"


@ray.remote
class Shouter:
    def words(self, text):
        for word in text.split():
            yield word.upper()


for ref in squares.remote(4):
    print(ray.get(ref))

stream = breaks_after_two.remote(5)
print(ray.get(next(stream)), ray.get(next(stream)))
try:
    ray.get(next(stream))
except ValueError as e:
    print("ValueError after 2 items:", "stream broke at item 2" in str(e))
print(next(stream, "exhausted"))

dynamic_ref = labels.remote(3)
print([ray.get(ref) for ref in ray.get(dynamic_ref)])

shouter = Shouter.remote()
print([ray.get(ref) for ref in shouter.words.remote("hello big world")])
