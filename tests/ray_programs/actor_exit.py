import sys

import ray


@ray.remote(max_restarts=2)
class Worker:
    def ping(self):
        return "pong"

    def leave(self):
        ray.actor.exit_actor()

    def quit(self):
        sys.exit(0)


for how in ["leave", "quit"]:
    worker = Worker.remote()
    print(how, ray.get(worker.ping.remote()))
    try:
        ray.get(getattr(worker, how).remote(), timeout=20)
        print(how, "returned")
    except ray.exceptions.RayActorError:
        print(how, "-> RayActorError")
    for _ in range(2):
        try:
            ray.get(worker.ping.remote(), timeout=20)
            print(how, "later call answered: restarted")
        except ray.exceptions.RayActorError:
            print(how, "later call -> RayActorError")
