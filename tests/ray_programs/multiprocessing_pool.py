"""ray.util.multiprocessing.Pool in place of multiprocessing.Pool: map, imap, imap_unordered,
starmap, apply_async with a callback, an initializer run in each pool process, and an error
raised in a pool process caught as its own class."""
import os

from ray.util.multiprocessing import Pool


def square(x):
    return x * x


def set_greeting(greeting):
    os.environ["GREETING"] = greeting


def greet(name):
    return f"{os.environ['GREETING']}, {name}"


def check_positive(x):
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x


with Pool(processes=2, initializer=set_greeting, initargs=("hello",)) as pool:
    print(pool.map(square, range(10)))
    print(list(pool.imap(square, range(5))))
    print(sorted(pool.imap_unordered(square, range(5))))
    print(pool.starmap(pow, [(2, 5), (3, 3)]))
    print(pool.map(greet, ["ann", "bob"]))
    done = []
    result = pool.apply_async(square, (12,), callback=done.append)
    print(result.get(timeout=10), done, result.successful())
    try:
        pool.map(check_positive, [1, -2, 3])
    except ValueError as e:
        print("ValueError:", e, e.args)  # as raised, not wrapped
try:
    pool.map(square, [1])
except ValueError as e:
    print(e)
