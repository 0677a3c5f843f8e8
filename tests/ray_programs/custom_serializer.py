"""ray.util.register_serializer for a class that cannot be pickled as it is."""
import threading

import ray


class Connection:
    def __init__(self, url):
        self.url = url
        self.lock = threading.Lock()  # not picklable


try:
    ray.put(Connection("db://a"))
except TypeError:
    print("cannot serialize by default")

ray.util.register_serializer(Connection, serializer=lambda c: c.url,
                             deserializer=lambda url: Connection(url))


@ray.remote
def describe(conn):
    return f"{type(conn).__name__} to {conn.url}"


print(ray.get(describe.remote(Connection("db://b"))))
print(ray.get(ray.put(Connection("db://c"))).url)
ray.util.deregister_serializer(Connection)
