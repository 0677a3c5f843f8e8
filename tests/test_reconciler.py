"""The reconciler's rules on plain values: observations in, lifecycle moves and actions out.

No provider, GCS or clock: each test writes down what the cloud lists (instances and the states
on their tags), what the GCS reports and what the actuators finished, and reads the decision.
"""

from __future__ import annotations

import pytest

from autoscaler import lifecycle as L
from autoscaler import planner, reactions
from autoscaler.actions import Drain, Install, Launch, Result, Terminate
from autoscaler.reconciler import Instance, Observations, Policy, RuntimeNode, reconcile

NOW = 10_000.0
CONFIG = planner.PlannerConfig(
    {"head": planner.NodeTypeSpec("head", {"CPU": 1}, 0, 0),
     "cpu": planner.NodeTypeSpec("cpu", {"CPU": 2}, 0, 4),
     "big": planner.NodeTypeSpec("big", {"CPU": 8}, 0, 2)},
    "head", max_workers=10, upscaling_speed=1.0, idle_timeout_s=60.0)
HEAD = Instance("head", "head", True, L.NodeLifecycle("head", L.RUNNING, 0.0))
HEAD_ALIVE = RuntimeNode("head", {"CPU": 1}, {"CPU": 1}, -1.0)


def worker(node_id, state, age=0.0, node_type="cpu", request="", **hashes):
    return Instance(node_id, node_type, False, L.NodeLifecycle(node_id, state, NOW - age),
                    request, {k.replace("_", "-"): v for k, v in hashes.items()})


def alive(node_id, idle_s=-1.0, cpus=2.0):
    return RuntimeNode(node_id, {"CPU": cpus}, {"CPU": cpus if idle_s >= 0 else 0.0}, idle_s)


def observe(*instances, runtime=(), demand=0, **kwargs) -> Observations:
    tasks = (planner.ResourceDemand({"CPU": 2}, demand),) if demand else ()
    return Observations(CONFIG, {i.node_id: i for i in (HEAD, *instances)},
                        {n.node_id: n for n in (HEAD_ALIVE, *runtime)},
                        planner.Demand(tasks=tasks), **kwargs)


def states(decision) -> dict:
    return {i: n.state for i, n in decision.nodes.items() if i != "head"}


def actions(decision, kind):
    return [a for a in decision.actions if isinstance(a, kind)]


def terminated(decision) -> list:
    return sorted(i for a in actions(decision, Terminate) for i in a.node_ids)


# -- launching ---------------------------------------------------------------------------------

def test_queued_demand_launches_with_a_request_id_and_the_demand_as_reason():
    decision = reconcile(observe(demand=3, id_prefix="abc"), NOW)
    [launch] = actions(decision, Launch)
    assert (launch.node_type, launch.count, launch.requested_at) == ("cpu", 3, NOW)
    assert launch.request_id.startswith("abc-") and "CPU: 2" in launch.reason


def test_a_launch_in_flight_is_not_launched_again():
    inflight = Launch("r1", "cpu", 3, "demand", NOW - 5)
    # one of its three instances is listed already, two are still to come
    decision = reconcile(observe(worker("w1", L.REQUESTED, request="r1"), demand=3,
                                 launches={"r1": inflight}), NOW)
    assert actions(decision, Launch) == [] and states(decision) == {"w1": L.REQUESTED}


def test_a_finished_launch_allocates_its_instances_and_installs_them():
    launch = Launch("r1", "cpu", 2, "demand", NOW - 5)
    decision = reconcile(observe(worker("w1", L.REQUESTED, request="r1"),
                                 worker("w2", L.REQUESTED, request="r1"),
                                 results=(Result(launch, node_ids=("w1", "w2")),)), NOW)
    assert states(decision) == {"w1": L.INSTALLING, "w2": L.INSTALLING}
    assert [a.node_id for a in actions(decision, Install)] == ["w1", "w2"]
    assert [m.node.state for m in decision.moves] == [L.ALLOCATED, L.ALLOCATED, L.INSTALLING,
                                                      L.INSTALLING]
    assert any("launched 2 x cpu (w1, w2)" in e for e in decision.events)


@pytest.mark.parametrize("kind", [reactions.CAPACITY, reactions.QUOTA, reactions.CONFIG])
def test_a_refused_launch_backs_its_type_off_and_the_demand_moves_to_the_next_type(kind):
    launch = Launch("r1", "cpu", 2, "demand", NOW - 5)
    decision = reconcile(observe(demand=2, results=(Result(launch, error_kind=kind,
                                                           error="no cpu"),)), NOW)
    assert reactions.blocked(decision.backoffs, "cpu", NOW).kind == kind
    assert [(a.node_type, a.count) for a in actions(decision, Launch)] == [("big", 1)]
    failed = [m for m in decision.moves if not m.on_instance]
    assert [(m.node.node_id, m.node.state) for m in failed] == [("r1", L.ALLOCATION_FAILED)]
    assert any(f"failed ({kind})" in e and "no cpu" in e for e in decision.events)


def test_a_backed_off_type_keeps_its_nodes_but_does_not_grow():
    backoffs = reactions.react({}, "big", reactions.CAPACITY, "none", NOW)
    backoffs = reactions.react(backoffs, "cpu", reactions.CAPACITY, "none", NOW)
    decision = reconcile(observe(worker("w1", L.RUNNING), runtime=[alive("w1")], demand=5,
                                 backoffs=backoffs), NOW)
    assert actions(decision, Launch) == [] and states(decision) == {"w1": L.RUNNING}
    assert decision.plan.unfulfilled


def test_an_auth_error_stops_every_launch_until_it_expires():
    backoffs = reactions.react({}, "cpu", reactions.AUTH, "AuthFailure", NOW)
    assert actions(reconcile(observe(demand=2, backoffs=backoffs), NOW + 1), Launch) == []
    later = NOW + reactions.STOP_S + 1
    assert actions(reconcile(observe(demand=2, backoffs=backoffs), later), Launch)


def test_a_successful_launch_ends_the_back_off_of_its_type():
    backoffs = reactions.react({}, "cpu", reactions.CAPACITY, "none", NOW - 100)
    launch = Launch("r1", "cpu", 1, "demand", NOW - 5)
    decision = reconcile(observe(worker("w1", L.REQUESTED, request="r1"), backoffs=backoffs,
                                 results=(Result(launch, node_ids=("w1",)),)), NOW)
    assert "cpu" not in decision.backoffs


# -- installing --------------------------------------------------------------------------------

def test_installs_end_in_running_or_install_failed_and_a_failed_node_is_replaced():
    a, b = Install("w1", "cpu"), Install("w2", "cpu")
    decision = reconcile(observe(worker("w1", L.INSTALLING), worker("w2", L.INSTALLING), demand=2,
                                 results=(Result(a, detail="setup, start in 3.0s"),
                                          Result(b, error_kind="other", error="exit 7"))), NOW)
    assert states(decision) == {"w1": L.RUNNING, "w2": L.TERMINATING}
    assert terminated(decision) == ["w2"]
    assert [(a.node_type, a.count) for a in actions(decision, Launch)] == [("cpu", 1)]
    history = [s.state for s in decision.nodes["w2"].history]
    assert history[-2:] == [L.INSTALL_FAILED, L.TERMINATING]


def test_an_install_that_outlives_its_timeout_fails_and_the_node_goes():
    decision = reconcile(observe(worker("w1", L.INSTALLING, age=901),
                                 in_flight=frozenset({"w1"})), NOW)
    assert terminated(decision) == ["w1"]
    assert decision.nodes["w1"].history[-2:][0].reason == "still installing after 900s"


def test_a_result_for_a_node_no_longer_installing_is_ignored():
    decision = reconcile(observe(worker("w1", L.TERMINATING),
                                 results=(Result(Install("w1", "cpu")),)), NOW)
    assert states(decision) == {"w1": L.TERMINATING} and decision.moves == ()


# -- restart-resume: only the tags and the GCS survive the autoscaler ---------------------------

def test_after_a_restart_an_instance_whose_launch_ended_unseen_is_adopted_and_installed():
    decision = reconcile(observe(worker("w1", L.REQUESTED, request="gone")), NOW)
    assert states(decision) == {"w1": L.INSTALLING}
    assert [a.node_id for a in actions(decision, Install)] == ["w1"]


def test_after_a_restart_an_install_nobody_runs_is_resumed_without_a_move():
    decision = reconcile(observe(worker("w1", L.INSTALLING, age=30)), NOW)
    assert [a.node_id for a in actions(decision, Install)] == ["w1"] and decision.moves == ()
    assert any("resuming the setup of w1" in e for e in decision.events)


def test_an_install_still_running_is_left_alone():
    decision = reconcile(observe(worker("w1", L.INSTALLING, age=30),
                                 in_flight=frozenset({"w1"})), NOW)
    assert decision.actions == () and decision.moves == ()


def test_after_a_restart_a_drain_in_progress_is_finished():
    decision = reconcile(observe(worker("w1", L.DRAINING, age=5), runtime=[alive("w1", 90)]), NOW)
    assert terminated(decision) == ["w1"]


def test_a_termination_still_listed_is_asked_again_after_a_while():
    assert terminated(reconcile(observe(worker("w1", L.TERMINATING, age=10)), NOW)) == []
    assert terminated(reconcile(observe(worker("w1", L.TERMINATING, age=61)), NOW)) == ["w1"]


# -- running nodes -----------------------------------------------------------------------------

def test_a_dead_node_leaves_at_once_with_the_reason_and_its_work_is_relaunched_for():
    decision = reconcile(observe(worker("w1", L.RUNNING, age=500), worker("w2", L.RUNNING),
                                 runtime=[alive("w2")], dead=frozenset({"w1"}), demand=1), NOW)
    assert terminated(decision) == ["w1"]
    assert decision.nodes["w1"].history[-1].reason == "node died (heartbeats missed)"
    assert [(a.node_type, a.count) for a in actions(decision, Launch)] == [("cpu", 1)]


def test_a_node_whose_agent_died_and_came_back_is_kept():
    decision = reconcile(observe(worker("w1", L.RUNNING, age=500), runtime=[alive("w1")],
                                 dead=frozenset({"w1"})), NOW)
    assert terminated(decision) == [] and states(decision) == {"w1": L.RUNNING}


def test_a_node_that_never_joins_is_replaced_after_the_join_timeout_only():
    policy = Policy(join_s=300)
    assert terminated(reconcile(observe(worker("w1", L.RUNNING, age=200), policy=policy),
                                NOW)) == []
    decision = reconcile(observe(worker("w1", L.RUNNING, age=301), policy=policy), NOW)
    assert terminated(decision) == ["w1"]
    assert "did not join the cluster within 300s" in decision.nodes["w1"].history[-1].reason


def test_one_broken_node_never_terminates_healthy_ones():
    decision = reconcile(observe(worker("bad", L.INSTALL_FAILED), worker("w1", L.RUNNING),
                                 worker("w2", L.RUNNING), worker("w3", L.INSTALLING),
                                 runtime=[alive("w1"), alive("w2")], dead=frozenset({"gone"}),
                                 in_flight=frozenset({"w3"})), NOW)
    assert terminated(decision) == ["bad"]
    assert states(decision) == {"bad": L.TERMINATING, "w1": L.RUNNING, "w2": L.RUNNING,
                                "w3": L.INSTALLING}


def test_the_head_is_never_moved_or_terminated_by_the_autoscaler():
    dead_head = Observations(CONFIG, {"head": HEAD}, {}, planner.Demand(),
                             dead=frozenset({"head"}))
    decision = reconcile(dead_head, NOW)
    assert decision.moves == () and terminated(decision) == []


# -- scale-down --------------------------------------------------------------------------------

def test_an_idle_worker_is_drained_first_then_removed_on_a_later_step():
    first = reconcile(observe(worker("w1", L.RUNNING, age=500), runtime=[alive("w1", 120)]), NOW)
    assert states(first) == {"w1": L.DRAINING} and actions(first, Drain) == [Drain(("w1",))]
    assert terminated(first) == []
    draining = worker("w1", L.DRAINING, age=0)
    assert terminated(reconcile(observe(draining, runtime=[alive("w1", 121)]), NOW)) == []
    later = reconcile(observe(worker("w1", L.DRAINING, age=2), runtime=[alive("w1", 122)]), NOW)
    assert terminated(later) == ["w1"]


def test_a_draining_worker_that_got_work_is_kept_and_undrained():
    decision = reconcile(observe(worker("w1", L.DRAINING, age=2), runtime=[alive("w1", -1)]), NOW)
    assert states(decision) == {"w1": L.RUNNING}
    assert actions(decision, Drain) == [Drain(("w1",), undrain=True)] and terminated(decision) == []


def test_a_vanished_instance_is_recorded_as_terminated_with_the_reason():
    known = {"w1": L.NodeLifecycle("w1", L.RUNNING, 1.0), "w2": L.NodeLifecycle("w2", L.TERMINATING, 2.0)}
    decision = reconcile(observe(known=known), NOW)
    gone = {m.node.node_id: m.node.history[-1].reason for m in decision.moves}
    assert gone == {"w1": "vanished from the provider's listing", "w2": "terminated"}
    assert all(not m.on_instance and m.node.state == L.TERMINATED for m in decision.moves)


def test_the_same_observations_give_the_same_decision():
    obs = observe(worker("w1", L.RUNNING, age=500), worker("w2", L.ALLOCATED),
                  runtime=[alive("w1", 120)], demand=4, id_prefix="p")
    assert reconcile(obs, NOW) == reconcile(obs, NOW)


# -- outdated workers --------------------------------------------------------------------------

WANTED = {"cpu": {"launch-hash": "L2", "runtime-hash": "R1", "setup-hash": "S2"}}


def test_outdated_workers_are_replaced_a_quarter_of_max_workers_at_a_time():
    old = [worker(f"w{i}", L.RUNNING, launch_hash="L1", runtime_hash="R1", setup_hash="S2")
           for i in range(6)]
    decision = reconcile(observe(*old, runtime=[alive(f"w{i}", -1) for i in range(6)],
                                 wanted=WANTED), NOW)
    draining = sorted(i for i, s in states(decision).items() if s == L.DRAINING)
    assert draining == ["w0", "w1"]  # max_workers 10 x 0.25
    assert "launch is outdated" in decision.nodes["w0"].history[-1].reason
    assert terminated(decision) == []  # they still run work: it ends first


def test_an_outdated_worker_goes_once_idle_or_at_its_drain_timeout_and_its_room_is_not_planned_on():
    busy = worker("w1", L.DRAINING, age=10, launch_hash="L1", runtime_hash="R1")
    decision = reconcile(observe(busy, runtime=[alive("w1", -1)], wanted=WANTED, demand=1), NOW)
    assert terminated(decision) == [] and states(decision) == {"w1": L.DRAINING}
    assert [(a.node_type, a.count) for a in actions(decision, Launch)] == [("cpu", 1)]
    idle = worker("w1", L.DRAINING, age=10, runtime_hash="R0", launch_hash="L2")
    assert terminated(reconcile(observe(idle, runtime=[alive("w1", 5)], wanted=WANTED), NOW)) == ["w1"]
    late = worker("w1", L.DRAINING, age=121, launch_hash="L1", runtime_hash="R1")
    decision = reconcile(observe(late, runtime=[alive("w1", -1)], wanted=WANTED), NOW)
    assert terminated(decision) == ["w1"]
    assert decision.nodes["w1"].history[-1].reason == "replaced: its launch is outdated"


def test_a_worker_whose_setup_changed_is_set_up_again_in_place():
    changed = worker("w1", L.RUNNING, launch_hash="L2", runtime_hash="R1", setup_hash="S1")
    decision = reconcile(observe(changed, runtime=[alive("w1", -1)], wanted=WANTED), NOW)
    assert states(decision) == {"w1": L.INSTALLING}
    assert actions(decision, Install) == [Install("w1", "cpu")] and terminated(decision) == []


def test_an_up_to_date_worker_is_left_alone():
    fine = worker("w1", L.RUNNING, launch_hash="L2", runtime_hash="R1", setup_hash="S2")
    decision = reconcile(observe(fine, runtime=[alive("w1", -1)], wanted=WANTED), NOW)
    assert decision.moves == () and decision.actions == ()


# -- preemption --------------------------------------------------------------------------------

def test_a_spot_node_the_cloud_took_away_is_preempted_then_terminated_and_replaced():
    known = {"w1": L.NodeLifecycle("w1", L.RUNNING, 1.0)}
    decision = reconcile(observe(known=known, demand=1,
                                 preempted={"w1": "Server.SpotInstanceTermination"}), NOW)
    steps = [(m.node.state, m.node.history[-1].reason) for m in decision.moves]
    assert steps == [(L.PREEMPTED, "Server.SpotInstanceTermination"), (L.TERMINATED, "terminated")]
    assert terminated(decision) == ["w1"]  # whatever the cloud left of it
    assert [(a.node_type, a.count) for a in actions(decision, Launch)] == [("cpu", 1)]
    assert any("w1" in e and "was Server.SpotInstanceTermination" in e for e in decision.events)


def test_a_listed_node_the_cloud_deallocated_is_preempted_not_dead():
    decision = reconcile(observe(worker("w1", L.RUNNING, age=100), dead=frozenset({"w1"}),
                                 preempted={"w1": "evicted by Azure (spot VM deallocated)"}), NOW)
    assert [s.state for s in decision.nodes["w1"].history[-2:]] == [L.PREEMPTED, L.TERMINATING]
    assert terminated(decision) == ["w1"]


def test_a_node_terminated_on_purpose_is_not_called_preempted():
    known = {"w1": L.NodeLifecycle("w1", L.TERMINATING, 1.0)}
    decision = reconcile(observe(known=known, preempted={"w1": "whatever"}), NOW)
    assert [m.node.state for m in decision.moves] == [L.TERMINATED]


def test_a_spot_type_falls_back_to_on_demand_after_its_spot_failures_and_back_later():
    gone = {f"w{i}": L.NodeLifecycle(f"w{i}", L.RUNNING, 1.0) for i in range(2)}
    types = {"w0": "cpu", "w1": "cpu"}
    first = reconcile(observe(known=gone, node_types=types, fallback_after={"cpu": 3},
                              preempted={i: "taken" for i in gone}, demand=2), NOW)
    assert [a.on_demand for a in actions(first, Launch)] == [False]  # two failures of three
    refused = Result(Launch("r9", "cpu", 1, "demand", NOW - 1), error_kind=reactions.CAPACITY,
                     error="no spot capacity")
    second = reconcile(observe(results=(refused,), spot_failures=first.spot_failures,
                               fallback_after={"cpu": 3}, demand=2), NOW + 1)
    assert len(second.spot_failures["cpu"]) == 3
    assert [a.node_type for a in actions(second, Launch)] == ["big"]  # cpu is backed off a while
    later = NOW + reactions.CAPACITY_BASE_S + 2
    [launch] = actions(reconcile(observe(spot_failures=second.spot_failures, demand=1,
                                         fallback_after={"cpu": 3}), later), Launch)
    assert launch.on_demand and "on demand: 3 spot failures in 30 min" in launch.reason
    much_later = NOW + reactions.SPOT_WINDOW_S + 10
    [launch] = actions(reconcile(observe(spot_failures=second.spot_failures, demand=1,
                                         fallback_after={"cpu": 3}), much_later), Launch)
    assert not launch.on_demand  # the failures are old: spot again


def test_without_a_fallback_spot_failures_are_not_even_counted():
    decision = reconcile(observe(known={"w0": L.NodeLifecycle("w0", L.RUNNING, 1.0)},
                                 node_types={"w0": "cpu"}, preempted={"w0": "taken"}), NOW)
    assert decision.spot_failures == {}
