"""A deterministic simulation of several state machines on a fake network with a fake clock.

No sockets, no threads, no sleeps: :class:`SimNet` delivers the machines' ``Send`` actions
after a latency and runs their ticks at the deadlines they ask for, advancing a fake clock
from one due item to the next. Nodes can be crashed and restarted (a fresh machine with a new
boot: each incarnation keeps its own events), paused (SIGSTOP: no input at all until
resumed, while the clock runs on), cut off from others both ways or one way, or stopped
cleanly. Datagrams can be delayed at random (which reorders them), duplicated and lost, for
the whole network or per direction of a link.

By default DNS-SD is simulated the simple way the unit tests need: a started node and the
running nodes see each other's records 20 ms later, whatever the links. With ``mdns=True``
(the fault simulator, ``tests/simfuzz.py``) it follows the elector more closely: a node's
record changes with its ``Publish`` actions, a clean stop sends a goodbye, records cross
only links that are not cut and wait for the heal otherwise, and the delays are those
measured with python-zeroconf (see ``docs/how-it-works.rst`` and the design notes).

A node added with ``unicast=True`` uses a peer list instead (the ``peers`` option): it has no
DNS-SD browser and no record, and on start it gets the address of every node (or the list it
was given) at once, as the elector's ``PeerDirectory`` hands over a list of addresses. Nodes of
both kinds make a mixed group, as on a network with multicast where some nodes list peers.
A ping to ANYONE (to a listed address whose node is not known yet) reaches the receiver as
the elector hands it over: in a group with a ``secret``, its stamp names ANYONE and only
:meth:`Machine.on_address_ping` sees it; without one the datagram carries no stamp, nothing
tells it from a ping to the node itself, and it is an ordinary message.

Every random draw comes from one :class:`random.Random` (``seed``, or ``rng``), so a run is
reproduced exactly by the same seed and the same calls.

An optional trace sink (:attr:`SimNet.trace`) sees every input to a machine, every action it
returns, every datagram with its fate, every queued item and every fault, with the fake
clock's time: ``tests/simtrace.py`` records them to prove that a refactoring of the machine
keeps its behaviour. It only observes: a run gives the same events with or without it.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from followtheleader._core.machine import Action, Machine, Notify, NpmPing, Publish, Send, Timing
from followtheleader._core.messages import ANYONE, BASE_PROTOCOL, PROTOCOL, Message, PeerRecord
from followtheleader._core.model import Event, Member, State
from followtheleader._core.timing import THIN_FROM
from followtheleader._wire.protocol import decode_message, encode_message

TIMING = Timing(interval=0.2, max_failed=3)
MULTICAST = ("239.255.0.1", 9002)
"""The simulated group's multicast address (:attr:`Machine.multicast`)."""

FRESH_BROWSER = (0.02, 0.1)
"""A fresh browser sees the existing records after this many seconds (about 0.08 s measured)."""
NEW_SERVICE = (0.1, 1.2)
"""A running browser sees a new record after this long (about 1.2 s measured)."""
RECORD_UPDATE = (0.005, 0.05)
"""A running browser sees a changed TXT record or a goodbye (about 2 ms measured) after this."""
REDISCOVERY = (0.02, 1.2)
"""After a cut heals, a record (or goodbye) that could not cross it arrives after this."""


@dataclass
class Incarnation:
    """One run of a node: from a start to its crash, restart or the end of the simulation."""

    boot: int
    started_at: float
    events: list[Event] = field(default_factory=list)
    ended_at: float | None = None
    """When it crashed or was replaced by a restart (a clean stop leaves it None: its events say so)."""


@dataclass
class SimNode:
    machine: Machine
    address: tuple[str, int]
    events: list[Event] = field(default_factory=list)
    """The events of the current incarnation (the same list as ``incarnations[-1].events``)."""
    crashed: bool = False
    paused: bool = False
    inbox_while_paused: list[tuple[Message, tuple[str, int]]] = field(default_factory=list)
    hints_while_paused: list[Callable[[], list[Action]]] = field(default_factory=list)
    """With ``mdns``: records and npm pongs that arrived during a pause, handled on resume."""
    incarnations: list[Incarnation] = field(default_factory=list)
    unicast: bool = False
    """It finds peers from a list of addresses (the ``peers`` option), not by DNS-SD."""
    peer_list: tuple[tuple[str, int], ...] | None = None
    """Its list (None: the address of every node of the simulation, itself included)."""

    @property
    def node_id(self) -> str:
        return self.machine.me.node_id

    @property
    def up(self) -> bool:
        """Running: started, not stopped and not crashed (maybe paused)."""
        return not self.crashed and self.machine.state is not State.STOPPED


class SimNet:
    """Machines exchanging messages with ``latency`` seconds of delay, on a fake clock.

    :param latency: the least one-way delay of a datagram.
    :param jitter: each datagram takes up to this much longer, at random (so they reorder).
    :param loss: probability that any datagram is lost.
    :param duplicate: probability that a datagram arrives twice (each copy with its own delay).
    :param seed: seed of the one random generator, unless ``rng`` is given.
    :param quorum: quorum mode's group size for every machine, or None.
    :param mdns: simulate DNS-SD records closely (see the module's docstring).
    :param secret: an authenticated group: a ping to ANYONE is only answered (see the module's
        docstring), DNS-SD goodbyes are not taken (they carry no signature), and no node
        follows npm leaders (``npm_compat`` is off with a secret).
    """

    def __init__(
        self,
        latency: float = 0.001,
        timing: Timing = TIMING,
        loss: float = 0.0,
        seed: int = 1,
        quorum: int | None = None,
        *,
        jitter: float = 0.0,
        duplicate: float = 0.0,
        mdns: bool = False,
        secret: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.loss = loss
        self.quorum = quorum
        self.random = rng if rng is not None else random.Random(seed)
        self.now = 100.0
        self.latency = latency
        self.jitter = jitter
        self.duplicate = duplicate
        self.mdns = mdns
        self.secret = secret
        self.timing = timing
        self.nodes: dict[str, SimNode] = {}
        self.by_address: dict[tuple[str, int], SimNode] = {}
        self._protocols: dict[str, tuple[int, int, bool]] = {}
        """(protocol, thin_from, multicast) of each node, for its machine and the machines of its restarts."""
        self._queue: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self._boots = itertools.count(1)
        self.cut: set[frozenset[str]] = set()
        self.one_way_cut: set[tuple[str, str]] = set()  # (from, to)
        self.link_loss: dict[tuple[str, str], float] = {}
        """Probability of loss per direction (from, to), on top of ``loss``."""
        self.sent = 0
        self.lost = 0
        self.duplicated = 0
        self.npm_leaders: dict[tuple[str, int], bool] = {}
        """Simulated npm leaders by address: True while alive (they answer every PING)."""
        self.npm_pings = 0
        self.records: dict[str, PeerRecord] = {}
        """With ``mdns``: the record each running node publishes."""
        self._pending: dict[tuple[str, str], tuple[str, object]] = {}
        """With ``mdns``: (subject, observer) -> the record or goodbye waiting for a cut to heal."""
        self.observer: Callable[[], None] | None = None
        """Called after every step of :meth:`run` (the fault simulator checks invariants there)."""
        self.trace: Callable[..., None] | None = None
        """If set, called as ``trace(now, what, *details)`` for every input to a machine
        (``start``, ``stop``, ``resign``, ``pop`` of a queued item, ``tick``, ``held``), every
        action (``action``, and ``send`` with the encoded datagram, then ``drop`` or ``queue``),
        every item queued or ``pending`` behind a cut, and every fault (``crash``, ``pause``,
        ``resume``, ``links``, ...). Used by ``tests/simtrace.py``; it must not change anything."""

    def _note(self, what: str, *details: Any) -> None:
        """Tell the trace sink, if there is one, what happens now."""
        if self.trace is not None:
            self.trace(self.now, what, *details)

    # ----------------------------------------------------------------- setup

    def add(
        self,
        node_id: str,
        priority: int = 0,
        npm_compat: bool = True,
        *,
        unicast: bool = False,
        peers: list[tuple[str, int]] | None = None,
        protocol: int = PROTOCOL,
        thin_from: int = THIN_FROM,
        multicast: bool | None = None,
    ) -> SimNode:
        """A node (not started). With ``unicast``, it finds its peers from ``peers`` (by default
        the address of every node) instead of DNS-SD; like the elector with ``peers`` or a
        ``secret``, it then never follows npm leaders. ``protocol`` 2 makes it a node of 0.2
        (see :attr:`Machine.protocol`); ``thin_from`` is :attr:`Machine.thin_from`. With
        ``multicast`` (by default: protocol 3, found by DNS-SD, no secret, as the elector
        does), it receives the datagrams sent to :data:`MULTICAST` (:attr:`Machine.multicast`),
        each copy through the links from the sender as a unicast datagram would go."""
        address = (f"198.18.0.{len(self.nodes) + 1}", 9001)
        npm_compat = npm_compat and not unicast and not self.secret
        if multicast is None:
            multicast = protocol >= PROTOCOL and not unicast and not self.secret
        self._protocols[node_id] = (protocol, thin_from, multicast)
        node = SimNode(self._machine(node_id, priority, npm_compat), address, unicast=unicast)
        node.peer_list = tuple(peers) if peers is not None else None
        node.incarnations.append(Incarnation(node.machine.boot, self.now, node.events))
        self.nodes[node_id] = node
        self.by_address[address] = node
        self._note("add", node_id, priority, npm_compat, address)
        if unicast:  # noted apart, so that the trace of a run without unicast nodes stays as it was
            self._note("unicast", node_id, node.peer_list)
        if protocol != BASE_PROTOCOL:  # noted apart too: 0.2's traces stay as they were
            self._note("protocol", node_id, protocol, thin_from, multicast)
        return node

    def _machine(self, node_id: str, priority: int, npm_compat: bool) -> Machine:
        protocol, thin_from, multicast = self._protocols[node_id]
        machine = Machine(
            "group",
            Member(node_id, priority, "", 9001),
            self.timing,
            quorum=self.quorum,
            npm_compat=npm_compat,
            protocol=protocol,
            thin_from=thin_from,
            multicast=MULTICAST if multicast else None,
        )
        machine.boot = next(self._boots)
        return machine

    def start(self, node_id: str, discover: bool = True) -> None:
        """Start a node; with ``discover``, it and the running nodes see each other's records
        (a unicast node gets its peer list instead, at once, and has no record)."""
        node = self.nodes[node_id]
        self._note("start", node_id, node.machine.boot, discover)
        self._apply(node, node.machine.start(self.now))
        if node.unicast:
            if discover:
                listed = frozenset(node.peer_list or (n.address for n in self.nodes.values()))
                self._note("addresses", node_id, listed)
                self._apply(node, node.machine.on_addresses(listed, self.now))
            return
        for address in self.npm_leaders:  # their records stay (npm nodes send no goodbye)
            if node.machine.npm_compat:  # else the elector would not pass them on
                self._schedule(self.now + 0.02, node_id, ("npm-record", address))
        if discover and self.mdns:
            self.records[node_id] = self._record(node)
            for other in self.browsers():
                if other is not node:
                    self._send_record(other.node_id, node_id, ("record", self.records[other.node_id]), FRESH_BROWSER)
                    self._send_record(node_id, other.node_id, ("record", self.records[node_id]), NEW_SERVICE)
        elif discover:
            for other in self.nodes.values():
                if other is not node and not other.unicast and other.up:
                    self._discover(node, other)
                    self._discover(other, node)

    def browsers(self) -> list[SimNode]:
        """The running nodes that browse DNS-SD (all but the unicast ones)."""
        return [n for n in self.nodes.values() if n.up and not n.unicast]

    def restart(self, node_id: str) -> SimNode:
        """Crash the node if it runs, then start a fresh machine with the same id and a new boot."""
        node = self.nodes[node_id]
        self._note("restart", node_id)
        if not node.crashed:
            self.crash(node_id)
        old = node.machine
        node.machine = self._machine(node_id, old.me.priority, old.npm_compat)
        node.events = []
        node.incarnations.append(Incarnation(node.machine.boot, self.now, node.events))
        node.crashed = node.paused = False
        node.inbox_while_paused = []
        node.hints_while_paused = []
        self.start(node_id)
        return node

    def _record(self, node: SimNode) -> PeerRecord:
        return PeerRecord(
            "group",
            Member(node.node_id, node.machine.me.priority, *node.address),
            node.machine.state,
            node.machine.term,
        )

    def _discover(self, observer: SimNode, subject: SimNode) -> None:
        self._schedule(self.now + 0.02, observer.node_id, ("record", self._record(subject)))

    def list_addresses(self, node_id: str, addresses: list[tuple[str, int]] | None = None) -> None:
        """Unicast mode: give the node a peer list (by default, the address of every node)."""
        listed = frozenset(addresses if addresses is not None else [n.address for n in self.nodes.values()])
        self._schedule(self.now + 0.001, node_id, ("addresses", listed))

    def add_npm_leader(self, address: tuple[str, int] = ("198.18.1.1", 9001)) -> tuple[str, int]:
        """An npm leader appears: alive, and every running node sees its DNS-SD record."""
        self.npm_leaders[address] = True
        self._note("npm-leader", address)
        for node in self.live():
            if node.machine.npm_compat and not node.unicast:
                self._schedule(self.now + 0.02, node.node_id, ("npm-record", address))
        return address

    def kill_npm_leader(self, address: tuple[str, int]) -> None:
        """It stops answering (npm nodes send no goodbye)."""
        self.npm_leaders[address] = False
        self._note("npm-leader-dies", address)

    # ----------------------------------------------------------------- faults

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self._note("crash", node_id)
        node.crashed = True
        node.incarnations[-1].ended_at = self.now
        if self.mdns:  # nobody announces for it any more, and its own cache is gone
            self.records.pop(node_id, None)
            for key in [k for k in self._pending if node_id in k]:
                del self._pending[key]

    def pause(self, node_id: str) -> None:
        self._note("pause", node_id)
        self.nodes[node_id].paused = True

    def resume(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.paused = False
        waiting, node.inbox_while_paused = node.inbox_while_paused, []
        hints, node.hints_while_paused = node.hints_while_paused, []
        self._note("resume", node_id, len(waiting), len(hints))
        for index, (message, source) in enumerate(waiting):
            self._note("held", node_id, "message", index)
            self._apply(node, node.machine.on_message(message, source, self.now))
        for index, hint in enumerate(hints):
            self._note("held", node_id, "hint", index)
            self._apply(node, hint())
        self._note("tick", node_id)
        self._apply(node, node.machine.tick(self.now))

    def partition(self, side_a: list[str], side_b: list[str]) -> None:
        for a in side_a:
            for b in side_b:
                self.cut.add(frozenset((a, b)))
        self._note("partition", side_a, side_b)

    def heal(self) -> None:
        self.cut.clear()
        self.links_changed()

    def blocked(self, sender: str, target: str) -> bool:
        """Nothing gets from ``sender`` to ``target`` (a cut, or a one-way cut that way)."""
        return frozenset((sender, target)) in self.cut or (sender, target) in self.one_way_cut

    def links_changed(self) -> None:
        """After cuts were removed: records and goodbyes that waited for them cross now."""
        self._note("links", self.cut, self.one_way_cut, self.link_loss)
        for (subject, observer), item in list(self._pending.items()):
            if not self.blocked(subject, observer):
                del self._pending[(subject, observer)]
                self._send_record(subject, observer, item, REDISCOVERY)

    def stop(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self._note("stop", node_id)
        self._apply(node, node.machine.stop(self.now))
        # In an authenticated group the elector ignores goodbyes: they carry no signature.
        if self.mdns and self.records.pop(node_id, None) is not None and not self.secret:
            for other in self.browsers():
                if other is not node:
                    self._send_record(node_id, other.node_id, ("goodbye", node_id), RECORD_UPDATE)

    def resign(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self._note("resign", node_id)
        self._apply(node, node.machine.resign(self.now))

    # ----------------------------------------------------------------- running

    def run(self, seconds: float) -> None:
        """Advance the fake clock by ``seconds``, delivering and ticking as due."""
        end = self.now + seconds
        while True:
            due = self._next_due()
            if due is None or due > end:
                break
            self.now = max(self.now, due)
            self._step()
            if self.observer is not None:
                self.observer()
        self.now = end

    def _next_due(self) -> float | None:
        times = [self._queue[0][0]] if self._queue else []
        for node in self.nodes.values():
            if node.crashed or node.paused:
                continue
            deadline = node.machine.next_deadline()
            if deadline is not None:
                times.append(deadline)
        return min(times) if times else None

    def _step(self) -> None:
        if self._queue and self._queue[0][0] <= self.now:
            _, seq, node_id, item = heapq.heappop(self._queue)
            node = self.nodes[node_id]
            kind, payload = cast("tuple[str, Any]", item)
            if self.trace is not None:
                if node.crashed:
                    fate = "crashed"
                elif not node.paused:
                    fate = "handled"
                else:
                    fate = "held" if kind == "message" or self.mdns else "dropped"
                self._note("pop", seq, node_id, kind, fate)
            if node.crashed:
                return
            if kind == "message":
                message, source = payload
                if node.paused:
                    node.inbox_while_paused.append((message, source))
                else:
                    self._apply(node, node.machine.on_message(message, source, self.now))
                return
            hint = self._hint(node, kind, payload)
            if not node.paused:
                self._apply(node, hint())
            elif self.mdns:
                node.hints_while_paused.append(hint)
            return
        for node in self.nodes.values():
            deadline = node.machine.next_deadline()
            if not node.crashed and not node.paused and deadline is not None and deadline <= self.now:
                self._note("tick", node.node_id)
                self._apply(node, node.machine.tick(self.now))

    def _hint(self, node: SimNode, kind: str, payload: object) -> Callable[[], list[Action]]:
        """The input a DNS-SD record, a goodbye or an npm pong makes (at the time it is handled)."""
        machine = node.machine
        if kind == "npm-record":
            host, port = cast("tuple[str, int]", payload)
            return lambda: machine.on_npm_record(host, port, self.now)
        if kind == "npm-pong":
            return lambda: machine.on_npm_pong(payload, self.now)  # type: ignore[arg-type]
        if kind == "addresses":
            return lambda: machine.on_addresses(payload, self.now)  # type: ignore[arg-type]
        if kind == "address-ping":
            message, source = cast("tuple[Message, tuple[str, int]]", payload)
            return lambda: machine.on_address_ping(message, source, self.now)
        if kind == "goodbye":
            return lambda: machine.on_goodbye(payload, self.now)  # type: ignore[arg-type]
        assert kind == "record", kind
        return lambda: machine.on_discovered(payload, self.now)  # type: ignore[arg-type]

    def _apply(self, node: SimNode, actions: list[Action]) -> None:
        # The datagrams of one step go out sorted by receiver (keeping their order per
        # receiver), so that the random delays drawn for them do not depend on the order of
        # iteration of a set in the machine (which changes with PYTHONHASHSEED): by node id,
        # then address (the pings to ANYONE of one step go to as many listed addresses).
        sends = sorted((a for a in actions if isinstance(a, Send)), key=lambda a: (a.to, a.address))
        for action in [*sends, *(a for a in actions if not isinstance(a, Send))]:
            if not isinstance(action, Send):  # a Send is traced by _deliver
                self._note("action", node.node_id, action)
            if isinstance(action, Notify):
                node.events.append(action.event)
            elif isinstance(action, Send):
                self._deliver(node, action)
            elif isinstance(action, NpmPing):
                self.npm_pings += 1
                if self.npm_leaders.get(action.address):
                    self._schedule(self.now + 2 * self.latency, node.node_id, ("npm-pong", action.address))
            elif isinstance(action, Publish) and self.mdns and node.node_id in self.records:
                old = self.records[node.node_id]
                self.records[node.node_id] = PeerRecord(old.group, old.member, action.role, action.term)
                for other in self.browsers():
                    if other is not node:
                        record = self.records[node.node_id]
                        self._send_record(node.node_id, other.node_id, ("record", record), RECORD_UPDATE)

    def _send_record(self, subject: str, observer: str, item: tuple[str, object], delay: tuple[float, float]) -> None:
        """With ``mdns``: ``observer`` sees ``item`` about ``subject`` after ``delay``, or once the
        cut between them heals (only the latest item waits)."""
        if self.blocked(subject, observer):
            self._note("pending", subject, observer, item)
            self._pending[(subject, observer)] = item
        else:
            self._schedule(self.now + self.random.uniform(*delay), observer, item)

    def _deliver(self, sender: SimNode, send: Send) -> None:
        self.sent += 1
        data = encode_message(send.message)
        self._note("send", sender.node_id, send.to, send.address, data)
        if send.address == MULTICAST:  # a copy to each node that listens there, in id order
            for node_id in sorted(self.nodes):
                target = self.nodes[node_id]
                if target is not sender and target.machine.multicast is not None:
                    self._note("copy", node_id)
                    self._deliver_to(sender, send, data, target)
            return
        self._deliver_to(sender, send, data, self.by_address.get(send.address))

    def _deliver_to(self, sender: SimNode, send: Send, data: bytes, target: SimNode | None) -> None:
        if target is None or frozenset((sender.node_id, target.node_id)) in self.cut:
            self._note("drop", "nowhere" if target is None else "cut")
            return
        if (sender.node_id, target.node_id) in self.one_way_cut:
            self._note("drop", "one-way cut")
            return
        loss = self.loss
        link_loss = self.link_loss.get((sender.node_id, target.node_id))
        if link_loss:
            loss = 1.0 - (1.0 - loss) * (1.0 - link_loss)
        if loss and self.random.random() < loss:
            self.lost += 1
            self._note("drop", "lost")
            return
        # Through the real encoder and decoder, so the simulation checks the wire format too.
        message = decode_message(data)
        assert message is not None, send.message
        # As the elector routes them: a datagram of the node's own, or in an authenticated
        # group a ping stamped for ANYONE (an address whose node is not known), is answered and
        # never taken as proof of life. Without a secret a ping to ANYONE has no stamp: to the
        # receiver it is a ping like any other.
        anyone = send.to == ANYONE and self.secret
        kind = "address-ping" if anyone or target is sender else "message"
        copies = 1
        if self.duplicate and self.random.random() < self.duplicate:
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            delay = self.latency + (self.random.random() * self.jitter if self.jitter else 0.0)
            self._schedule(self.now + delay, target.node_id, (kind, (message, sender.address)))

    def _schedule(self, at: float, node_id: str, item: object) -> None:
        seq = next(self._seq)
        self._note("queue", seq, at, node_id, item)
        heapq.heappush(self._queue, (at, seq, node_id, item))

    # ----------------------------------------------------------------- queries

    def live(self) -> list[SimNode]:
        return [
            n for n in self.nodes.values() if not n.crashed and not n.paused and n.machine.state is not State.STOPPED
        ]

    def leaders(self) -> list[SimNode]:
        return [n for n in self.live() if n.machine.state is State.LEADER]

    def agreed(self) -> tuple[str, int] | None:
        """(leader id, term) when every live node agrees on one leader (ours, or an npm one)."""
        nodes = self.live()
        views = {(n.machine.leader.node_id if n.machine.leader else None, n.machine.term) for n in nodes}
        states = {n.machine.state for n in nodes}
        npm_led = any(n.machine.leader is not None and n.machine.leader.npm for n in nodes)
        leaders = len(self.leaders()) + (1 if npm_led else 0)
        if len(views) == 1 and leaders == 1 and states <= {State.LEADER, State.FOLLOWER}:
            leader, term = views.pop()
            assert leader is not None
            return leader, term
        return None

    def run_until_agreed(self, limit: float = 10.0, step: float = 0.01, other_than: str = "") -> tuple[str, int]:
        waited = 0.0
        while waited <= limit:
            found = self.agreed()
            if found and found[0] != other_than:
                return found
            self.run(step)
            waited += step
        raise AssertionError(
            f"no agreement after {limit}s: {[(n.node_id, n.machine.state, n.machine.leader) for n in self.live()]}"
        )
