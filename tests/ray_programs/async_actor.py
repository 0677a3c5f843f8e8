import asyncio

import ray


@ray.remote
def double(x):
    return 2 * x


@ray.remote
class Service:
    async def __init__(self, name):
        await asyncio.sleep(0.2)
        self.name = name
        self.ready = True
        self.event = asyncio.Event()

    async def describe(self):
        return f"{self.name} ready={self.ready}"

    async def doubled(self, x):
        return await double.remote(x)

    async def doubled_all(self, values):
        return await asyncio.gather(*[double.remote(v) for v in values])

    async def wait_for_signal(self):
        await self.event.wait()  # answered only if signal() runs meanwhile: calls interleave
        return "signalled"

    async def signal(self):
        self.event.set()


service = Service.remote("svc")
print(ray.get(service.describe.remote()))
print(ray.get(service.doubled.remote(21)))
print(ray.get(service.doubled_all.remote([1, 2, 3])))
waiting = service.wait_for_signal.remote()
service.signal.remote()
print(ray.get(waiting, timeout=20))


async def main():
    return await service.doubled.remote(5)

print(asyncio.run(main()))
