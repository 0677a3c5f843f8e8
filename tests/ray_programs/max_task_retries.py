import os
import tempfile

import ray

scratch = tempfile.mkdtemp()


@ray.remote(max_restarts=1, max_task_retries=1)
class Fragile:
    def __init__(self):
        self.started_in = os.getpid()

    def work(self, marker):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the actor's process dies on the first attempt
        return "work done"

    def pid(self):
        return os.getpid()


actor = Fragile.remote()
first_pid = ray.get(actor.pid.remote())
print(ray.get(actor.work.remote(os.path.join(scratch, "fragile"))))
print("restarted:", ray.get(actor.pid.remote()) != first_pid)

other = Fragile.options(max_task_retries=0).remote()
try:
    ray.get(other.work.remote(os.path.join(scratch, "other")))
except ray.exceptions.RayActorError:
    print("without max_task_retries: RayActorError")
print(ray.get(other.work.remote(os.path.join(scratch, "other"))))
