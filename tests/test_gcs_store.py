"""The GCS store (runtime.gcs_store) and a GCS servicer started again from the same file."""

from __future__ import annotations

import sys
import time

import pytest

from runtime.exceptions import RuntimeClusterError
from runtime.gcs import GcsServicer
from runtime.gcs_store import RedisStore, SqliteStore, open_store
from runtime.generated import runtime_pb2 as pb

TOKEN = "t" * 64


class _Context:
    def is_active(self):
        return True


CTX = _Context()


class _FakeRedis:
    """The five hash commands RedisStore uses, over dicts (no Redis server here)."""

    def __init__(self):
        self.hashes: dict[str, dict] = {}

    def hset(self, name, key, value):
        self.hashes.setdefault(name, {})[key.encode()] = value

    def hget(self, name, key):
        return self.hashes.get(name, {}).get(key.encode())

    def hdel(self, name, key):
        self.hashes.get(name, {}).pop(key.encode(), None)

    def hgetall(self, name):
        return dict(self.hashes.get(name, {}))

    def scan_iter(self, match):
        return [n for n in self.hashes if n.startswith(match.rstrip("*"))]

    def delete(self, name):
        self.hashes.pop(name, None)


@pytest.fixture(params=["sqlite", "redis-protocol"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return SqliteStore(str(tmp_path / "gcs.sqlite3"))
    return RedisStore(_FakeRedis())


def test_tables_round_trip_and_are_separate(store):
    store.put("kv", "b", b"2")
    store.put("kv", "a", b"1")
    store.put("actors", "a", b"actor")
    store.put("kv", "b", b"two")  # an update
    assert store.get("kv", "b") == b"two" and store.get("kv", "missing") is None
    assert sorted(store.scan("kv")) == [("a", b"1"), ("b", b"two")]
    store.delete("kv", "a")
    store.delete("kv", "never")
    assert list(store.scan("kv")) == [("b", b"two")]
    assert list(store.scan("actors")) == [("a", b"actor")]
    store.clear()
    assert not list(store.scan("kv")) and not list(store.scan("actors"))


def test_sqlite_keeps_writes_and_their_order_across_reopening(tmp_path):
    path = str(tmp_path / "gcs.sqlite3")
    first = SqliteStore(path)
    for key in ["z", "a", "m"]:
        first.put("groups", key, key.encode())
    first.put("groups", "z", b"updated")  # keeps its place
    again = open_store(f"sqlite:///{path}")
    assert list(again.scan("groups")) == [("z", b"updated"), ("a", b"a"), ("m", b"m")]


@pytest.mark.parametrize("url, message", [
    ("sqlite://relative.db", "expected sqlite:///absolute/path"),
    ("etcd://host:2379", "expected sqlite:///PATH, redis://HOST:PORT"),
    ("redis://127.0.0.1:1", "needs the `redis` package"),
], ids=["relative-sqlite", "unknown-scheme", "redis-without-package"])
def test_unusable_urls_fail_in_one_line_naming_gcs_storage(url, message, monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis fails, installed or not
    with pytest.raises(RuntimeClusterError, match="gcs_storage") as info:
        open_store(url)
    assert message in str(info.value) and "\n" not in str(info.value)


def _node(instance: str) -> pb.NodeInfo:
    return pb.NodeInfo(node_id="n1", address="127.0.0.1:1", ip="127.0.0.1", node_type="cpu",
                       total={"CPU": 2.0}, instance_id=instance)


def _fill(gcs: GcsServicer) -> None:
    gcs.RegisterNode(_node("first"), CTX)
    gcs.RegisterActor(pb.ActorInfo(actor_id="a1", name="counter", namespace="ns",
                                   class_name="Counter", methods=["add"]), CTX)
    gcs.UpdateActor(pb.ActorInfo(actor_id="a1", state="ALIVE", node_id="n1",
                                 address="127.0.0.1:1", pid=42), CTX)
    gcs.RegisterActor(pb.ActorInfo(actor_id="a2", name="gone", namespace="ns"), CTX)
    gcs.UpdateActor(pb.ActorInfo(actor_id="a2", state="DEAD", death_cause="killed"), CTX)
    gcs.KvPut(pb.KvRequest(key="fn:1", value=b"pickled", overwrite=True), CTX)
    gcs.CreatePlacementGroup(pb.PlacementGroupInfo(  # GPUs nobody has: it stays PENDING
        pg_id="pg1", name="group", strategy="PACK", bundles=[pb.Bundle(resources={"GPU": 1})]), CTX)
    gcs.RequestResources(pb.ResourceRequest(bundles=[pb.Bundle(resources={"CPU": 8})]), CTX)


def test_a_gcs_started_from_the_same_file_has_the_tables(tmp_path):
    path = str(tmp_path / "gcs.sqlite3")
    _fill(GcsServicer(TOKEN, store=SqliteStore(path)))
    gcs = GcsServicer(TOKEN, store=SqliteStore(path))

    actor = gcs.GetActor(pb.ActorRequest(name="counter", namespace="ns"), CTX)
    assert actor.found and actor.info.actor_id == "a1" and actor.info.state == "ALIVE"
    assert (actor.info.address, actor.info.pid, list(actor.info.methods)) == ("127.0.0.1:1", 42, ["add"])
    assert not gcs.GetActor(pb.ActorRequest(name="gone", namespace="ns"), CTX).found
    assert gcs.GetActor(pb.ActorRequest(actor_id="a2"), CTX).info.death_cause == "killed"
    assert gcs.RegisterActor(pb.ActorInfo(actor_id="a3", name="counter", namespace="ns"), CTX).error
    assert gcs.KvGet(pb.KvRequest(key="fn:1"), CTX).value == b"pickled"
    group = gcs.GetPlacementGroup(pb.PlacementGroupRequest(name="group"), CTX)
    assert group.found and group.info.pg_id == "pg1" and group.info.state == "PENDING"
    state = gcs.GetClusterState(pb.Empty(), CTX)
    assert [n.node_id for n in state.nodes] == ["n1"] and state.requested[0].resources["CPU"] == 8


def test_nodes_read_back_register_again_or_die_after_the_node_timeout(tmp_path):
    path = str(tmp_path / "gcs.sqlite3")
    _fill(GcsServicer(TOKEN, store=SqliteStore(path)))
    gcs = GcsServicer(TOKEN, node_timeout_s=0.3, store=SqliteStore(path))
    beat = pb.HeartbeatRequest(node_id="n1", available={"CPU": 2.0})
    assert gcs.Heartbeat(beat, CTX).reregister  # and publish its objects again
    gcs.RegisterNode(_node("first"), CTX)  # the same agent: nothing of it is lost
    assert not gcs.Heartbeat(beat, CTX).reregister
    assert gcs.GetActor(pb.ActorRequest(name="counter", namespace="ns"), CTX).info.state == "ALIVE"

    gcs.RegisterNode(_node("second"), CTX)  # its agent restarted: what it hosted is gone
    assert gcs.GetActor(pb.ActorRequest(actor_id="a1"), CTX).info.state == "DEAD"
    assert not gcs.GetActor(pb.ActorRequest(name="counter", namespace="ns"), CTX).found

    silent = GcsServicer(TOKEN, node_timeout_s=0.3, store=SqliteStore(str(tmp_path / "b.sqlite3")))
    _fill(silent)
    silent = GcsServicer(TOKEN, node_timeout_s=0.3, store=SqliteStore(str(tmp_path / "b.sqlite3")))
    time.sleep(0.4)  # its node never speaks again
    assert not silent.GetClusterState(pb.Empty(), CTX).nodes
    assert silent.GetActor(pb.ActorRequest(actor_id="a1"), CTX).info.state == "DEAD"


def test_a_node_read_back_counts_as_busy_until_it_speaks(tmp_path):
    """Its idleness in the store is stale: the autoscaler must not remove a node that may have
    taken work while the GCS was down (seen as tasks killed with their node under GCS restarts)."""
    path = str(tmp_path / "gcs.sqlite3")
    gcs = GcsServicer(TOKEN, store=SqliteStore(path))
    gcs.RegisterNode(_node("first"), CTX)
    gcs.Heartbeat(pb.HeartbeatRequest(node_id="n1", available={"CPU": 2.0}, idle_seconds=90), CTX)
    gcs.DrainNodes(pb.DrainRequest(node_ids=["n1"]), CTX)  # saves the node, idle 90 s
    idle = lambda g: [n.idle_seconds for n in g.GetClusterState(pb.Empty(), CTX).nodes]  # noqa: E731
    assert idle(gcs) == [90]

    restarted = GcsServicer(TOKEN, store=SqliteStore(path))
    assert idle(restarted) == [-1]
    restarted.RegisterNode(_node("first"), CTX)
    assert idle(restarted) == [-1]  # registered again, not yet heard
    restarted.Heartbeat(pb.HeartbeatRequest(node_id="n1", available={"CPU": 2.0}, idle_seconds=3),
                        CTX)
    assert idle(restarted) == [3]
