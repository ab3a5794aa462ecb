"""A deterministic simulator of random faults over the pure state machine.

In the manner of FoundationDB's simulation and TigerBeetle's VOPR: a seed gives a random
schedule (a group of 2 to 9 nodes, with or without quorum mode, priorities, sometimes an npm
leader, sometimes a mixed group where some nodes or all find their peers from a list of
every node's address instead of mDNS, with or without a secret, and a list of faults:
crashes, restarts, pauses, clean stops, resigns, partitions, cut links, one-way cuts and
loss), :class:`Run` plays it on :class:`simnet.SimNet` (with random delay, reordering and
duplication of datagrams), and :class:`Checker` asserts the invariants after every step of
the simulation. A failing seed is shrunk (delta debugging over its list of faults) to a
shorter schedule that still breaks the same invariant.

Everything is drawn from one ``random.Random(seed)``: the schedule from a generator seeded
by its first draw, the network from one seeded by its second, so that a shrunk schedule
keeps the network's randomness of its seed; whether the group is mixed, from one seeded by
its third (so that the schedules of mDNS groups are those drawn before mixed groups were).
``python benchmarks/simulate.py --seed N`` replays a seed verbosely, ``--keep 0,3`` keeps
only those faults of it.

The simulator talks to the machines only through their public inputs (start, stop, resign,
tick, on_message, on_discovered, on_goodbye, on_npm_record, on_npm_pong, on_addresses,
on_address_ping), their queries (is_leader, state, leader, term, next_deadline) and the
actions they return; it knows nothing of the message kinds.

The windows of the invariants come from ``docs/guarantees.rst``; each is a named constant or
function below, with the sentence it rests on.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from followtheleader._core.machine import FORGET_AFTER, PROBE_FAST_FOR, PROBE_SLOW_EVERY, Timing
from followtheleader._core.messages import BASE_PROTOCOL, PROTOCOL
from followtheleader._core.model import Event, FencingToken, State
from followtheleader._core.timing import THIN_FROM

from simnet import NEW_SERVICE, REDISCOVERY, TIMING, SimNet, SimNode

# ----------------------------------------------------------------------------- windows

LOSS_WITHOUT_ROLE_CHANGE = 0.2
"""A link that loses at most this share of datagrams (each way) still joins two nodes into one
connected component. guarantees.rst, "Failure modes, as measured": "10 % and 20 % packet loss:
No role change"; at 30 % "elections may flap", and section 2 excludes "loss so heavy that a
follower hears nothing from its leader for a whole failure window": a link losing more than
this is taken as not working."""

MAX_JITTER_INTERVALS = 0.1
"""Datagrams take up to this many intervals longer than the base latency (20 ms at the
defaults). Reading of the docs: the lease argument (how-it-works.rst, "The leader's lease")
counts no network delay and keeps a fifth of an interval for timer jitter; a LAN's delay is
well under a millisecond, so a tenth of an interval is a generous delay within that margin."""


def merge_window(timing: Timing, apart_for: float) -> float:
    """How long two leaders may coexist in one component after it formed (a heal, a loss that
    ended, a node that came back).

    guarantees.rst, section 3: "when the network heals, one leader remains, within about one
    interval"; "Failure modes": "at most 1.5 intervals (0.3 s) after the heal in the
    simulation". The probes that make rivals meet go out every interval during the first
    ``PROBE_FAST_FOR`` (60) seconds of silence, "then every 2 s" (section 3, "How"): after a
    longer separation the window is 2 s + half an interval. Each also gets two of the largest
    delays of a datagram (a probe and its answer).
    """
    probe = timing.interval if apart_for < PROBE_FAST_FOR else PROBE_SLOW_EVERY
    return probe + 0.5 * timing.interval + 2 * MAX_JITTER_INTERVALS * timing.interval


def convergence_bound(timing: Timing, dead: int, long_apart: bool) -> float:
    """After the last fault: every connected component has one leader within this time.

    The docs only say "shortly after the last change of membership" (guarantees.rst, section
    1); their figures are: a new leader "a failure window plus the confirmation wait" after a
    crash, "if the best-ranked follower died too, the next one claims a failure window later"
    (one more window per dead candidate, ``dead``), nobody claims for the settle window after
    a start or a lost leadership, a resigned node stands back for a failure window, rivals
    meet within the merge window, and a record can take ``NEW_SERVICE`` (1.2 s) to reach a
    running browser. My reading: each of these can follow the others once, so the bound is
    their sum.
    """
    apart_for = FORGET_AFTER if long_apart else 0.0
    return (
        timing.settle
        + timing.confirm
        + (2 + dead) * timing.failure_window
        + merge_window(timing, apart_for)
        + max(NEW_SERVICE[1], REDISCOVERY[1])
    )


BUSY_STEPS = 5000
"""Steps at one instant after which the simulation counts as stuck: a tick at a machine's
:meth:`Machine.next_deadline` must move that deadline on (the elector's ticker would spin)."""

STABLE_FOR = 2.0
"""After the convergence bound, the run goes on this long, checking convergence at every step."""

START_SPREAD = 0.3
"""The nodes of a schedule start at random within this many seconds."""

MIXED_SHARE = 0.35
"""This share of the seeds draws a mixed group: some nodes (at least one, maybe all) list
every node's address (the ``peers`` option) instead of using mDNS; half of those groups have
a secret. Such a group gets no npm leader (npm nodes are found by mDNS only, and not by
nodes with a secret)."""

# ----------------------------------------------------------------------------- schedules

LEADER = "@leader"
"""A fault's target resolved when it happens: the node that leads then (else a random one)."""
FOLLOWER = "@follower"
"""A fault's target resolved when it happens: a node that follows then (else a random one)."""

NPM_ADDRESS = ("198.18.1.1", 9001)


@dataclass(frozen=True)
class Fault:
    """One fault of a schedule.

    :ivar at: seconds after the first node's start.
    :ivar kind: ``crash``, ``restart``, ``stop``, ``resign``, ``pause``, ``partition``, ``cut``
        (a link both ways), ``oneway`` (``nodes[0]`` to ``nodes[1]``, or with one node all its
        outgoing datagrams), ``loss`` or ``npm`` (an npm leader appears).
    :ivar nodes: the nodes it hits (or :data:`LEADER`, :data:`FOLLOWER`); for ``partition``
        the sides, separated by ``"|"``; empty for ``loss`` of the whole network.
    :ivar duration: how long a pause, cut, loss or npm leader lasts (0: forever, for npm).
    :ivar rate: for ``loss``, the share of datagrams lost.
    """

    at: float
    kind: str
    nodes: tuple[str, ...] = ()
    duration: float = 0.0
    rate: float = 0.0

    def __str__(self) -> str:
        text = f"{self.at:.3f} {self.kind}"
        if self.nodes:
            text += " " + ",".join(self.nodes)
        if self.rate:
            text += f" rate={self.rate:g}"
        if self.duration:
            text += f" for={self.duration:.3f}"
        return text

    @property
    def ends(self) -> float:
        return self.at + self.duration


@dataclass(frozen=True)
class Schedule:
    """A whole simulation: the group, the network's behaviour and the faults."""

    seed: int
    nodes: tuple[tuple[str, int], ...]
    """(node id, priority) of each node."""
    quorum: int | None
    latency: float
    jitter: float
    duplicate: float
    faults: tuple[Fault, ...]
    net_seed: int
    start_offsets: tuple[float, ...]
    timing: Timing = TIMING
    unicast: tuple[str, ...] = ()
    """The nodes that find their peers from a list of every node's address, not by mDNS."""
    secret: bool = False
    """The group is authenticated (see :class:`simnet.SimNet`)."""
    protocols: tuple[int, ...] = ()
    """The protocol of each node (empty: every node speaks 2, as 0.2 does)."""
    thin_from: int = THIN_FROM
    """:attr:`Machine.thin_from` of every node of protocol 3."""

    def describe(self) -> str:
        nodes = " ".join(f"{n}:{p}" if p else n for n, p in self.nodes)
        head = (
            f"seed {self.seed}: nodes {nodes}; quorum {self.quorum}; latency {self.latency * 1000:.2f} ms"
            f" + jitter {self.jitter * 1000:.1f} ms; duplicate {self.duplicate:g}"
        )
        if self.unicast:
            head += f"; listed peers at {','.join(self.unicast)}"
        if self.secret:
            head += "; secret"
        if self.protocols:
            head += f"; protocols {','.join(map(str, self.protocols))}, thin from {self.thin_from}"
        return "\n".join([head, *(f"  [{i}] {f}" for i, f in enumerate(self.faults))])

    def keep(self, indices: Iterable[int]) -> Schedule:
        """The same schedule with only the faults at ``indices``."""
        chosen = sorted(set(indices))
        return replace(self, faults=tuple(self.faults[i] for i in chosen))


VERSIONS = ("0.2", "0.3", "mixed")
"""What the nodes of a schedule speak: all protocol 2 (0.2), all protocol 3, or some of each."""


def generate(seed: int, quorum: bool | None = None, timing: Timing = TIMING, version: str = "0.2") -> Schedule:
    """The random schedule of ``seed`` (quorum mode at random unless ``quorum`` says).

    ``version`` (one of :data:`VERSIONS`) draws the nodes' protocols from a generator seeded
    by the root's fourth draw, so that the rest of the schedule is the same in every version.
    Groups of protocol 3 thin their acks from 2 to 4 followers (:attr:`Schedule.thin_from`),
    so that the simulator's small groups run thinned acks."""
    root = random.Random(seed)
    rng = random.Random(root.getrandbits(64))
    net_seed = root.getrandbits(64)
    size = rng.randint(2, 9)
    ids = [f"n{i}" for i in range(1, size + 1)]
    priorities = [0] * size if rng.random() < 0.5 else [rng.choice((0, 0, 1, 2, 5)) for _ in ids]
    drawn = rng.random() < 0.4  # drawn in any case, so that the rest of the schedule stays
    use_quorum = drawn if quorum is None else quorum
    quorum_size = size if use_quorum else None
    latency = rng.uniform(0.0002, 0.005)
    jitter = rng.choice((0.0, 0.2, 0.5, 1.0)) * MAX_JITTER_INTERVALS * timing.interval
    duplicate = rng.choice((0.0, 0.0, 0.01, 0.05))
    horizon = rng.uniform(2.0, 12.0)
    faults: list[Fault] = []
    settle = START_SPREAD + timing.settle
    for _ in range(rng.randint(1, 10)):
        at = round(rng.uniform(settle, settle + horizon), 3)
        faults.append(_random_fault(rng, at, ids, timing, npm_allowed=not use_quorum))
    # A crashed node comes back, most of the time.
    for fault in list(faults):
        if fault.kind == "crash" and rng.random() < 0.6:
            faults.append(Fault(round(fault.at + rng.uniform(0.05, 3.0), 3), "restart", fault.nodes))
    faults.sort(key=lambda f: f.at)
    offsets = tuple(round(rng.uniform(0.0, START_SPREAD), 4) for _ in ids)
    mix = random.Random(root.getrandbits(64))
    unicast: tuple[str, ...] = ()
    secret = False
    if mix.random() < MIXED_SHARE:
        unicast = tuple(sorted(mix.sample(ids, mix.randint(1, size))))
        secret = mix.random() < 0.5
        faults = [f for f in faults if f.kind != "npm"]
    protocols: tuple[int, ...] = ()
    thin_from = THIN_FROM
    if version != "0.2":
        draw = random.Random(root.getrandbits(64))
        thin_from = draw.randint(2, 4)
        if version == "0.3":
            protocols = (PROTOCOL,) * size
        else:
            protocols = tuple(draw.choice((BASE_PROTOCOL, PROTOCOL)) for _ in ids)
            if len(set(protocols)) == 1:  # one of each at least
                protocols = (BASE_PROTOCOL, *([PROTOCOL] * (size - 1)))
    return Schedule(
        seed,
        tuple(zip(ids, priorities, strict=True)),
        quorum_size,
        latency,
        jitter,
        duplicate,
        tuple(faults),
        net_seed,
        offsets,
        timing,
        unicast,
        secret,
        protocols,
        thin_from,
    )


def _random_fault(rng: random.Random, at: float, ids: list[str], timing: Timing, npm_allowed: bool) -> Fault:
    kinds = ["crash", "restart", "stop", "resign", "pause", "partition", "cut", "oneway", "loss"]
    weights = [3, 2, 1, 2, 3, 3, 2, 3, 2]
    if npm_allowed:
        kinds.append("npm")
        weights.append(1)
    kind = rng.choices(kinds, weights)[0]

    def target() -> str:
        return rng.choice([LEADER, LEADER, FOLLOWER, *ids])

    w = timing.failure_window
    if kind in ("crash", "restart", "stop", "resign"):
        return Fault(at, kind, (LEADER if kind == "resign" else target(),))
    if kind == "pause":
        # Short of the lease, between the lease and the failure window, or well past it.
        duration = rng.choice(
            (rng.uniform(0.05, timing.lease), rng.uniform(timing.lease, w + timing.confirm), rng.uniform(w, 4.0))
        )
        return Fault(at, kind, (target(),), round(duration, 3))
    duration = round(rng.choice((rng.uniform(0.1, 1.0), rng.uniform(1.0, 6.0))), 3)
    if rng.random() < 0.03:
        duration = round(rng.uniform(PROBE_FAST_FOR, PROBE_FAST_FOR + 10.0), 3)  # probes slow down
    if kind == "partition":
        shuffled = ids[:]
        rng.shuffle(shuffled)
        sides = rng.randint(2, min(3, len(ids)))
        cuts = sorted(rng.sample(range(1, len(ids)), sides - 1))
        groups = [shuffled[a:b] for a, b in itertools.pairwise([0, *cuts, len(ids)])]
        nodes: list[str] = []
        for group in groups:
            nodes.extend([*sorted(group), "|"])
        return Fault(at, kind, tuple(nodes[:-1]), duration)
    if kind in ("cut", "oneway"):
        if kind == "oneway" and rng.random() < 0.5:
            return Fault(at, kind, (target(),), duration)  # all its outgoing datagrams
        a = target()
        b = rng.choice([FOLLOWER, *ids])
        return Fault(at, kind, (a, b) if rng.random() < 0.7 else (b, a), duration)
    if kind == "loss":
        rate = rng.choice((0.05, 0.1, 0.2, 0.3, 0.5, 1.0))
        scope = rng.choice(((), (target(),), (target(), target())))
        return Fault(at, kind, scope, duration, rate)
    assert kind == "npm"
    return Fault(at, kind, (), duration if rng.random() < 0.6 else 0.0)


# ----------------------------------------------------------------------------- checking


class Violation(AssertionError):
    """An invariant broken at ``time`` (seconds after the first start)."""

    def __init__(self, invariant: str, detail: str, time: float) -> None:
        super().__init__(f"{invariant} at {time:.3f}: {detail}")
        self.invariant = invariant
        self.detail = detail
        self.time = time


@dataclass
class _Track:
    """What the checker has read of one incarnation's events."""

    seen: int = 0
    leading: bool = False
    last_token: FencingToken | None = None
    told: State = State.ELECTING
    """The state the latest event announced (a node starts electing, with no event)."""


class Checker:
    """The invariants, checked after every step of the simulation:

    * ``quorum-one-leader``: in quorum mode, never two nodes with ``is_leader`` True at once
      (paused ones included: their role ends by the clock);
    * ``one-leader-per-component``: without quorum, never two in one connected component
      (links working both ways, loss at most :data:`LOSS_WITHOUT_ROLE_CHANGE`) for longer than
      :func:`merge_window` after the component formed or their own link healed;
    * ``token-unique`` / ``token-increasing``: the fencing tokens of ``leader`` events never
      repeat in the whole run, and increase within each incarnation;
    * ``leader-paired`` and ``is_leader-agrees-with-events``: a ``leader`` event is followed by
      a demotion before the next one, each event's previous state is the state the event before
      it announced, and ``is_leader`` True means the last event is ``leader``;
    * ``convergence``: :func:`convergence_bound` after the last fault, one leader per component
      (none in a component without a majority in quorum mode; none when all follow an npm
      leader), followed by all, until the end of the run;
    * ``deadline-progress``: the clock never gets stuck (a tick at a machine's deadline moves it).
    """

    def __init__(self, net: SimNet, schedule: Schedule, start: float, log: Callable[[str], None] | None) -> None:
        self.net = net
        self.schedule = schedule
        self.start = start
        self.log = log
        self.tracks: dict[tuple[str, int], _Track] = {}
        self.tokens: dict[FencingToken, str] = {}
        self.components: list[frozenset[str]] = []
        self.component_of: dict[str, int] = {}
        self.together_since: dict[frozenset[str], tuple[float, float]] = {}
        """Pair -> (since when the two are in one component, the window for rival leaders)."""
        self.apart_since: dict[frozenset[str], float] = {}
        self.linked_since: dict[frozenset[str], tuple[float, float]] = {}
        """Pair -> (since when their own link works both ways, the window for rival leaders)."""
        self.unlinked_since: dict[frozenset[str], float] = {}
        self.partial_overlaps = 0
        self.paused_at: dict[str, float] = {}
        """Paused nodes -> since when."""
        """Steps at which two leaders shared a component without a link of their own."""
        self.converge_after: float | None = None
        self.npm_alive = False
        self.last_step_at = 0.0
        self.steps_at_once = 0

    def t(self) -> float:
        return self.net.now - self.start

    def fail(self, invariant: str, detail: str) -> None:
        raise Violation(invariant, detail, self.t())

    # --------------------------------------------------------------- topology

    def link_works(self, a: str, b: str) -> bool:
        net = self.net
        for x, y in ((a, b), (b, a)):
            if net.blocked(x, y) or net.link_loss.get((x, y), 0.0) > LOSS_WITHOUT_ROLE_CHANGE:
                return False
        return True

    def topology_changed(self) -> None:
        """Recompute the connected components (after every fault and every end of one).

        A paused node stays in its component (its links work; the lease must end its
        leadership by the clock), but two nodes join only when neither is paused: a node
        that cannot run cannot meet a rival, so the merge window starts when it resumes.
        (guarantees.rst, "Limits": "A leader alone keeps leading ... with no lease to lose".)
        """
        up = sorted(n.node_id for n in self.net.nodes.values() if n.up)
        parent = {n: n for n in up}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b in itertools.combinations(up, 2):
            if self.link_works(a, b):
                parent[find(a)] = find(b)
        groups: dict[str, set[str]] = {}
        for n in up:
            groups.setdefault(find(n), set()).add(n)
        self.components = [frozenset(g) for g in groups.values()]
        self.component_of = {n: i for i, g in enumerate(self.components) for n in g}
        now = self.net.now
        paused = {n.node_id for n in self.net.nodes.values() if n.paused}
        for node_id in paused:
            self.paused_at.setdefault(node_id, now)
        for node_id in [n for n in self.paused_at if n not in paused]:
            # Resumed: a merge it could not take part in (it was paused before its window
            # ran out) starts again now.
            began = self.paused_at.pop(node_id)
            for table in (self.together_since, self.linked_since):
                for pair, (since, window) in list(table.items()):
                    if node_id in pair and since + window > began:
                        table[pair] = (now, window)
        for a, b in itertools.combinations(sorted(self.net.nodes), 2):
            pair = frozenset((a, b))
            together = a in self.component_of and self.component_of.get(a) == self.component_of.get(b)
            if together and pair not in self.together_since and not {a, b} & paused:
                apart = self.apart_since.get(pair, now)
                window = merge_window(self.schedule.timing, now - apart)
                if any(self.net.nodes[n].incarnations[-1].started_at > apart for n in (a, b)):
                    # One of them restarted while they were apart: the other has never heard of
                    # this run, so they meet through its DNS-SD record, which a running browser
                    # sees "after about 1.2 s" (design notes, section 5): the docs' "about one
                    # interval" after a heal assumes the rivals know each other.
                    window += max(NEW_SERVICE[1], REDISCOVERY[1])
                self.together_since[pair] = (now, window)
            elif not together and pair in self.together_since:
                del self.together_since[pair]
                self.apart_since[pair] = now
            elif not together:
                self.apart_since.setdefault(pair, now)
            linked = together and self.link_works(a, b)
            if linked and pair not in self.linked_since and not {a, b} & paused:
                unlinked = self.unlinked_since.get(pair, now)
                window = merge_window(self.schedule.timing, now - unlinked)
                if any(self.net.nodes[n].incarnations[-1].started_at > unlinked for n in (a, b)):
                    window += max(NEW_SERVICE[1], REDISCOVERY[1])
                self.linked_since[pair] = (now, window)
            elif not linked and pair in self.linked_since:
                del self.linked_since[pair]
                self.unlinked_since[pair] = now
            elif not linked:
                self.unlinked_since.setdefault(pair, now)

    # --------------------------------------------------------------- invariants

    def check(self) -> None:
        now = self.net.now
        if now == self.last_step_at:
            self.steps_at_once += 1
            if self.steps_at_once > BUSY_STEPS:
                self._busy(now)
        else:
            self.last_step_at, self.steps_at_once = now, 0
        leaders: list[SimNode] = []
        for node in self.net.nodes.values():
            self._read_events(node)
            if node.crashed:
                continue
            if node.machine.is_leader(now):
                leaders.append(node)
                events = node.events
                if not events or events[-1].kind != "leader":
                    last = events[-1].kind if events else None
                    self.fail("is_leader-agrees-with-events", f"{node.node_id} is_leader True, last event {last}")
        if len(leaders) > 1:
            self._rival_leaders(leaders, now)
        if self.converge_after is not None and now >= self.converge_after:
            self._converged(now)

    def _busy(self, now: float) -> None:
        """The clock cannot advance: a machine asks for a tick that changes nothing."""
        stuck = [
            f"{n.node_id} ({n.machine.state.value}, deadline {(n.machine.next_deadline() or now) - self.start:.6f})"
            for n in self.net.nodes.values()
            if not n.crashed and not n.paused and (n.machine.next_deadline() or float("inf")) <= now
        ]
        self.fail("deadline-progress", f"{BUSY_STEPS} steps at one instant; passed deadlines: {stuck}")

    def _read_events(self, node: SimNode) -> None:
        for incarnation in node.incarnations:
            key = (node.node_id, incarnation.boot)
            track = self.tracks.setdefault(key, _Track())
            for event in incarnation.events[track.seen :]:
                self._event(node.node_id, incarnation.boot, track, event)
            track.seen = len(incarnation.events)

    def _event(self, node_id: str, boot: int, track: _Track, event: Event) -> None:
        if self.log is not None:
            token = event.fencing_token
            shown = f" token=({token.term},{token.priority},{token.node_id},{token.boot})" if token else ""
            leader = event.leader.node_id if event.leader else None
            self.log(
                f"{event.time - self.start:9.4f} {node_id}#{boot} {event.kind} term={event.term}"
                f" leader={leader}{shown} ({event.reason})"
            )
        if event.previous_state is not track.told:
            self.fail("leader-paired", f"{node_id}#{boot}: {event.kind} from {event.previous_state}, told {track.told}")
        track.told = event.state
        if event.kind == "leader":
            if track.leading:
                self.fail("leader-paired", f"{node_id}#{boot}: a second leader event without a demotion between")
            track.leading = True
            token = event.fencing_token
            if token is None:
                self.fail("token-unique", f"{node_id}#{boot}: leader event without a fencing token")
                return
            if token in self.tokens:
                self.fail("token-unique", f"{node_id}#{boot}: token {token!r} was held before by {self.tokens[token]}")
            self.tokens[token] = f"{node_id}#{boot}"
            if track.last_token is not None and token <= track.last_token:
                self.fail("token-increasing", f"{node_id}#{boot}: token {token!r} after {track.last_token!r}")
            track.last_token = token
        elif event.kind in ("reelection", "follower"):
            track.leading = False

    def _rival_leaders(self, leaders: list[SimNode], now: float) -> None:
        names = [n.node_id for n in leaders]
        if self.schedule.quorum is not None:
            self.fail("quorum-one-leader", f"is_leader True at {names} at once")
        for a, b in itertools.combinations(leaders, 2):
            pair = frozenset((a.node_id, b.node_id))
            joined = self.together_since.get(pair)
            if joined is None or now <= joined[0] + joined[1]:
                continue
            if any(joined[0] + joined[1] > self.paused_at.get(n.node_id, float("inf")) for n in (a, b)):
                continue  # one of them was paused before they could meet: the window waits for it
            linked = self.linked_since.get(pair)
            if linked is not None and now <= linked[0] + linked[1]:
                continue  # their own link just healed: they meet within the merge window
            if linked is None:
                # Two leaders in one component that cannot reach each other directly (a cut
                # link or a one-way cut between them, the others reaching both). For such
                # partial cuts the docs promise only that "the node that loses the leader keeps
                # out as long as another node tells it that it still hears the leader; a cut
                # that leaves it with no such witness is a partition" (guarantees.rst, section
                # 2, "Not guaranteed"), and two leaders meet only by their own messages. Whether
                # a witness was there depends on the protocol, so the simulator does not judge
                # these pairs (tests/test_sim_regressions.py has a case that the docs do cover).
                self.partial_overlaps += 1
                continue
            self.fail(
                "one-leader-per-component",
                f"{a.node_id} and {b.node_id} both is_leader in one component for"
                f" {now - joined[0]:.3f} s (> {joined[1]:.3f} s window)",
            )

    @staticmethod
    def _led_since(node: SimNode) -> float:
        """When the node's current leadership began (its last ``leader`` event)."""
        return next((e.time for e in reversed(node.events) if e.kind == "leader"), float("inf"))

    def _converged(self, now: float) -> None:
        """After the bound: each component has one leader (or follows the live npm leader), and
        in quorum mode a component without a majority has none."""
        quorum = self.schedule.quorum
        for component in self.components:
            nodes = [self.net.nodes[n] for n in sorted(component)]
            leaders = [n.node_id for n in nodes if n.machine.is_leader(now)]
            views = {
                (n.machine.leader.node_id if n.machine.leader else None, n.machine.term, n.machine.state) for n in nodes
            }
            shown = sorted(views, key=str)
            if quorum is not None and len(component) < quorum // 2 + 1:
                if leaders:
                    self.fail("convergence", f"minority {sorted(component)} has leader {leaders}")
                continue
            if self.npm_alive and all(n.machine.npm_compat for n in nodes):
                if leaders or any(not (n.machine.leader and n.machine.leader.npm) for n in nodes):
                    self.fail("convergence", f"{sorted(component)} do not all follow the npm leader: {shown}")
                continue
            if len(leaders) != 1:
                self.fail("convergence", f"component {sorted(component)} has leaders {leaders}: {shown}")
            if any(n.node_id != leaders[0] and not self._follows(n, leaders[0]) for n in nodes):
                self.fail("convergence", f"{sorted(component)} do not all follow {leaders[0]}: {shown}")

    @staticmethod
    def _follows(node: SimNode, leader: str) -> bool:
        machine = node.machine
        return machine.state is State.FOLLOWER and machine.leader is not None and machine.leader.node_id == leader


# ----------------------------------------------------------------------------- running


@dataclass
class Result:
    schedule: Schedule
    violation: Violation | None
    simulated: float
    """Seconds of simulated time."""
    sent: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violation is None


class Run:
    """Plays one schedule on a :class:`SimNet` and checks the invariants after every step."""

    def __init__(self, schedule: Schedule, verbose: bool = False) -> None:
        self.schedule = schedule
        self.lines: list[str] = []
        log = self.lines.append if verbose else None
        self.net = SimNet(
            latency=schedule.latency,
            timing=schedule.timing,
            quorum=schedule.quorum,
            jitter=schedule.jitter,
            duplicate=schedule.duplicate,
            mdns=True,
            secret=schedule.secret,
            rng=random.Random(schedule.net_seed),
        )
        self.start = self.net.now
        self.checker = Checker(self.net, schedule, self.start, log)
        self.log = log
        self.active: list[tuple[int, Fault, tuple[str, ...]]] = []
        """Link faults in force: (index, fault, the nodes it resolved to)."""
        self.npm_address: tuple[str, int] | None = None

    def say(self, text: str) -> None:
        if self.log is not None:
            self.log(f"{self.net.now - self.start:9.4f} ** {text}")

    def play(self) -> Result:
        net, schedule = self.net, self.schedule
        protocols = schedule.protocols or (BASE_PROTOCOL,) * len(schedule.nodes)
        for (node_id, priority), protocol in zip(schedule.nodes, protocols, strict=True):
            net.add(
                node_id, priority, unicast=node_id in schedule.unicast, protocol=protocol, thin_from=schedule.thin_from
            )
        net.observer = self.checker.check
        todo: list[tuple[float, int, Callable[[], None]]] = []
        seq = itertools.count()
        for (node_id, _), offset in zip(schedule.nodes, schedule.start_offsets, strict=True):
            todo.append((offset, next(seq), lambda n=node_id: self._start(n)))  # type: ignore[misc]
        last = 0.0
        long_apart = False
        for index, fault in enumerate(schedule.faults):
            todo.append((fault.at, next(seq), lambda i=index, f=fault: self._begin(i, f)))  # type: ignore[misc]
            last = max(last, fault.at)
            if fault.duration:
                todo.append((fault.ends, next(seq), lambda i=index, f=fault: self._end(i, f)))  # type: ignore[misc]
                last = max(last, fault.ends)
                long_apart = long_apart or fault.duration >= PROBE_FAST_FOR
        last = max(last, max(schedule.start_offsets))
        todo.sort(key=lambda item: (item[0], item[1]))
        try:
            for at, _, action in todo:
                net.run(max(0.0, self.start + at - net.now))
                action()
                self.checker.topology_changed()
                self.checker.check()
            net.run(max(0.0, self.start + last - net.now))
            dead = sum(1 for n in net.nodes.values() if n.crashed) + (1 if self.npm_address else 0)
            bound = convergence_bound(schedule.timing, dead, long_apart)
            self.say(f"last fault over; convergence expected within {bound:.3f} s")
            self.checker.converge_after = net.now + bound
            net.run(bound + STABLE_FOR)
            self.checker.check()
        except Violation as violation:
            self.say(f"VIOLATION {violation}")
            return Result(schedule, violation, net.now - self.start, net.sent, self.lines)
        return Result(schedule, None, net.now - self.start, net.sent, self.lines)

    # --------------------------------------------------------------- faults

    def _start(self, node_id: str) -> None:
        self.say(f"start {node_id}")
        self.net.start(node_id)

    def _resolve(self, name: str) -> str:
        net = self.net
        if name in (LEADER, FOLLOWER):
            wanted = State.LEADER if name == LEADER else State.FOLLOWER
            found = sorted(
                (n for n in net.nodes.values() if n.up and n.machine.state is wanted),
                key=lambda n: (n.machine.term, n.machine.me.rank),
            )
            if found:
                return found[-1].node_id
            return net.random.choice(sorted(net.nodes))
        return name

    def _begin(self, index: int, fault: Fault) -> None:
        net = self.net
        nodes = tuple(n if n == "|" else self._resolve(n) for n in fault.nodes)
        self.say(f"[{index}] {replace(fault, nodes=nodes)}")
        kind = fault.kind
        node = net.nodes[nodes[0]] if nodes and kind not in ("partition", "loss") else None
        if kind == "crash" and node is not None and not node.crashed:
            net.crash(node.node_id)
        elif kind == "restart" and node is not None:
            net.restart(node.node_id)
        elif kind == "stop" and node is not None and node.up and not node.paused:
            net.stop(node.node_id)
        elif kind == "resign" and node is not None and node.up and not node.paused:
            net.resign(node.node_id)
        elif kind == "pause" and node is not None and node.up and not node.paused:
            net.pause(node.node_id)
            self.active.append((index, fault, nodes))
        elif kind in ("partition", "cut", "oneway", "loss"):
            self.active.append((index, fault, nodes))
            self._apply_links()
        elif kind == "npm" and self.npm_address is None:
            self.npm_address = net.add_npm_leader(NPM_ADDRESS)
            self.checker.npm_alive = True

    def _end(self, index: int, fault: Fault) -> None:
        net = self.net
        for entry in self.active:
            if entry[0] == index:
                self.active.remove(entry)
                self.say(f"[{index}] {fault.kind} over")
                if fault.kind == "pause":
                    node = net.nodes[entry[2][0]]
                    if node.paused and not node.crashed:
                        net.resume(node.node_id)
                else:
                    self._apply_links()
                return
        if fault.kind == "npm" and self.npm_address is not None and self.checker.npm_alive:
            self.say(f"[{index}] npm leader dies")
            net.kill_npm_leader(self.npm_address)
            self.checker.npm_alive = False

    def _apply_links(self) -> None:
        """Set the network's cuts and losses from the link faults in force."""
        net = self.net
        ids = sorted(net.nodes)
        cut: set[frozenset[str]] = set()
        one_way: set[tuple[str, str]] = set()
        loss: dict[tuple[str, str], float] = {}
        for _, fault, nodes in self.active:
            if fault.kind == "partition":
                sides: list[list[str]] = [[]]
                for n in nodes:
                    if n == "|":
                        sides.append([])
                    else:
                        sides[-1].append(n)
                for x, y in itertools.combinations(sides, 2):
                    cut.update(frozenset((a, b)) for a in x for b in y)
            elif fault.kind == "cut" and nodes[0] != nodes[1]:
                cut.add(frozenset(nodes))
            elif fault.kind == "oneway":
                targets = [nodes[1]] if len(nodes) > 1 else [i for i in ids if i != nodes[0]]
                one_way.update((nodes[0], t) for t in targets if t != nodes[0])
            elif fault.kind == "loss":
                if not nodes:
                    pairs = list(itertools.permutations(ids, 2))
                elif len(nodes) == 1:
                    others = [i for i in ids if i != nodes[0]]
                    pairs = [(nodes[0], i) for i in others] + [(i, nodes[0]) for i in others]
                else:
                    pairs = [(nodes[0], nodes[1]), (nodes[1], nodes[0])] if nodes[0] != nodes[1] else []
                for pair in pairs:
                    loss[pair] = 1.0 - (1.0 - loss.get(pair, 0.0)) * (1.0 - fault.rate)
        net.cut = cut
        net.one_way_cut = one_way
        net.link_loss = loss
        net.links_changed()


def run_schedule(schedule: Schedule, verbose: bool = False) -> Result:
    return Run(schedule, verbose).play()


def run_seed(seed: int, quorum: bool | None = None, verbose: bool = False, version: str = "0.2") -> Result:
    return run_schedule(generate(seed, quorum, version=version), verbose)


# ----------------------------------------------------------------------------- shrinking


def shrink(result: Result, max_runs: int = 200) -> Result:
    """A schedule with fewer faults that still breaks the same invariant (delta debugging).

    Safety violations cannot depend on faults that come later, so those go first; then
    ddmin removes chunks of faults, halving the chunks until single faults, as long as the
    violation stays.
    """
    assert result.violation is not None
    invariant = result.violation.invariant
    best = result
    runs = 0

    def attempt(candidate: Schedule) -> Result | None:
        nonlocal runs
        runs += 1
        outcome = run_schedule(candidate)
        if outcome.violation is not None and outcome.violation.invariant == invariant:
            return outcome
        return None

    if invariant != "convergence":
        early = [i for i, f in enumerate(best.schedule.faults) if f.at <= result.violation.time]
        if len(early) < len(best.schedule.faults):
            found = attempt(best.schedule.keep(early))
            if found is not None:
                best = found
    chunks = 2
    while len(best.schedule.faults) >= 1 and runs < max_runs:
        faults = len(best.schedule.faults)
        size = max(1, faults // chunks)
        reduced = False
        for start in range(0, faults, size):
            remaining = [i for i in range(faults) if not start <= i < start + size]
            found = attempt(best.schedule.keep(remaining))
            if found is not None:
                best = found
                chunks = max(chunks - 1, 2)
                reduced = True
                break
            if runs >= max_runs:
                break
        if not reduced:
            if size == 1:
                break
            chunks = min(faults, chunks * 2)
    return best


def faults_of(original: Schedule, shrunk: Schedule) -> list[int]:
    """The indices of ``shrunk``'s faults in ``original`` (for ``--keep``)."""
    indices: list[int] = []
    position = 0
    for fault in shrunk.faults:
        while original.faults[position] != fault:
            position += 1
        indices.append(position)
        position += 1
    return indices
