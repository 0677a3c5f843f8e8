"""Objects between this node and the others: pulling what this node waits for from the nodes that
hold it, and telling the GCS where new objects live.

The agent says what it wants (`want`: arguments of queued work, objects a get or wait here awaits)
and decides, through callbacks, what the object manager cannot: whether a large object's waiting
tasks go to it instead (`go_to_data`, scheduling by locality), and what to do about an object whose
every copy died (`lost`, recovery).

Lock discipline: `_lock` guards the sets and lists below and the stub cache; it is a leaf: nothing
is called while holding it, so the agent may take it while holding its own lock.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from runtime import rpc
from runtime.generated import runtime_pb2 as pb
from runtime.generated import runtime_pb2_grpc as pb_grpc
from runtime.object_store import ObjectStore

log = logging.getLogger("node_agent")

LOOKUP_WAIT_S = 0.5  # a lookup waits this long at the GCS for locations to appear


class ObjectManager:
    def __init__(self, node_id: str, store: ObjectStore, gcs, token: str, io: ThreadPoolExecutor, *,
                 go_to_data: Callable[[pb.ObjectLocation], bool], lost: Callable[[str], None],
                 rebuilding: Callable[[], set]):
        self._node_id = node_id
        self._store = store
        self._gcs = gcs
        self._token = token
        self._io = io
        self._go_to_data = go_to_data  # True: no task here waits for it any more, do not fetch
        self._lost = lost
        self._rebuilding = rebuilding  # lost objects whose task already runs again
        self._lock = threading.Lock()
        self._wanted: set[str] = set()
        self._fetching: set[str] = set()
        self._want_event = threading.Event()
        self._new_locations: list[str] = []
        self._locations_ready = threading.Event()
        self._agents: dict[str, pb_grpc.NodeAgentStub] = {}

    def agent(self, address: str) -> pb_grpc.NodeAgentStub:
        """The (cached) stub of another node's agent."""
        with self._lock:
            if address not in self._agents:
                self._agents[address] = pb_grpc.NodeAgentStub(rpc.make_channel(address, self._token))
            return self._agents[address]

    def want(self, object_ids) -> None:
        if object_ids:
            with self._lock:
                self._wanted.update(object_ids)
            self._want_event.set()

    def unwant(self, object_id: str) -> None:
        with self._lock:
            self._wanted.discard(object_id)

    def added(self, object_id: str) -> None:
        """A new object is in this node's store: the GCS hears of it in the next batch."""
        with self._lock:
            self._new_locations.append(object_id)
        self._locations_ready.set()

    def republish(self, listing: list) -> None:
        """Every object here (the store's listing), for a GCS that restarted without locations."""
        with self._lock:
            self._new_locations.extend(object_id for object_id, _, _ in listing)
        self._locations_ready.set()

    def location_loop(self, stopping: threading.Event) -> None:
        """Tell the GCS where new objects live, batching whatever arrived since the last call."""
        while not stopping.is_set():
            self._locations_ready.wait(1.0)
            self._locations_ready.clear()
            with self._lock:
                batch, self._new_locations = self._new_locations, []
            if batch:
                try:
                    self._gcs.AddObjectLocations(pb.ObjectLocationsUpdate(
                        node_id=self._node_id, object_ids=batch,
                        sizes=[self._store.size(i) for i in batch]), timeout=10)
                except Exception as exc:
                    log.warning("publishing object locations failed: %s", exc)
                    with self._lock:
                        self._new_locations.extend(batch)

    def pull_loop(self, stopping: threading.Event) -> None:
        """Fetch the objects this node waits for from the nodes that hold them."""
        while not stopping.is_set():
            with self._lock:
                self._wanted = {i for i in self._wanted if not self._store.contains(i)}
                ids = sorted(self._wanted - self._fetching)
            if not ids:
                self._want_event.wait(1.0)
                self._want_event.clear()
                continue
            rebuilding = self._rebuilding()
            try:
                reply = self._gcs.WaitObjectLocations(
                    pb.WaitLocationsRequest(object_ids=ids, timeout=LOOKUP_WAIT_S), timeout=10)
            except Exception as exc:
                log.warning("object lookup failed: %s", exc)
                time.sleep(0.5)
                continue
            for object_id in set(reply.lost) - rebuilding:
                self._io.submit(self._lost, object_id)
            for location in reply.locations:
                if location.node_id == self._node_id or self._go_to_data(location):
                    continue
                with self._lock:
                    self._fetching.add(location.object_id)
                self._io.submit(self._fetch, location)
            if not reply.locations and not set(reply.lost) - rebuilding:
                self._want_event.wait(0.05)
                self._want_event.clear()

    def _fetch(self, location: pb.ObjectLocation) -> None:
        try:
            chunks = self.agent(location.address).FetchObject(
                pb.FetchObjectRequest(object_id=location.object_id), timeout=300)
            first = next(chunks, None)
            if first is not None and first.found:
                rest = (c.data for c in chunks)
                self._store.put_chunks(location.object_id, first.size,
                                       itertools.chain([first.data], rest))
        except Exception as exc:
            log.warning("fetching %s from %s failed: %s", location.object_id, location.address, exc)
        finally:
            with self._lock:
                self._fetching.discard(location.object_id)
            self._want_event.set()
