"""Concurrency groups: each group of an async actor runs at most its size of calls at once."""
import asyncio

import ray


@ray.remote(concurrency_groups={"io": 2, "compute": 1})
class Service:
    def __init__(self):
        self.running = {"io": 0, "compute": 0, "default": 0}
        self.peak = dict(self.running)

    async def _work(self, group):
        self.running[group] += 1
        self.peak[group] = max(self.peak[group], self.running[group])
        await asyncio.sleep(0.1)
        self.running[group] -= 1

    @ray.method(concurrency_group="io")
    async def fetch(self):
        await self._work("io")

    @ray.method(concurrency_group="compute")
    async def crunch(self):
        await self._work("compute")

    async def report(self):
        await self._work("default")
        return self.peak


service = Service.remote()
calls = [service.fetch.remote() for _ in range(4)] + [service.crunch.remote() for _ in range(3)]
calls += [service.report.options(concurrency_group="compute").remote()]
ray.get(calls)
print(ray.get(service.report.remote()))
