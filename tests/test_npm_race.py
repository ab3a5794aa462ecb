"""Unit tests of the delayed publication of the records meant for npm nodes (fake clock).

An npm node that starts to lead emits ``leader`` at once but announces its record only after
0.75 to 1 s of name probing. A leader of ours therefore publishes what npm nodes look for
(``Publish(serve_npm=True)``) only :data:`NPM_HOLD` after its leadership was announced, and
not at all when an npm leader's record (and its ``PONG``) turns up before that: it follows the
npm leader instead. The lab counterpart with the real npm package is
``tests/test_npm_race_lab.py``.
"""

from __future__ import annotations

import pytest

from followtheleader._core.machine import NPM_HOLD, Action, Machine, Publish, Timing
from followtheleader._core.model import Member, State
from followtheleader._core.roles import Leader

from simnet import TIMING, SimNet, SimNode

W = TIMING.failure_window
SETTLE = TIMING.settle


class RecordingNet(SimNet):
    """A :class:`SimNet` that also keeps every ``Publish`` action, with its time."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.published: dict[str, list[tuple[float, Publish]]] = {}

    def _apply(self, node: SimNode, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.published.setdefault(node.node_id, []).append((self.now, action))
        super()._apply(node, actions)

    def served(self, node_id: str | None = None) -> list[tuple[str, float]]:
        """(node, time) of every ``Publish(serve_npm=True)``, of one node or of all."""
        return [
            (n, t)
            for n, publishes in self.published.items()
            for t, p in publishes
            if p.serve_npm and (node_id is None or n == node_id)
        ]


def start_group(net: SimNet, ids: list[str]) -> None:
    for node_id in ids:
        net.add(node_id)
    for node_id in ids:
        net.start(node_id)


def leader_event_time(net: SimNet, node_id: str, nth: int = 0) -> float:
    return [e.time for e in net.nodes[node_id].events if e.kind == "leader"][nth]


def npm_followers(net: SimNet) -> list[str]:
    return sorted(
        n.node_id
        for n in net.live()
        if n.machine.state is State.FOLLOWER and n.machine.leader is not None and n.machine.leader.npm
    )


def test_a_lone_leader_reports_the_hold_as_its_deadline_and_serves_at_it() -> None:
    # A long interval: nothing else is due during the hold, so only its deadline wakes the node.
    machine = Machine("group", Member("a", 0, "", 9001), Timing(interval=5.0, max_failed=3))
    machine.start(0.0)
    publishes: list[Publish] = []
    while machine.state is not State.LEADER:
        claim = machine.next_deadline()
        assert claim is not None and claim <= machine.timing.settle
        publishes += [a for a in machine.tick(claim) if isinstance(a, Publish)]
    assert claim == machine.timing.settle
    assert publishes == [Publish(State.LEADER, 1)]
    assert machine.npm.serve_at == claim + NPM_HOLD
    assert machine.next_deadline() == claim + NPM_HOLD
    assert not [a for a in machine.tick(claim + NPM_HOLD - 0.001) if isinstance(a, Publish)]
    actions = machine.tick(claim + NPM_HOLD)
    assert [a for a in actions if isinstance(a, Publish)] == [Publish(State.LEADER, 1, serve_npm=True)]
    assert machine.npm.serve_at is None
    assert isinstance(machine.role, Leader)
    assert machine.next_deadline() == machine.role.next_ping_at > claim + NPM_HOLD  # the hold is over
    assert not [a for a in machine.tick(claim + 2 * NPM_HOLD) if isinstance(a, Publish)]


def test_a_group_leader_serves_npm_nodes_once_after_the_hold() -> None:
    net = RecordingNet()
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    net.run(2 * NPM_HOLD)
    assert net.served() == [("c", leader_event_time(net, "c") + NPM_HOLD)]
    assert [p.serve_npm for _, p in net.published["c"]] == [False, True]
    assert "a" not in net.published and "b" not in net.published  # followers publish no role change


@pytest.mark.parametrize("probe", [0.75, 1.0])
@pytest.mark.parametrize("offset", [0.0, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0])
def test_nodes_started_while_an_npm_leader_probes_follow_it_and_serve_nothing(offset: float, probe: float) -> None:
    """The npm node emitted ``leader`` ``offset`` s before our nodes start and announces its
    record ``probe`` s after that event; our nodes claim after the settle window."""
    net = RecordingNet()
    start_group(net, ["a", "b", "c"])
    net.run(probe - offset)  # negative: announced before our nodes started
    net.add_npm_leader()
    net.run(NPM_HOLD + 5 * W)
    assert npm_followers(net) == ["a", "b", "c"]
    assert not net.leaders()
    assert net.served() == []
    for node in net.nodes.values():
        kinds = [e.kind for e in node.events]
        assert kinds[-1] == "follower" and kinds.count("leader") <= 1, kinds


def test_a_leader_serves_only_once_an_npm_record_seen_during_the_hold_proved_stale() -> None:
    net = RecordingNet()
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    claimed = leader_event_time(net, "c")
    net.run(NPM_HOLD - 0.1)
    seen = net.now + 0.02  # SimNet delivers a record 20 ms after it appears
    net.kill_npm_leader(net.add_npm_leader())  # a stale record: the npm node is gone
    net.run(2 * W)
    assert net.nodes["c"].machine.state is State.LEADER
    ((_, served_at),) = net.served()
    assert served_at == pytest.approx(max(claimed + NPM_HOLD, seen + W))
    assert served_at > claimed + NPM_HOLD


def test_a_leader_that_steps_down_during_the_hold_serves_nothing() -> None:
    net = RecordingNet()
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    net.run(NPM_HOLD / 2)
    net.resign("c")
    leader, _ = net.run_until_agreed(other_than="c")
    net.run(NPM_HOLD / 2 + 0.01)
    assert net.served("c") == []
    net.run(NPM_HOLD)
    assert net.served() == [(leader, leader_event_time(net, leader) + NPM_HOLD)]


def test_a_leader_that_serves_and_then_meets_an_npm_leader_withdraws_and_follows_it() -> None:
    """The other direction: an npm node missed our records and leads; it never steps down."""
    net = RecordingNet()
    start_group(net, ["a", "b", "c"])
    net.run(SETTLE + 2 * NPM_HOLD)
    assert net.served() == [("c", leader_event_time(net, "c") + NPM_HOLD)]
    net.add_npm_leader()
    net.run(W)
    assert npm_followers(net) == ["a", "b", "c"]
    assert net.published["c"][-1][1] == Publish(State.FOLLOWER, 1)  # withdrawn
    assert len(net.served()) == 1


def test_the_hold_starts_again_with_each_leadership() -> None:
    net = RecordingNet()
    address = net.add_npm_leader()
    start_group(net, ["a", "b", "c"])
    net.run(5 * W)
    assert npm_followers(net) == ["a", "b", "c"]
    net.kill_npm_leader(address)
    leader, _ = net.run_until_agreed(limit=3 * W, other_than=net.nodes["a"].machine.leader.node_id)  # type: ignore[union-attr]
    net.run(2 * NPM_HOLD)
    assert net.served() == [(leader, leader_event_time(net, leader) + NPM_HOLD)]


def test_in_quorum_mode_the_hold_counts_from_the_announcement() -> None:
    net = RecordingNet(quorum=3)
    start_group(net, ["a", "b", "c"])
    assert net.run_until_agreed() == ("c", 1)
    net.run(2 * NPM_HOLD)
    announced = leader_event_time(net, "c")
    assert net.served() == [("c", announced + NPM_HOLD)]


def test_without_npm_compat_nothing_is_served() -> None:
    net = RecordingNet()
    for node_id in ("a", "b", "c"):
        net.add(node_id, npm_compat=False)
    for node_id in ("a", "b", "c"):
        net.start(node_id)
    assert net.run_until_agreed() == ("c", 1)
    net.run(2 * NPM_HOLD)
    assert net.served() == []
    machine = net.nodes["c"].machine
    assert isinstance(machine.role, Leader)
    assert machine.next_deadline() == pytest.approx(machine.role.next_ping_at)
