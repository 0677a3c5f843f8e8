"""An actor whose __init__ raises is dead: its method calls raise RayActorError (ActorDiedError)."""
import ray


@ray.remote
class Misconfigured:
    def __init__(self, path):
        raise FileNotFoundError(f"no config at {path}")

    def ping(self):
        return "pong"


actor = Misconfigured.remote("/nowhere.toml")
for _ in range(2):
    try:
        ray.get(actor.ping.remote(), timeout=20)
        print("answered")
    except ray.exceptions.RayActorError as e:
        print("RayActorError", isinstance(e, ray.exceptions.ActorDiedError), "no config at /nowhere.toml" in str(e))
    except Exception as e:
        print("other error:", type(e).__name__)
