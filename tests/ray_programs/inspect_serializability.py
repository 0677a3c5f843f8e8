"""ray.util.inspect_serializability: which variable keeps a function or an object from being
serialized, and what holds it (the report goes to a buffer: it shows memory addresses)."""
import io
import threading

import ray
from ray.util import inspect_serializability

lock = threading.Lock()


def test():
    with lock:
        return 1


class DBClient:
    def __init__(self, url):
        self.url = url
        self.lock = threading.Lock()


client = DBClient("db://a")


def query():
    return client.url


def parent_name(failure):
    return getattr(failure.parent, "__name__", type(failure.parent).__name__)


def check(obj, **kwargs):
    report = io.StringIO()
    ok, failures = inspect_serializability(obj, print_file=report, **kwargs)
    print(ok, sorted((f.name, parent_name(f)) for f in failures))


check(lambda x: x + 1)
check(test, name="test")
check(client, name="client")
check(query, name="query")
check(query, name="query", depth=1)
ray.util.register_serializer(DBClient, serializer=lambda c: c.url, deserializer=DBClient)
check(query, name="query")
ray.util.deregister_serializer(DBClient)
