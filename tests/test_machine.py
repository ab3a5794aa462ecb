"""Unit tests of the pure state machine, on a simulated network with a fake clock."""

from __future__ import annotations

import pytest

from followtheleader._core.candidates import best_candidate
from followtheleader._core.machine import FORGET_AFTER, Machine, Notify, Send, Timing
from followtheleader._core.messages import Message
from followtheleader._core.model import Event, Member, State
from followtheleader._core.peers import Peer

from simnet import TIMING, SimNet

W = TIMING.failure_window
SETTLE = TIMING.settle


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def assert_paired(net: SimNet) -> None:
    """Every leader event is followed by a demotion before the next leader event (guarantee 5)."""
    for node in net.nodes.values():
        leading = False
        for event in node.events:
            if event.kind == "leader":
                assert not leading, f"{node.node_id}: {kinds(node.events)}"
                leading = True
            elif event.kind in ("reelection", "follower"):
                leading = False


def assert_terms_increase(net: SimNet) -> None:
    """Every new leadership has a term greater than any earlier one (guarantee 4)."""
    leader_events = sorted(
        (e for n in net.nodes.values() for e in n.events if e.kind == "leader"), key=lambda e: e.time
    )
    terms = [e.term for e in leader_events]
    assert terms == sorted(terms) and len(set(terms)) == len(terms), terms


def leader_intervals(net: SimNet) -> list[tuple[str, float, float]]:
    """(node, from, to) for every leadership, a crashed leader's ending at its crash time."""
    spans = []
    for node in net.nodes.values():
        start = None
        for event in node.events:
            if event.kind == "leader":
                start = event.time
            elif start is not None:
                spans.append((node.node_id, start, event.time))
                start = None
        if start is not None:
            end = getattr(node, "ended_at", net.now)
            spans.append((node.node_id, start, end))
    return spans


def assert_no_overlap(net: SimNet) -> None:
    spans = leader_intervals(net)
    for i, (a, a0, a1) in enumerate(spans):
        for b, b0, b1 in spans[i + 1 :]:
            assert a1 <= b0 or b1 <= a0, f"{a} led {a0}-{a1} while {b} led {b0}-{b1}"


def start_group(net: SimNet, ids: list[str], priorities: dict[str, int] | None = None) -> None:
    for node_id in ids:
        net.add(node_id, (priorities or {}).get(node_id, 0))
    for node_id in ids:
        net.start(node_id)


def test_single_node_leads_after_settle_window() -> None:
    net = SimNet()
    start_group(net, ["a"])
    net.run(SETTLE - 0.01)
    assert net.nodes["a"].machine.state is State.ELECTING
    leader, term = net.run_until_agreed()
    assert (leader, term) == ("a", 1)
    assert kinds(net.nodes["a"].events) == ["leader"]
    assert net.nodes["a"].machine.is_leader(net.now)


@pytest.mark.parametrize("size", [3, 10])
def test_nodes_started_together_agree_on_best_ranked(size: int) -> None:
    net = SimNet()
    ids = [f"n{i:02d}" for i in range(size)]
    start_group(net, ids)
    leader, term = net.run_until_agreed()
    assert leader == max(ids) and term == 1
    assert net.now - 100.0 < SETTLE + 0.1
    assert sum(kinds(n.events).count("leader") for n in net.nodes.values()) == 1
    for node in net.nodes.values():
        assert [m.node_id for m in node.machine.members(net.now)] == sorted(ids, reverse=True)


def test_priority_beats_node_id() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c"], {"a": 5})
    assert net.run_until_agreed() == ("a", 1)


def test_leadership_is_sticky_when_a_better_node_joins() -> None:
    net = SimNet()
    start_group(net, ["a", "b"])
    assert net.run_until_agreed() == ("b", 1)
    net.add("z", priority=100)
    net.start("z")
    net.run(2 * SETTLE)
    assert net.agreed() == ("b", 1)
    assert kinds(net.nodes["z"].events) == ["follower"]


def test_crash_of_leader_elects_best_remaining_within_failure_window() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c", "d"])
    assert net.run_until_agreed() == ("d", 1)
    net.run(1.0)
    crashed_at = net.now
    net.crash("d")
    net.nodes["d"].ended_at = crashed_at  # type: ignore[attr-defined]
    leader, term = net.run_until_agreed(step=0.001)
    assert (leader, term) == ("c", 2)
    # Detection (the failure window after the last pong) and the confirmation wait.
    assert net.now - crashed_at <= W + TIMING.confirm + 0.01
    assert net.now - crashed_at >= W - TIMING.interval - 0.01
    assert kinds(net.nodes["a"].events) == ["follower", "reelection", "follower"] or kinds(net.nodes["a"].events) == [
        "follower",
        "follower",
    ]
    assert_paired(net)
    assert_terms_increase(net)
    assert_no_overlap(net)


def test_crash_of_leader_and_best_candidate_falls_down_the_ranking() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c", "d"])
    assert net.run_until_agreed() == ("d", 1)
    net.run(1.0)
    net.crash("d")
    net.crash("c")
    leader, term = net.run_until_agreed(limit=5)
    assert (leader, term) == ("b", 2)
    assert_paired(net)


def test_clean_stop_of_leader_hands_over_within_one_message() -> None:
    net = SimNet(latency=0.001)
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    net.run(1.0)
    stopped_at = net.now
    net.stop("c")
    assert net.nodes["c"].events[-1].kind == "reelection"
    assert net.nodes["c"].events[-1].state is State.STOPPED
    net.run(0.005)
    assert net.agreed() == ("b", 2)
    successor_event = [e for e in net.nodes["b"].events if e.kind == "leader"][-1]
    assert successor_event.time - stopped_at <= 2 * net.latency + 1e-9
    assert_paired(net)
    assert_no_overlap(net)


def test_stop_of_follower_is_a_clean_leave() -> None:
    net = SimNet()
    start_group(net, ["a", "b"])
    assert net.run_until_agreed() == ("b", 1)
    net.run(1.0)
    net.stop("a")
    assert kinds(net.nodes["a"].events) == ["follower", "reelection"]
    net.run(5.0)
    # The leader lost its last follower cleanly: no lease to lose, no flap.
    assert kinds(net.nodes["b"].events) == ["leader"]
    assert [m.node_id for m in net.nodes["b"].machine.members(net.now)] == ["b"]


def test_resign_hands_over_and_resigned_node_follows() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    net.run(1.0)
    net.resign("c")
    net.run(0.01)
    assert net.agreed() == ("b", 2)
    assert kinds(net.nodes["c"].events) == ["leader", "reelection", "follower"]
    assert_paired(net)


def test_resign_when_alone_leads_again_after_failure_window() -> None:
    net = SimNet()
    start_group(net, ["a"])
    assert net.run_until_agreed() == ("a", 1)
    net.resign("a")
    net.run(W - 0.05)
    assert net.nodes["a"].machine.state is State.ELECTING
    net.run(0.1)
    assert net.agreed() == ("a", 2)


def test_paused_leader_reads_not_leader_and_demotes_on_resume() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    net.run(1.0)
    net.pause("c")
    paused = net.nodes["c"]
    net.run(5.0)
    _leader, _term = net.agreed() or (None, None)
    new_leader_event = [e for e in net.nodes["b"].events if e.kind == "leader"][-1]
    # The old leader's lease ran out before the new leader was elected (guarantee 2) ...
    assert paused.machine.lease_until is not None and paused.machine.lease_until < new_leader_event.time
    # ... so the moment it resumes, is_leader is already False, before it handles anything.
    assert not paused.machine.is_leader(net.now)
    net.resume("c")
    net.run(TIMING.interval)
    assert net.agreed() == ("b", 2)
    assert kinds(paused.events) == ["leader", "reelection", "follower"]
    assert_paired(net)
    assert_terms_increase(net)


def test_stale_pings_queued_during_a_pause_do_not_renew_the_lease() -> None:
    net = SimNet()
    start_group(net, ["a", "b"])
    assert net.run_until_agreed() == ("b", 1)
    net.run(1.0)
    net.pause("b")
    net.run(W / 2)  # "a" still pings; these pings wait in b's socket buffer
    assert net.nodes["b"].inbox_while_paused
    net.run(5.0)
    net.resume("b")
    assert net.nodes["b"].machine.state is not State.LEADER


@pytest.mark.parametrize("size", [2, 3])
def test_leader_outlives_the_crash_of_every_follower(size: int) -> None:
    """Followers that all crash at once do not interrupt a leader that was awake all along:
    no event, the same term and token, is_leader True; a node started later follows it."""
    net = SimNet()
    ids = ["a", "b", "c"][:size]
    start_group(net, ids)
    leader, term = net.run_until_agreed()
    token = net.nodes[leader].machine.token
    net.run(1.0)
    for node_id in ids:
        if node_id != leader:
            net.crash(node_id)
    for _ in range(50):  # 5 s, checked every 0.1 s
        net.run(0.1)
        machine = net.nodes[leader].machine
        assert machine.is_leader(net.now), f"{net.now}"
    assert kinds(net.nodes[leader].events) == ["leader"]
    assert (net.nodes[leader].machine.term, net.nodes[leader].machine.token) == (term, token)
    net.add("z")
    net.start("z")
    assert net.run_until_agreed() == (leader, term)
    assert_paired(net)


def test_leader_whose_followers_stop_hearing_it_demotes_before_they_give_up() -> None:
    """A one-way fault (the leader's datagrams lost, the followers' arriving): the followers'
    pings echo stale lease marks, so the leader demotes by the echoed lease, before they elect."""
    net = SimNet()
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    net.run(1.0)
    net.one_way_cut.update({("c", "a"), ("c", "b")})
    net.run(3.0)
    ended = next(e.time for e in net.nodes["c"].events if e.kind == "reelection")
    successor = next(e.time for n in ("a", "b") for e in net.nodes[n].events if e.kind == "leader")
    assert ended < successor
    assert "stopped hearing" in net.nodes["c"].events[1].reason


def test_rival_leaders_resolve_by_term_then_rank() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c", "d"])
    assert net.run_until_agreed() == ("d", 1)
    net.run(1.0)
    net.partition(["a", "b"], ["c", "d"])
    net.run(5.0)
    assert sorted(n.node_id for n in net.leaders()) == ["b", "d"]
    net.heal()
    # A DNS-SD record update is how the two sides hear of each other here.
    for observer in ("b", "d"):
        other = "d" if observer == "b" else "b"
        net._discover(net.nodes[observer], net.nodes[other])
    found = net.run_until_agreed(limit=2)
    terms = {n.node_id: n.machine.term for n in net.nodes.values()}
    assert found[1] == max(terms.values())
    assert_paired(net)


def test_messages_of_other_groups_and_own_echo_are_ignored() -> None:
    machine = Machine("group", Member("me", 0, "", 9001), TIMING)
    machine.start(0.0)
    other_group = Message("claim", "other", "x", 0, State.LEADER, 9, leader="x")
    own = Message("claim", "group", "me", 0, State.LEADER, 9, leader="me")
    assert machine.on_message(other_group, ("198.18.0.9", 9001), 0.1) == []
    assert machine.on_message(own, ("198.18.0.9", 9001), 0.1) == []
    assert machine.state is State.ELECTING and machine.max_term == 0


def test_electing_node_follows_a_leader_that_answers_and_asks_for_members() -> None:
    machine = Machine("group", Member("me", 0, "", 9001), TIMING)
    machine.start(0.0)
    pong = Message("pong", "group", "boss", 0, State.LEADER, 4, leader="boss", members_version=3)
    actions = machine.on_message(pong, ("198.18.0.2", 9001), 0.05)
    events = [a.event for a in actions if isinstance(a, Notify)]
    assert [e.kind for e in events] == ["follower"]
    assert events[0].leader == Member("boss", 0, "198.18.0.2", 9001) and events[0].term == 4
    pings = [a for a in actions if isinstance(a, Send)]
    assert pings == [] or all(p.message.members_version == 0 for p in pings)
    later = machine.tick(0.06)
    ping = next(a for a in later if isinstance(a, Send))
    assert ping.address == ("198.18.0.2", 9001)
    assert ping.message.kind == "ping" and ping.message.leader == "boss" and ping.message.members_version == 0


def test_timing_keeps_the_lease_inside_the_failure_window() -> None:
    for failed in (2, 3, 10):
        timing = Timing(0.2, failed)
        assert timing.lease > 1.5 * timing.interval  # room for a lost ping or two
        assert 0 < timing.failure_window - timing.lease < timing.interval


def test_leader_paused_right_after_its_claim_has_a_lease_already() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c"])
    net.run(SETTLE + 0.0005)  # "c" has just claimed; no follower has pinged it yet
    assert net.nodes["c"].machine.state is State.LEADER
    net.pause("c")
    lease_end = net.nodes["c"].machine.lease_until
    net.run(5.0)
    assert net.agreed() == ("b", 2)
    assert not net.nodes["c"].machine.is_leader(net.now)
    net.resume("c")
    net.run(TIMING.interval)
    assert net.agreed() == ("b", 2)
    assert kinds(net.nodes["c"].events) == ["leader", "reelection", "follower"]
    new_leader_event = next(e for e in net.nodes["b"].events if e.kind == "leader")
    assert lease_end is not None and lease_end <= new_leader_event.time


def test_follower_that_lost_only_its_leader_rejoins_it() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    net.run(1.0)
    net.partition(["a"], ["c"])  # "a" alone loses the leader; "b" still follows it
    net.run(2 * W)
    assert net.nodes["a"].machine.state is State.ELECTING
    net.heal()
    net.run(2 * TIMING.interval)
    assert net.agreed() == ("c", 1)
    assert kinds(net.nodes["a"].events) == ["follower", "reelection", "follower"]


def test_one_cut_link_heals_into_one_leader() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    net.run(1.0)
    net.partition(["b"], ["c"])  # "b" loses "c", but "a" still hears from it: "b" keeps out
    net.run(3 * W)
    assert net.nodes["b"].machine.state is State.ELECTING
    assert kinds(net.nodes["c"].events) == ["leader"] and kinds(net.nodes["a"].events) == ["follower"]
    net.heal()
    assert net.run_until_agreed(limit=3 * W) == ("c", 1)
    net.run(5.0)
    assert net.agreed() == ("c", 1)  # and it stays so
    assert_paired(net)


def all_kinds(net: SimNet) -> dict[str, list[str]]:
    return {n.node_id: kinds(n.events) for n in net.nodes.values()}


def test_partition_heals_into_one_leader_within_about_one_interval() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c", "d", "e"])
    assert net.run_until_agreed() == ("e", 1)
    net.run(1.0)
    net.partition(["a", "b"], ["c", "d", "e"])
    net.run(5.0)
    assert sorted(n.node_id for n in net.leaders()) == ["b", "e"]  # availability first
    net.heal()
    healed_at = net.now
    leader, term = net.run_until_agreed(limit=3 * TIMING.interval, step=0.005)
    assert net.now - healed_at <= 1.5 * TIMING.interval
    terms = {n.node_id: n.machine.term for n in net.nodes.values()}
    assert term == max(terms.values())
    net.run(5.0)
    assert net.agreed() == (leader, term)
    assert_paired(net)


def test_peers_dropped_from_the_member_list_are_lost_peers_and_forgotten_in_time() -> None:
    """A follower keeps the peers its leader's list drops: no candidates, no members, probed
    if it leads, forgotten after FORGET_AFTER (see test_sim_regressions for the heal)."""
    net = SimNet()
    start_group(net, ["a", "b", "c", "d"])
    assert net.run_until_agreed() == ("d", 1)
    net.run(1.0)
    net.partition(["a", "b", "c"], ["d"])
    net.run(3 * W)
    assert net.agreed() is None and [n.node_id for n in net.leaders()] == ["c", "d"]
    a = net.nodes["a"].machine
    assert a.peers["d"].dead and a.peers["d"].dropped
    assert [m.node_id for m in a.members(net.now)] == ["c", "b", "a"]
    net.heal()
    assert net.run_until_agreed(limit=1.5 * TIMING.interval, step=0.005) == ("c", 2)
    # A list change forgets a dropped peer silent for FORGET_AFTER.
    net.stop("d")
    net.run(W)
    assert a.peers["d"].dropped and best_candidate(a, net.now) != a.peers["d"].member
    stale = Peer(Member("zz", 9, "198.18.0.99", 1), dead=True, dropped=True, probed_since=net.now - FORGET_AFTER)
    a.peers["zz"] = stale
    net.stop("b")
    net.run(W)
    assert "zz" not in a.peers and "d" in a.peers  # silent for FORGET_AFTER: forgotten


@pytest.mark.parametrize("loss", [0.10, 0.20])
def test_packet_loss_changes_no_leadership_while_the_leader_lives(loss: float) -> None:
    net = SimNet(loss=loss, seed=7)
    start_group(net, ["a", "b", "c", "d", "e"])
    first = net.run_until_agreed(limit=10)
    before = all_kinds(net)
    net.run(1800.0)  # half an hour on the fake clock
    assert net.lost > 1000
    assert net.agreed() == first
    assert all_kinds(net) == before


def test_thirty_percent_loss_still_converges_to_one_leader() -> None:
    net = SimNet(loss=0.30, seed=3)
    start_group(net, ["a", "b", "c", "d", "e"])
    net.run_until_agreed(limit=30)
    net.run(300.0)
    assert len(net.leaders()) <= 1 or net.run_until_agreed(limit=30)
    net.crash(net.leaders()[0].node_id)
    net.run_until_agreed(limit=30)


def test_quorum_minority_never_leads_and_partition_never_gives_two_leaders() -> None:
    net = SimNet(quorum=5)
    start_group(net, ["a", "b", "c", "d", "e"])
    assert net.run_until_agreed() == ("e", 1)
    net.run(1.0)
    net.partition(["d", "e"], ["a", "b", "c"])  # the leader is in the minority
    for _ in range(500):
        net.run(0.01)
        assert len([n for n in net.nodes.values() if n.machine.is_leader(net.now)]) <= 1
    assert [n.node_id for n in net.leaders()] == ["c"]
    assert net.nodes["e"].events[-1].reason == "lost the quorum"
    assert_no_overlap(net)
    net.heal()
    assert net.run_until_agreed(limit=2)[0] == "c"


def test_quorum_a_lone_node_never_claims() -> None:
    net = SimNet(quorum=3)
    start_group(net, ["a"])
    net.run(10.0)
    assert net.nodes["a"].machine.state is State.ELECTING and net.nodes["a"].events == []
    net.add("b")
    net.start("b")
    assert net.run_until_agreed() == ("b", 1)


def test_short_pause_of_a_sticky_leader_below_a_better_follower_converges() -> None:
    """Reviewer's scenario: the leader is paused past its lease but not past the failure window."""
    net = SimNet()
    start_group(net, ["a", "b"])
    assert net.run_until_agreed() == ("b", 1)
    net.add("z", priority=100)
    net.start("z")
    net.run(1.0)
    assert net.agreed() == ("b", 1)
    net.pause("b")
    net.run((TIMING.lease + TIMING.failure_window) / 2)
    net.resume("b")
    _leader, term = net.run_until_agreed(limit=3)
    assert term >= 2
    assert_paired(net)
    assert_terms_increase(net)


def test_lost_resign_to_the_best_follower_still_converges() -> None:
    net = SimNet()
    start_group(net, ["a", "b"])
    assert net.run_until_agreed() == ("b", 1)
    net.add("z", priority=100)
    net.start("z")
    net.run(1.0)
    net.partition(["b"], ["z"])
    net.resign("b")  # the resign datagram to "z" is lost
    net.heal()
    assert net.run_until_agreed(limit=3)[0] == "z"


def test_paused_follower_does_not_depose_a_healthy_leader() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c", "d"])
    assert net.run_until_agreed() == ("d", 1)
    net.run(1.0)
    net.pause("c")
    net.run(2.0)
    net.resume("c")
    net.run(1.0)
    assert net.agreed() == ("d", 1)
    assert kinds(net.nodes["d"].events) == ["leader"]


def test_paused_follower_does_not_reuse_a_term_after_a_failover() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c", "d"])
    assert net.run_until_agreed() == ("d", 1)
    net.run(1.0)
    net.pause("c")
    net.crash("d")
    net.run(2.0)
    assert net.agreed() == ("b", 2)
    net.resume("c")
    net.run(1.0)
    assert net.agreed() == ("b", 2)
    assert_terms_increase(net)


def test_a_follower_whose_pongs_are_lost_sees_the_lease_end_first() -> None:
    """Asymmetric loss: pings reach the leader, pongs do not; only echoed marks renew the lease."""
    net = SimNet()
    start_group(net, ["a", "b"])
    assert net.run_until_agreed() == ("b", 1)
    net.run(1.0)
    net.one_way_cut.add(("b", "a"))  # b's datagrams to a are lost
    net.run(3.0)
    spans = leader_intervals(net)
    assert len([s for s in spans if s[0] == "b"]) >= 1
    a_leads = [e.time for e in net.nodes["a"].events if e.kind == "leader"]
    b_demoted = [e.time for e in net.nodes["b"].events if e.kind == "reelection"]
    assert a_leads and b_demoted and b_demoted[0] <= a_leads[0]


def test_one_cut_link_does_not_make_the_others_flap() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c"], {"b": 5})
    assert net.run_until_agreed() == ("b", 1)
    net.run(1.0)
    net.partition(["b"], ["c"])  # "a" still sees both
    net.run(10.0)
    assert kinds(net.nodes["a"].events) == ["follower"]  # it stays with its live leader
    assert kinds(net.nodes["b"].events) == ["leader"]
    # "c" hears from "a" that the leader lives: it keeps out instead of claiming and flapping.
    assert kinds(net.nodes["c"].events) == ["follower", "reelection"]
    net.heal()
    assert net.run_until_agreed(limit=2) == ("b", 1)
    assert_paired(net)


def test_quorum_one_cut_link_never_gives_two_leaders() -> None:
    net = SimNet(quorum=3)
    start_group(net, ["a", "b", "c"], {"b": 5})
    assert net.run_until_agreed() == ("b", 1)
    net.run(1.0)
    net.partition(["b"], ["c"])
    for _ in range(1000):
        net.run(0.01)
        assert sum(n.machine.is_leader(net.now) for n in net.nodes.values()) <= 1
    assert kinds(net.nodes["b"].events) == ["leader"]
    assert "leader" not in kinds(net.nodes["c"].events)  # it claimed in vain, unannounced
    net.heal()
    assert net.run_until_agreed(limit=2) == ("b", 1)


# ----------------------------------------------------------------- npm leaders (npm_compat)


def npm_followers(net: SimNet) -> list[str]:
    return sorted(
        n.node_id
        for n in net.live()
        if n.machine.state is State.FOLLOWER and n.machine.leader is not None and n.machine.leader.npm
    )


def npm_followers_leader(net: SimNet) -> str:
    (leader,) = {n.machine.leader.node_id for n in net.live() if n.machine.leader is not None}
    return leader


def test_nodes_that_find_an_npm_leader_follow_it_and_never_claim() -> None:
    net = SimNet()
    address = net.add_npm_leader()
    start_group(net, ["a", "b", "c"])
    net.run(10 * W)
    assert npm_followers(net) == ["a", "b", "c"]
    assert not net.leaders()
    for node in net.nodes.values():
        assert kinds(node.events) == ["follower"]
        leader = node.events[0].leader
        assert leader is not None and leader.npm and leader.address == address
        assert node.events[0].term == 0  # an npm leader has no term
        assert node.machine.members(net.now)[0] == leader  # listed first, for the user
        assert all(not m.npm for m in node.machine.members(net.now, with_npm=False))


def test_followers_of_a_silent_npm_leader_elect_one_of_theirs() -> None:
    net = SimNet()
    address = net.add_npm_leader()
    start_group(net, ["a", "b", "c"])
    net.run(5 * W)
    assert npm_followers(net) == ["a", "b", "c"]
    silent_at = net.now
    net.kill_npm_leader(address)
    leader, term = net.run_until_agreed(limit=3 * W, other_than=npm_followers_leader(net))
    assert leader == "c" and term >= 1
    took = next(e.time for e in net.nodes["c"].events if e.kind == "leader") - silent_at
    assert took <= W + TIMING.confirm + 0.01
    assert_paired(net)


def test_a_leader_of_ours_steps_down_for_an_npm_leader_that_answers() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    appeared = net.now
    net.add_npm_leader()
    net.run(W)
    assert npm_followers(net) == ["a", "b", "c"]
    demoted = next(e for e in net.nodes["c"].events if e.kind == "follower")
    assert demoted.reason == "an npm leader outranks this leader"
    assert demoted.time - appeared < 0.1
    assert_paired(net)


def test_an_npm_leader_that_never_answers_delays_an_election_by_one_failure_window() -> None:
    net = SimNet()
    address = net.add_npm_leader()
    net.kill_npm_leader(address)  # a stale record: the node is gone
    start_group(net, ["a", "b", "c"])
    leader, _ = net.run_until_agreed(limit=SETTLE + 3 * W)
    assert leader == "c"
    assert not npm_followers(net)


def test_an_npm_leader_back_from_a_pause_is_followed_again() -> None:
    net = SimNet()
    address = net.add_npm_leader()
    start_group(net, ["a", "b", "c"])
    net.run(5 * W)
    npm_id = npm_followers_leader(net)
    net.kill_npm_leader(address)
    assert net.run_until_agreed(limit=3 * W, other_than=npm_id)[0] == "c"
    net.npm_leaders[address] = True  # it answers again (it never stepped down)
    net.run(2 * TIMING.interval)
    assert npm_followers(net) == ["a", "b", "c"]
    assert not net.leaders()
    assert_paired(net)


def test_npm_hearsay_is_never_taken_for_a_peer_of_ours() -> None:
    net = SimNet()
    net.add_npm_leader()
    start_group(net, ["a", "b"])
    net.run(10 * W)
    for node in net.nodes.values():
        assert all(not node_id.startswith("npm-") for node_id in node.machine.peers)


def test_terms_keep_increasing_across_an_npm_leadership_and_a_rolling_restart() -> None:
    net = SimNet()
    start_group(net, ["a", "b"])
    assert net.run_until_agreed() == ("b", 1)
    for _ in range(4):
        net.resign(net.leaders()[0].node_id)
        net.run(3 * W)
    address = net.add_npm_leader()
    net.run(W)
    npm_id = npm_followers_leader(net)
    # Every node of ours is replaced while the npm leader leads (it tells nobody any term).
    net.stop("a")
    net.add("a2")
    net.start("a2")
    net.run(5 * W)
    net.stop("b")
    net.add("b2")
    net.start("b2")
    net.run(5 * W)
    net.kill_npm_leader(address)
    _, term = net.run_until_agreed(limit=3 * W, other_than=npm_id)
    assert term == 6
    assert_terms_increase(net)


def test_a_node_that_joins_under_an_npm_leader_meets_its_peers_before_the_next_election() -> None:
    net = SimNet()
    address = net.add_npm_leader()
    start_group(net, ["a", "b", "c"])
    net.run(5 * W)
    npm_id = npm_followers_leader(net)
    net.add("z")
    net.start("z", discover=False)  # it follows the npm leader before it sees the others' records
    net.run(0.05)
    assert npm_followers(net) == ["a", "b", "c", "z"]
    for other in ("a", "b", "c"):
        net._discover(net.nodes["z"], net.nodes[other])
        net._discover(net.nodes[other], net.nodes["z"])
    net.run(5 * W)
    assert set(net.nodes["z"].machine.peers) == {"a", "b", "c"}
    assert "z" in net.nodes["a"].machine.peers
    net.kill_npm_leader(address)
    most = 0
    for _ in range(300):
        net.run(0.01)
        most = max(most, len(net.leaders()))
    assert most == 1
    assert net.run_until_agreed(other_than=npm_id)[0] == "z"
    assert_terms_increase(net)


def test_without_npm_compat_hearsay_of_an_npm_leader_is_ignored() -> None:
    net = SimNet()
    net.add_npm_leader()
    start_group(net, ["a", "b"])
    net.run(5 * W)
    assert npm_followers(net) == ["a", "b"]
    net.add("z", npm_compat=False)
    net.start("z")
    net.run(5 * W)
    z = net.nodes["z"].machine
    assert z.npm.peer is None  # never pinged, never followed
    # Its peers still hear a live leader, so it does not claim either: a mixed setting of
    # npm_compat in one group leaves this node electing, not leading beside the npm leader.
    assert z.state is State.ELECTING


def test_a_silent_npm_record_seen_while_following_does_not_slow_a_failover() -> None:
    net = SimNet()
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    address = net.add_npm_leader()
    net.kill_npm_leader(address)  # a stale record: nobody answers at that address
    net.run(5 * W)
    net.crash("c")
    crashed_at = net.now
    leader, _ = net.run_until_agreed(limit=3 * W, other_than="c")
    assert leader == "b"
    took = next(e.time for e in net.nodes["b"].events if e.kind == "leader") - crashed_at
    assert took <= W + TIMING.confirm + 0.01
