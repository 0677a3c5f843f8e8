"""Where the GCS keeps its tables so that they survive its restart.

A store is a set of named tables of key -> bytes with four operations: put, get, delete, scan.
The GCS writes through to it before each RPC returns and reads everything back when it starts.
Backends, chosen by URL (`cluster start --head --gcs-storage URL` or $CLUSTER_GCS_STORAGE, which
reach the GCS as its `--storage`):

- `sqlite:///path/to/file` (the head's default, `<runtime dir>/gcs.sqlite3`): one SQLite file in
  WAL mode; each write is its own transaction, committed before the call returns. synchronous=NORMAL
  keeps every commit across a crash of the process (not of the machine's power).
- `redis://host:port[/db]`: one Redis hash per table (needs the `redis` package), as Ray's GCS
  fault tolerance does, so a new head can take the tables over from a lost one.
- `memory://`: nothing survives; for a GCS run in-process (tests).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Iterator, Protocol

from runtime.exceptions import RuntimeClusterError

STORAGE_ENV = "CLUSTER_GCS_STORAGE"  # the URL for `cluster start --head` without --gcs-storage


class Store(Protocol):
    def put(self, table: str, key: str, value: bytes) -> None: ...

    def get(self, table: str, key: str) -> bytes | None: ...

    def delete(self, table: str, key: str) -> None: ...

    def scan(self, table: str) -> Iterator[tuple[str, bytes]]:
        """Every (key, value) of the table; SQLite and memory give them in insertion order."""

    def clear(self) -> None:
        """Drop every table: the cluster they described is gone."""


class MemoryStore:
    def __init__(self):
        self._tables: dict[str, dict[str, bytes]] = {}

    def put(self, table, key, value):
        self._tables.setdefault(table, {})[key] = value

    def get(self, table, key):
        return self._tables.get(table, {}).get(key)

    def delete(self, table, key):
        self._tables.get(table, {}).pop(key, None)

    def scan(self, table):
        return iter(list(self._tables.get(table, {}).items()))

    def clear(self):
        self._tables.clear()


class SqliteStore:
    def __init__(self, path: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection, shared by the GCS's server threads
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS entries (tbl TEXT NOT NULL, key TEXT NOT NULL, "
                         "value BLOB NOT NULL, PRIMARY KEY (tbl, key))")

    def put(self, table, key, value):
        with self._lock:  # an upsert keeps the row's rowid: scans stay in insertion order
            self._db.execute("INSERT INTO entries VALUES (?, ?, ?) ON CONFLICT (tbl, key) "
                             "DO UPDATE SET value = excluded.value", (table, key, value))

    def get(self, table, key):
        with self._lock:
            row = self._db.execute("SELECT value FROM entries WHERE tbl = ? AND key = ?",
                                   (table, key)).fetchone()
        return None if row is None else bytes(row[0])

    def delete(self, table, key):
        with self._lock:
            self._db.execute("DELETE FROM entries WHERE tbl = ? AND key = ?", (table, key))

    def scan(self, table):
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM entries WHERE tbl = ? ORDER BY rowid",
                                    (table,)).fetchall()
        return ((key, bytes(value)) for key, value in rows)

    def clear(self):
        with self._lock:
            self._db.execute("DELETE FROM entries")


class RedisStore:
    PREFIX = "cluster-gcs:"  # one hash per table: cluster-gcs:<table>

    def __init__(self, client):
        self._redis = client

    def put(self, table, key, value):
        self._redis.hset(self.PREFIX + table, key, value)

    def get(self, table, key):
        return self._redis.hget(self.PREFIX + table, key)

    def delete(self, table, key):
        self._redis.hdel(self.PREFIX + table, key)

    def scan(self, table):
        return ((k.decode() if isinstance(k, bytes) else k, v)
                for k, v in self._redis.hgetall(self.PREFIX + table).items())

    def clear(self):
        for name in self._redis.scan_iter(match=self.PREFIX + "*"):
            self._redis.delete(name)


def default_url(runtime_dir: Path) -> str:
    return f"sqlite:///{Path(runtime_dir) / 'gcs.sqlite3'}"


def open_store(url: str) -> Store:
    """The store a URL names; a RuntimeClusterError (one line, naming gcs_storage) if it cannot be
    used."""
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.startswith("/"):
            raise RuntimeClusterError(f"gcs_storage {url!r}: expected sqlite:///absolute/path")
        return SqliteStore(path)
    if url.startswith(("redis://", "rediss://")):
        try:
            import redis
        except ImportError:
            raise RuntimeClusterError(f"gcs_storage {url!r} needs the `redis` package on the head "
                                      "(pip install redis)") from None
        client = redis.Redis.from_url(url)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise RuntimeClusterError(f"gcs_storage {url!r}: cannot reach Redis ({exc})") from None
        return RedisStore(client)
    if url == "memory://":
        return MemoryStore()
    raise RuntimeClusterError(f"gcs_storage {url!r}: expected sqlite:///PATH, redis://HOST:PORT[/DB] "
                              "or memory://")
