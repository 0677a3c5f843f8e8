"""Object ids are hex strings (so `ObjectRef(bytes.fromhex(ref.hex()))` gives the ref back, as in
Ray): a `put` object's is a fresh 32-digit id; a task's results are its task id alone (one
result) or followed by 8 digits: the result's index, a generator item's index with the top bit
set, or all ones for an actor's creation."""

from __future__ import annotations

import uuid

TASK_ID_LENGTH = 32
_ITEM_BIT = 1 << 31
_ACTOR_READY = "f" * 8


def new_id() -> str:
    return uuid.uuid4().hex


def return_id(task_id: str, index: int) -> str:
    return f"{task_id}{index:08x}"


def item_id(task_id: str, index: int) -> str:
    return f"{task_id}{_ITEM_BIT | index:08x}"


def actor_ready_id(actor_id: str) -> str:
    return actor_id + _ACTOR_READY


def task_of(object_id: str) -> str:
    """The task that makes the object (for a `put` object: its own id)."""
    return object_id[:TASK_ID_LENGTH]
