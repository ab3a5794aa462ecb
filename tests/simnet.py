"""A deterministic simulation of several state machines on a fake network with a fake clock.

No sockets, no threads, no sleeps: :class:`SimNet` delivers the machines' ``Send`` actions
after a fixed latency and runs their ticks at the deadlines they ask for, advancing a fake
clock from one due item to the next. Nodes can be crashed, paused (SIGSTOP: no input at all
until resumed), cut off from others, or stopped cleanly.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from followtheleader._machine import Action, Machine, Notify, NpmPing, Send, Timing
from followtheleader._model import Event, Member, State
from followtheleader._wire import ANYONE, Message, PeerRecord, decode_message, encode_message

TIMING = Timing(interval=0.2, max_failed=3)


@dataclass
class SimNode:
    machine: Machine
    address: tuple[str, int]
    events: list[Event] = field(default_factory=list)
    crashed: bool = False
    paused: bool = False
    inbox_while_paused: list[tuple[Message, tuple[str, int]]] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return self.machine.me.node_id


class SimNet:
    """Machines exchanging messages with ``latency`` seconds of delay, on a fake clock."""

    def __init__(
        self,
        latency: float = 0.001,
        timing: Timing = TIMING,
        loss: float = 0.0,
        seed: int = 1,
        quorum: int | None = None,
    ) -> None:
        self.loss = loss
        self.quorum = quorum
        self.random = random.Random(seed)
        self.now = 100.0
        self.latency = latency
        self.timing = timing
        self.nodes: dict[str, SimNode] = {}
        self.by_address: dict[tuple[str, int], SimNode] = {}
        self._queue: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self.cut: set[frozenset[str]] = set()
        self.one_way_cut: set[tuple[str, str]] = set()  # (from, to)
        self.sent = 0
        self.lost = 0
        self.npm_leaders: dict[tuple[str, int], bool] = {}
        """Simulated npm leaders by address: True while alive (they answer every PING)."""
        self.npm_pings = 0

    # ----------------------------------------------------------------- setup

    def add(self, node_id: str, priority: int = 0, npm_compat: bool = True) -> SimNode:
        address = (f"198.18.0.{len(self.nodes) + 1}", 9001)
        machine = Machine(
            "group", Member(node_id, priority, "", 9001), self.timing, quorum=self.quorum, npm_compat=npm_compat
        )
        node = SimNode(machine, address)
        self.nodes[node_id] = node
        self.by_address[address] = node
        return node

    def start(self, node_id: str, discover: bool = True) -> None:
        """Start a node; with ``discover``, it and the running nodes see each other's records."""
        node = self.nodes[node_id]
        self._apply(node, node.machine.start(self.now))
        for address in self.npm_leaders:  # their records stay (npm nodes send no goodbye)
            if node.machine.npm_compat:  # else the elector would not pass them on
                self._schedule(self.now + 0.02, node_id, ("npm-record", address))
        if discover:
            for other in self.nodes.values():
                if other is not node and other.machine.state is not State.STOPPED and not other.crashed:
                    self._discover(node, other)
                    self._discover(other, node)

    def _discover(self, observer: SimNode, subject: SimNode) -> None:
        record = PeerRecord(
            "group",
            Member(subject.node_id, subject.machine.me.priority, *subject.address),
            subject.machine.state,
            subject.machine.term,
        )
        self._schedule(self.now + 0.02, observer.node_id, ("record", record))

    def list_addresses(self, node_id: str, addresses: list[tuple[str, int]] | None = None) -> None:
        """Unicast mode: give the node a peer list (by default, the address of every node)."""
        listed = frozenset(addresses if addresses is not None else [n.address for n in self.nodes.values()])
        self._schedule(self.now + 0.001, node_id, ("addresses", listed))

    def add_npm_leader(self, address: tuple[str, int] = ("198.18.1.1", 9001)) -> tuple[str, int]:
        """An npm leader appears: alive, and every running node sees its DNS-SD record."""
        self.npm_leaders[address] = True
        for node in self.live():
            if node.machine.npm_compat:
                self._schedule(self.now + 0.02, node.node_id, ("npm-record", address))
        return address

    def kill_npm_leader(self, address: tuple[str, int]) -> None:
        """It stops answering (npm nodes send no goodbye)."""
        self.npm_leaders[address] = False

    # ----------------------------------------------------------------- faults

    def crash(self, node_id: str) -> None:
        self.nodes[node_id].crashed = True

    def pause(self, node_id: str) -> None:
        self.nodes[node_id].paused = True

    def resume(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.paused = False
        waiting, node.inbox_while_paused = node.inbox_while_paused, []
        for message, source in waiting:
            self._apply(node, node.machine.on_message(message, source, self.now))
        self._apply(node, node.machine.tick(self.now))

    def partition(self, side_a: list[str], side_b: list[str]) -> None:
        for a in side_a:
            for b in side_b:
                self.cut.add(frozenset((a, b)))

    def heal(self) -> None:
        self.cut.clear()

    def stop(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self._apply(node, node.machine.stop(self.now))

    def resign(self, node_id: str) -> None:
        node = self.nodes[node_id]
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
            _, _, node_id, item = heapq.heappop(self._queue)
            node = self.nodes[node_id]
            if node.crashed:
                return
            kind, payload = item  # type: ignore[misc]
            if kind in ("npm-record", "npm-pong"):
                if not node.paused:
                    host, port = payload
                    if kind == "npm-record":
                        self._apply(node, node.machine.on_npm_record(host, port, self.now))
                    else:
                        self._apply(node, node.machine.on_npm_pong((host, port), self.now))
                return
            if kind == "record":
                if not node.paused:
                    self._apply(node, node.machine.on_discovered(payload, self.now))
                return
            if kind == "addresses":
                if not node.paused:
                    self._apply(node, node.machine.on_addresses(payload, self.now))
                return
            if kind == "address-ping":
                if not node.paused:
                    self._apply(node, node.machine.on_address_ping(*payload, self.now))
                return
            message, source = payload
            if node.paused:
                node.inbox_while_paused.append((message, source))
            else:
                self._apply(node, node.machine.on_message(message, source, self.now))
            return
        for node in self.nodes.values():
            deadline = node.machine.next_deadline()
            if not node.crashed and not node.paused and deadline is not None and deadline <= self.now:
                self._apply(node, node.machine.tick(self.now))

    def _apply(self, node: SimNode, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Notify):
                node.events.append(action.event)
            elif isinstance(action, Send):
                self._deliver(node, action)
            elif isinstance(action, NpmPing):
                self.npm_pings += 1
                if self.npm_leaders.get(action.address):
                    self._schedule(self.now + 2 * self.latency, node.node_id, ("npm-pong", action.address))

    def _deliver(self, sender: SimNode, send: Send) -> None:
        target = self.by_address.get(send.address)
        self.sent += 1
        if target is None or frozenset((sender.node_id, target.node_id)) in self.cut:
            return
        if (sender.node_id, target.node_id) in self.one_way_cut:
            return
        if self.loss and self.random.random() < self.loss:
            self.lost += 1
            return
        # Through the real encoder and decoder, so the simulation checks the wire format too.
        message = decode_message(encode_message(send.message))
        assert message is not None, send.message
        # As the elector routes them: a ping to ANYONE (an address whose node is not known),
        # or a datagram of the node's own, is answered and never taken as proof of life.
        kind = "address-ping" if send.to == ANYONE or target is sender else "message"
        self._schedule(self.now + self.latency, target.node_id, (kind, (message, sender.address)))

    def _schedule(self, at: float, node_id: str, item: object) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), node_id, item))

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
