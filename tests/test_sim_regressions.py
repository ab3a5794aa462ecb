"""Plain regression tests for the bugs the fault simulator (``tests/simfuzz.py``) found.

Each test replays, on :class:`simnet.SimNet` with a fixed seed, the shortest schedule of a
failing seed, and asserts the guarantee the simulator saw broken. Every one of them failed
on the machine of the day the simulator found its bug, and passes since its fix.
"""

from __future__ import annotations

import pytest

from followtheleader._core.candidates import live_leader_hold
from followtheleader._core.model import State
from followtheleader._core.roles import Leader

from simnet import TIMING, SimNet

W = TIMING.failure_window


def leaders(net: SimNet) -> list[str]:
    return sorted(n.node_id for n in net.nodes.values() if not n.crashed and n.machine.is_leader(net.now))


def run_until(net: SimNet, condition: object, limit: float, step: float = 0.001) -> None:
    waited = 0.0
    while not condition():  # type: ignore[operator]
        assert waited <= limit, f"not reached within {limit} s"
        net.run(step)
        waited += step


def test_quorum_group_elects_again_after_a_partition_without_majority() -> None:
    """Simulator seed 205 (8 nodes, quorum 8, partition 2|4|2 for 1.4 s, then heal).

    Every node ends ELECTING with all its peers found dead; candidates ping only live
    candidates and nobody leads (so nobody probes), so nobody ever hears anybody again.
    """
    net = SimNet(quorum=3)
    for node_id in ("a", "b", "c"):
        net.add(node_id)
    for node_id in ("a", "b", "c"):
        net.start(node_id)
    assert net.run_until_agreed() == ("c", 1)
    net.partition(["a"], ["b", "c"])
    net.partition(["b"], ["c"])
    net.run(3.0)
    assert leaders(net) == []
    net.heal()
    leader, _ = net.run_until_agreed(limit=5.0)
    assert leader == "c"


def test_unconfirmed_quorum_claim_moves_its_deadline_on() -> None:
    """Simulator seeds 9, 27, 49, 53, 98, 143, 175, 191 (quorum mode, "deadline-progress").

    A quorum claim that no majority follows has a lease (from peers heard recently), and
    :meth:`Machine.next_deadline` returns its end; but while unconfirmed, :meth:`Machine.tick`
    looks only at the claim's own deadline (claim + failure window), so from the lease's end
    until then every tick changes nothing and the deadline stays in the past: the elector's
    ticker spins for that time, and the simulation cannot advance its clock.
    """
    net = SimNet(quorum=3)
    for node_id in ("a", "b", "c"):
        net.add(node_id)
    # c hears a and b, who never hear c: c claims, and nobody follows.
    net.one_way_cut.update({("c", "a"), ("c", "b")})
    for node_id in ("a", "b", "c"):
        net.start(node_id)
    machine = net.nodes["c"].machine
    run_until(net, lambda: machine.state is State.LEADER, limit=2.0)
    assert isinstance(machine.role, Leader) and not machine.role.confirmed and machine.lease_until is not None
    now = machine.lease_until
    machine.tick(now)
    deadline = machine.next_deadline()
    assert deadline is not None and deadline > now, (deadline, now)


def test_quorum_paused_leader_is_never_outlived_by_a_new_one() -> None:
    """Simulator seed 241 (4 nodes, quorum 4; the leader paused right after its claim).

    The followers of the paused leader switch to a better leader once theirs has been silent
    for ``Timing.suspect`` (0.4 s), and their echoes give the new one its majority; but the
    paused leader's majority, renewed by the same followers' echoes of its claim, lasts
    ``Timing.lease`` (0.66 s): both read is_leader True for about 0.15 s. Here the better
    leader is a node that joins during the pause (in the seed, the old leader of the other
    side of a healed partition).
    """
    net = SimNet(quorum=4)
    for node_id in ("n1", "n2", "n3"):
        net.add(node_id)
    for node_id in ("n1", "n2", "n3"):
        net.start(node_id)
    run_until(net, lambda: net.nodes["n3"].machine.is_leader(net.now), limit=3.0)
    net.run(0.003)
    net.pause("n3")  # SIGSTOP: its is_leader ends by the clock, when its majority's echoes run out
    net.add("n4", priority=5)
    net.start("n4")
    for _ in range(2000):
        net.run(0.001)
        assert len(leaders(net)) <= 1, f"at {net.now - 100.0:.3f}: {leaders(net)}"


def test_resumed_node_does_not_claim_on_a_stale_resign() -> None:
    """Simulator seed 240 (4 nodes; pause of the leader; its successor resigns during the pause).

    On resume the old leader handles the datagrams that waited: its lease ran out, it
    follows the successor, then handles the successor's resign and, best-ranked, claims at
    once; meanwhile another node had claimed on that same resign. Two leaders with the same
    term in one connected group until the claims cross.
    """
    net = SimNet()
    net.add("a")
    net.add("b", priority=1)
    net.add("c", priority=5)
    for node_id in ("a", "b", "c"):
        net.start(node_id)
    assert net.run_until_agreed() == ("c", 1)
    net.run(1.0)
    net.pause("c")
    assert net.run_until_agreed(other_than="c") == ("b", 2)
    net.run(0.5)
    net.resign("b")
    net.run(0.01)
    assert [n.node_id for n in net.leaders()] == ["a"]
    net.resume("c")
    assert len(leaders(net)) <= 1, leaders(net)
    terms = [e.term for n in net.nodes.values() for e in n.events if e.kind == "leader"]
    assert len(terms) == len(set(terms)), terms


def test_cut_link_with_twenty_percent_loss_gives_no_second_leader() -> None:
    """Simulator seed 41 (3 nodes; the link leader-follower cut both ways; 20 % loss).

    The follower cut off from the leader keeps out while the third node tells it that it
    hears the leader (guarantees.rst, section 2); but it asks only once an interval, with no
    retry, and the answer counts for two intervals: with 20 % loss (which "changes no
    leadership" on a whole network) two answers lost in a row let it claim, and the two
    leaders stay until the cut heals.
    """
    net = SimNet(loss=0.2, seed=41)
    for node_id in ("a", "b", "c"):
        net.add(node_id)
    for node_id in ("a", "b", "c"):
        net.start(node_id)
    assert net.run_until_agreed() == ("c", 1)
    net.partition(["b"], ["c"])
    for _ in range(100):
        net.run(0.05)
        assert leaders(net) == ["c"], f"at {net.now - 100.0:.2f}: {leaders(net)}"


def test_resign_hands_over_when_the_resigners_ping_overtakes_its_resign() -> None:
    """Simulator seed 0 (replayed verbosely: no leader for 0.7 s after a resign, then the
    resigned node leads again with term 2).

    A resigning leader sends ``resign`` and, electing now, pings its peers at the same
    instant. When the ping arrives first (10 microseconds of jitter reorder them half the
    time), a follower sees its leader "step down", waits the confirmation time and pings it;
    the resign then marks it departed, but its answer to that ping revives it as a live,
    best-ranked candidate. Everybody waits for it, and it stands back for a failure window.
    """
    net = SimNet(jitter=0.00001, seed=1)
    for node_id in ("a", "b", "c"):
        net.add(node_id)
    for node_id in ("a", "b", "c"):
        net.start(node_id)
    assert net.run_until_agreed() == ("c", 1)
    net.run(1.0)
    net.resign("c")
    leader, term = net.run_until_agreed(limit=0.2, step=0.001)
    assert (leader, term) == ("b", 2)


def test_old_leader_back_as_follower_is_a_member_and_a_resign_gives_one_leader() -> None:
    """Simulator seed 81 without quorum, on the machine with leader-driven heartbeats (main's
    9f6f84a; the earlier machine passes this test).

    The leader's outgoing datagrams are lost for 2 s: the others elect a new leader, and once
    the cut heals the old leader follows it. It never appears in the new leader's member list
    (nor in the followers' lists): when the new leader resigns, the old one, which knows it is
    the best candidate, and the best node of the lists both claim the same term.
    """
    ids = ["n1", "n2", "n3"]
    net = SimNet()
    for node_id in ids:
        net.add(node_id)
    for node_id in ids:
        net.start(node_id)
    assert net.run_until_agreed() == ("n3", 1)
    net.run(0.5)
    net.one_way_cut.update({("n3", "n1"), ("n3", "n2")})
    net.run(2.1)
    net.one_way_cut.clear()
    net.run(3.0)
    assert net.agreed() == ("n2", 2)
    assert [m.node_id for m in net.nodes["n2"].machine.members(net.now)] == ["n3", "n2", "n1"]
    net.resign("n2")
    for _ in range(300):
        net.run(0.001)
        assert len(leaders(net)) <= 1, leaders(net)
    assert net.agreed() == ("n3", 3)


def test_leaders_elected_during_a_partition_meet_soon_after_the_heal() -> None:
    """Simulator seed 20554 without quorum (8 nodes: a partition, both sides' leaders crash
    during it, then the heal).

    A follower replaces the peers it knows with its leader's member list, so during a
    partition each side forgets the other. A leader elected there knows only its own side,
    and probes nobody on the other; after the heal the two sides meet only through a DNS-SD
    record (up to 1.2 s later), not "within about one interval" (guarantees.rst, section 3).
    Here the other side's leader crashes just before the heal, and its old followers elect a
    second leader 0.6 s after the heal, knowing nothing of the first.
    """
    ids = [f"n{i}" for i in range(1, 7)]
    net = SimNet(mdns=True)
    for node_id in ids:
        net.add(node_id)
    for node_id in ids:
        net.start(node_id)
    assert net.run_until_agreed() == ("n6", 1)
    net.run(1.0)
    net.partition(["n1", "n2", "n3"], ["n4", "n5", "n6"])
    net.run(3.0)
    net.crash("n6")
    net.run(3.0)
    assert sorted(n.node_id for n in net.leaders()) == ["n3", "n5"]
    net.crash("n3")
    net.run(0.2)
    net.heal()
    healed = net.now
    for _ in range(3000):
        net.run(0.001)
        if net.now - healed > 1.5 * TIMING.interval:
            assert len(leaders(net)) <= 1, f"{net.now - healed:.3f} s after the heal: {leaders(net)}"


def test_a_tick_between_beats_renews_no_lease() -> None:
    """Found in review: a tick of the leader's between two beats (an npm probe, a wake-up)
    renewed its lease without sending a heartbeat, so a leader paused right after it read
    ``is_leader`` True after its followers, who count from its last beat, had elected."""
    net = SimNet()
    leader = net.add("a", priority=5)
    for node_id in ("b", "c"):
        net.add(node_id)
    for node_id in ("a", "b", "c"):
        net.start(node_id)
    assert net.run_until_agreed() == ("a", 1)
    net.run(1.0)
    assert isinstance(leader.machine.role, Leader)
    net.run(leader.machine.role.next_ping_at - 0.005 - net.now)
    net._apply(leader, leader.machine.tick(net.now))  # an extra tick, 5 ms before the beat
    net.pause("a")
    end = net.now + 2.0
    while net.now < end:
        net.run(0.002)
        leading = [n.node_id for n in net.nodes.values() if n.machine.is_leader(net.now)]
        assert len(leading) <= 1, f"{leading} at {net.now}"


def test_an_unannounced_quorum_claim_ends_without_a_reelection() -> None:
    """Found in review: a claim that waits for its majority (quorum mode) emits no ``leader``
    event; resigning before the majority came emitted a ``reelection`` that no ``leader``
    preceded, and a later ``follower`` event named LEADER as the previous state. Each event's
    previous state must be the state the event before it announced."""
    net = SimNet(quorum=3)
    net.add("a", priority=5)
    net.add("b")
    net.start("a")
    net.start("b")
    machine = net.nodes["a"].machine
    net.run(TIMING.settle)
    while machine.state is not State.LEADER:
        net.run(0.0005)
    assert (
        isinstance(machine.role, Leader) and not machine.role.confirmed
    )  # its claim is on its way to b, whose ack is not back yet
    net.resign("a")
    net.run(3.0)
    for node in net.nodes.values():
        told = State.ELECTING
        for event in node.events:
            assert event.previous_state is told, node.events
            told = event.state


def test_a_hold_for_a_leader_ends_with_its_resign() -> None:
    """Found in the 30-node handover benchmark (700 ms instead of milliseconds): a follower
    heard, while it still followed its leader, that others still hear that leader; when the
    leader then resigned, that hold kept the best candidate from claiming for a failure window.
    A hold is for one leader, and ends with its resign."""
    net = SimNet()
    start = ["a", "b", "c", "d"]
    for node_id in start:
        net.add(node_id)
    for node_id in start:
        net.start(node_id)
    assert net.run_until_agreed() == ("d", 1)
    net.run(1.0)
    c = net.nodes["c"].machine
    pong = net.nodes["a"].machine._message("pong", net.now)  # a follower of d: "d is alive"
    net._apply(net.nodes["c"], c.on_message(pong, net.nodes["a"].address, net.now))
    assert live_leader_hold(c, net.now) > net.now
    resigned_at = net.now
    net.stop("d")
    new, _ = net.run_until_agreed(other_than="d")
    claimed = next(e.time for e in net.nodes[new].events if e.kind == "leader")
    assert new == "c" and claimed - resigned_at < 0.05


@pytest.mark.parametrize(("seed", "unicast"), [(128, False), (198, True), (268, True), (272, False)])
def test_a_late_pong_naming_a_resigned_leader_does_not_bring_it_back_into_the_members(seed: int, unicast: bool) -> None:
    """A follower of the new leader got, after the claim, a pong that a follower of the old
    leader had sent before it heard the resign: the hearsay made the resigned leader a member
    again, and the new leader, whose list version the follower held, never corrected it (seen
    in the lab by tests/test_release_interop.py; these seeds failed before the fix)."""
    net = SimNet(seed=seed, latency=0.0002, jitter=0.0008)
    for node_id, priority in [("old-a", 3), ("new-b", 2), ("old-c", 1), ("new-d", 0)]:
        net.add(node_id, priority, unicast=unicast)
    for node_id in ("old-a", "new-b", "old-c", "new-d"):
        net.start(node_id)
    net.run_until_agreed()
    net.run(0.5)
    net.stop("old-a")
    net.run(3.0)
    expected = sorted(m.node_id for m in net.nodes["new-b"].machine.members(net.now))
    assert expected == ["new-b", "new-d", "old-c"]
    for node_id in ("old-c", "new-d"):
        assert sorted(m.node_id for m in net.nodes[node_id].machine.members(net.now)) == expected, node_id
