"""The node lifecycle's transition table: every pair of states, and the state on the tags."""

from __future__ import annotations

import itertools

import pytest

from autoscaler import lifecycle as L
from launcher import tags as T

LEGAL = sorted((a or "new", b) for a, b in L.EDGES)
ILLEGAL = sorted((a or "new", b) for a, b in itertools.product((None, *L.STATES), L.STATES)
                 if (a, b) not in L.EDGES)


def _node(state: str) -> L.NodeLifecycle:
    return L.NodeLifecycle("n1") if state == "new" else L.NodeLifecycle("n1", state, 5.0)


@pytest.mark.parametrize("before,after", LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_a_legal_move_enters_the_state_and_adds_a_step(before, after):
    moved = L.transition(_node(before), after, "because", 10.0)
    assert (moved.state, moved.since) == (after, 10.0)
    assert moved.history[-1] == L.Step(after, 10.0, "because")


@pytest.mark.parametrize("before,after", ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_an_illegal_move_is_refused_naming_the_node_and_both_states(before, after):
    with pytest.raises(L.IllegalTransition, match=f"n1: {before} -> {after} is not a legal move"):
        L.transition(_node(before), after, "because", 10.0)


def test_every_edge_says_why_and_every_state_is_reachable_from_new():
    assert all(reason.strip() for reason in L.EDGES.values())
    reached, frontier = set(), {None}
    while frontier:
        frontier = {b for a, b in L.EDGES if a in frontier} - reached
        reached |= frontier
    assert reached == set(L.STATES)


def test_final_states_have_no_way_out():
    assert not [edge for edge in L.EDGES if edge[0] in L.FINAL]


def test_the_state_and_its_time_round_trip_through_tags():
    node = L.transition(L.NodeLifecycle("n1", L.ALLOCATED, 1.0), L.INSTALLING, "setup", 1234.9)
    tags = L.tags_of(node)
    assert tags == {T.TAG_NODE_STATUS: "installing", T.TAG_STATE_SINCE: "1234"}
    again = L.from_tags("n1", tags)
    assert (again.state, again.since) == ("installing", 1234.0)


@pytest.mark.parametrize("tags", [{}, {T.TAG_NODE_STATUS: "up-to-date"},
                                  {T.TAG_NODE_STATUS: "terminated"},
                                  {T.TAG_NODE_STATUS: "running", T.TAG_STATE_SINCE: "x"}],
                         ids=["none", "old-version", "final", "bad-time"])
def test_tags_without_a_usable_state_read_as_an_allocated_instance(tags):
    node = L.from_tags("n1", tags)
    assert node.state in (L.ALLOCATED, L.RUNNING) and node.since >= 0
    assert L.can_move(node.state, L.TERMINATING)


def test_record_writes_the_new_state_to_the_instance():
    written = {}

    class Provider:
        def set_tags(self, node_id, tags):
            written[node_id] = tags

    node = L.record(Provider(), L.NodeLifecycle("n1", L.RUNNING, 1.0), L.DRAINING, "idle", 50.0)
    assert node.state == L.DRAINING and written == {"n1": L.tags_of(node)}
    L.record(Provider(), L.NodeLifecycle("n2", L.TERMINATING, 1.0), L.TERMINATED, "gone", 60.0)
    assert "n2" not in written  # a gone instance has no tags to write
