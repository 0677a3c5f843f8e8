import time

import ray
from ray.util import ActorPool
from ray.util.actor_pool import ActorPool as ActorPoolFromItsModule


@ray.remote
class Multiplier:
    def __init__(self, factor):
        self.factor = factor

    def apply(self, x):
        time.sleep(0.02 * (x % 3))
        return x * self.factor


pool = ActorPool([Multiplier.remote(10), Multiplier.remote(10)])
print(list(pool.map(lambda actor, v: actor.apply.remote(v), range(6))))
print(sorted(pool.map_unordered(lambda actor, v: actor.apply.remote(v), range(6))))
pool.submit(lambda actor, v: actor.apply.remote(v), 7)
pool.submit(lambda actor, v: actor.apply.remote(v), 8)
print(pool.has_next(), pool.get_next(), pool.get_next(), pool.has_next())
print(ActorPoolFromItsModule is ActorPool)
