"""__ray_ready__, __ray_terminate__ and was_current_actor_reconstructed."""
import os
import signal
import time

import ray


@ray.remote(max_restarts=1)
class Worker:
    def info(self):
        return os.getpid(), ray.get_runtime_context().was_current_actor_reconstructed


worker = Worker.remote()
print(ray.get(worker.__ray_ready__.remote()))
pid, restarted = ray.get(worker.info.remote())
print("restarted:", restarted)
os.kill(pid, signal.SIGKILL)
deadline = time.time() + 20
while True:
    try:
        print("restarted:", ray.get(worker.info.remote())[1])
        break
    except ray.exceptions.RayActorError:
        if time.time() > deadline:
            raise
        time.sleep(0.1)
worker.__ray_terminate__.remote()
try:
    ray.get(worker.info.remote())
except ray.exceptions.RayActorError:
    print("terminated")
