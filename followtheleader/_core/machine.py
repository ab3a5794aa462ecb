"""The election state machine: plain code with no I/O, no threads and no clock of its own.

Every input is a method that takes the current ``time.monotonic()`` and returns the actions
to carry out (datagrams to send, a record to publish, events for the callbacks). The elector
calls these methods under its state lock and carries out the actions after releasing it; unit
tests call them directly with a fake clock.

How an election goes (see ``docs/how-it-works.rst``):

* A node starts ELECTING. It pings every peer it learns of (from DNS-SD or from other
  peers) every ``interval``. A leader answers a ping with a pong that says so, and the node
  follows it at once. Nobody claims before the settle window has passed.
* After the settle window, the best-ranked live candidate (priority, then node id) claims with
  term = greatest term seen + 1 and sends ``claim`` to every peer it knows. The others keep
  pinging their best candidate; a candidate that stays silent for the failure window is
  dead, and the next one down the ranking becomes the one to wait for (or to claim).
* A leader sends a ``beat`` to every follower on its own tick, every ``interval``; it carries
  the leader's clock (the lease mark) and, for a follower that does not hold its current
  version, the member list. Each follower answers with an ``ack`` that echoes the mark, and
  pings its leader only when a beat is overdue. When no beat (nor pong) has come for the
  failure window, the follower starts electing at once, without a settle window: the
  best-ranked live member of that list claims, the others wait for its claim.
* A leader's lease runs a little shorter than the followers' failure window. Its own ticks
  renew it: a leader awake all along leads on when its followers fall silent (they may have
  crashed; if they were cut off, each side leads, as in any partition without quorum). A
  paused or starved leader misses its ticks, so the lease lapses and ``is_leader`` reads
  False before any follower can have given up on it. When a follower shows that it does not
  hear the leader (its pings echo a mark over two intervals old: a one-way fault), the lease
  is cut back to what the echoed marks renew, so the leader demotes before that follower
  gives up and elects. In quorum mode the echoes of a majority are the lease.
* A leader that stops or resigns sends ``resign`` first; its followers elect at once and the
  successor claims within one message.
* Two leaders that learn of each other compare (term, priority, node id); the lesser steps
  down. Hearsay (a pong that names a leader) only makes a node ping that leader; only a
  message from the leader itself makes a node follow it or step down for it.
* A leader of the npm package (seen as the DNS-SD record ``<group>`` of the service type)
  outranks every node of ours, since it never steps down: a node that gets its ``PONG``
  follows it, and nobody of ours claims while it may be alive. Its followers ping it with
  ``PING`` every interval and elect among themselves when it falls silent.

The parts (see ``followtheleader/_core/__init__.py`` for the rules of the pure core):
:mod:`.node` (what outlives a role, and the output), :mod:`.roles` (each role's state and
timers; :meth:`.Node.become` is the only change of role), :mod:`.progress` (the leader's
table of its followers), :mod:`.quorum` (majority arithmetic), :mod:`.npm` (npm leaders and
the records served to npm nodes), :mod:`.listed` (unicast mode's listed addresses),
:mod:`.timing` and :mod:`.actions`. This module takes the inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .actions import Action, Notify, NpmPing, Publish, Send
from .candidates import ping_listed
from .handlers import Handlers
from .messages import Message, PeerRecord
from .model import Member, State
from .node import Stopped
from .peers import npm_member
from .roles import Electing, Follower
from .timing import FORGET_AFTER, NPM_HOLD, PROBE_FAST_FOR, PROBE_SLOW_EVERY, Timing

__all__ = [
    "FORGET_AFTER",
    "NPM_HOLD",
    "PROBE_FAST_FOR",
    "PROBE_SLOW_EVERY",
    "Action",
    "Machine",
    "Notify",
    "NpmPing",
    "Publish",
    "Send",
    "Timing",
    "npm_member",
]

_HANDLERS = {kind: f"_on_{kind}" for kind in ("ping", "pong", "beat", "ack", "claim", "resign", "leave")}
"""The method of :class:`Machine` that handles each kind of message."""


@dataclass
class Machine(Handlers):
    """The election state of one node: its inputs. Not thread-safe: the elector serialises
    calls."""

    # ----------------------------------------------------------------- inputs

    def start(self, now: float) -> list[Action]:
        """Begin electing; nobody is claimed for the settle window."""
        if self.state is State.STOPPED:
            self._last_now = now
            self.become(Electing(settle_until=now + self.timing.settle, next_ping_at=now), now, "started")
        return self._flush()

    def stop(self, now: float) -> list[Action]:
        """Leave the group: a leader resigns, a follower says it leaves."""
        self._expire(now)
        self.role.leave(self, now)
        if self.state is not State.STOPPED:
            self.become(Stopped(), now, "stopped")
        return self._flush()

    def resign(self, now: float) -> list[Action]:
        """Step down if leading, and stand back as a candidate for one failure window."""
        self._expire(now)
        if self.state is State.LEADER:
            self._send_to_peers(self._message("resign", now, with_members=True))
            self.resigned_until = now + self.timing.failure_window
            Electing.enter(self, now, "resigned")
        return self._flush()

    def tick(self, now: float) -> list[Action]:
        """Timers: failure detection, lease, claims, heartbeats and periodic pings."""
        self._expire(now)
        self.role.tick(self, now)
        if self.npm.tick(now, self._follows_npm(), self._last_now, self.timing, self._probe):
            self._actions.append(Publish(State.LEADER, self._told_term(), serve_npm=True))
        return self._flush()

    def _expire(self, now: float) -> None:
        """Apply every timeout that has passed, before anything else is decided."""
        if now - self._last_now > 2 * self.timing.interval:
            # No input for over two intervals (a node awake has one every interval and a half
            # at most): this node was paused or starved. What waited in its inbox, and the
            # timers that ran out meanwhile, are stale: the group may have elected without it.
            # It claims only after a whole settle window, time to hear of the current leader.
            self._resumed_until = now + self.timing.settle
        self._last_now = max(self._last_now, now)
        self.role.expire(self, now)
        self.npm.expire(now, self.timing)

    def next_deadline(self) -> float | None:
        """The time at which :meth:`tick` next has work, or None when stopped: the earliest
        of the timers of the role and of the npm part, computed by the code that acts on them."""
        if self.state is State.STOPPED:
            return None
        return min(self.role.deadlines(self) + self.npm.deadlines(self._follows_npm(), self._last_now, self.timing))

    def on_message(self, message: Message, source: tuple[str, int], now: float) -> list[Action]:
        """Handle one decoded heartbeat datagram from ``source``."""
        if self.state is State.STOPPED or message.group != self.group or message.sender == self.me.node_id:
            return []
        self._expire(now)
        if message.role is State.LEADER and self._stale_leadership(message.sender, message.term, now, message.boot):
            return []  # sent before its word that it resigns or stops
        self.max_term = max(self.max_term, message.term)
        sender = Member(message.sender, message.priority, source[0], source[1])
        if message.role is not State.LEADER and not self.role.outdated(self, message):  # it says so itself
            self.role.lost_leader(self, message.sender, now, "leader stepped down", wait=self.timing.confirm)
        known = self.peers.get(sender.node_id)
        revived = known is not None and known.dead
        self._heard(sender, now)
        if revived:
            self.role.peer_changed(self, now)  # no longer dead: it may be a live member again
        getattr(self, _HANDLERS[message.kind])(message, sender, now)
        self.role.consider_claim(self, now)
        return self._flush()

    def on_discovered(self, record: PeerRecord, now: float) -> list[Action]:
        """A peer's DNS-SD record appeared or changed: a hint, never proof of life."""
        if self.state is State.STOPPED or record.group != self.group or record.member.node_id == self.me.node_id:
            return []
        self._expire(now)
        self.max_term = max(self.max_term, record.term)
        if self._stale_leadership(record.member.node_id, record.term, now, record.boot):
            # Made before its word that it resigns or stops, or (one that resigned and stands
            # back) after it: either way no candidate, and nothing to greet.
            return self._flush()
        # A follower of one of ours gets the member list from its leader; a follower of an npm
        # leader (which sends none) keeps track of its peers itself, for the election to come.
        if self.state is not State.FOLLOWER or self._follows_npm():
            peer = self.peers.get(record.member.node_id)
            if peer is None or peer.dropped:  # a peer only dropped from a member list is new
                peer = self._new_peer(record.member)
            elif peer.dead or peer.last_heard is None:
                peer.member = record.member  # it may have come back elsewhere
            peer.departed = False  # a new or changed record: it is there again
            # A record is a hint: only an answer makes it count. A leader greets every node it
            # does not hear from yet, so a newcomer learns of it before its own settle window
            # ends (answers to the newcomer's DNS-SD query may be rate-limited for a second).
            if self.role.greets(self, peer, record.role is State.LEADER, now):
                self._ping_now(peer, now)
        return self._flush()

    def on_goodbye(self, node_id: str, now: float) -> list[Action]:
        """A peer withdrew its DNS-SD record (it stopped)."""
        peer = self.peers.get(node_id)
        if self.state is State.STOPPED:
            return []
        self._note_departure(node_id, 0, 0, now)  # also when its entry is gone already
        if peer is None:
            return []
        self._expire(now)
        peer.dead = peer.departed = True
        self.role.peer_changed(self, now)
        if self.role.lost_leader(self, node_id, now, "leader said goodbye"):
            self.role.consider_claim(self, now)
        return self._flush()

    def on_npm_record(self, host: str, port: int, now: float) -> list[Action]:
        """The DNS-SD record of an npm leader appeared at ``host:port``: a hint; ping it."""
        if self.state is State.STOPPED:
            return []
        self._expire(now)
        if not self._follows_npm():  # one npm leader at a time: the one it follows
            self._ping_now(self.npm.know(host, port, now), now)
        return self._flush()

    def on_npm_pong(self, source: tuple[str, int], now: float) -> list[Action]:
        """The npm leader answered a ``PING``: it is alive, and it leads (it never steps down)."""
        npm = self.npm.peer
        if self.state is State.STOPPED or npm is None or npm.member.address != source:
            return []
        self._expire(now)
        if self._follows_npm():
            self._measure_round_trip(now)
        npm.last_heard = now
        npm.pinged_since = None
        npm.dead = False
        if not self._follows_npm():
            reason = "an npm leader outranks this leader" if self.state is State.LEADER else "found the npm leader"
            Follower.enter(self, npm.member, 0, now, reason)
        return self._flush()

    def on_addresses(self, addresses: Iterable[tuple[str, int]], now: float) -> list[Action]:
        """Unicast mode: nodes of the group may be at these addresses (the whole current list).

        Addresses no longer listed are not pinged any more. A candidate or leader (which hears
        from every live peer) takes the silent peers there as departed: a replica removed
        from a DNS name is no longer probed.
        """
        if self.state is State.STOPPED:
            return []
        self._expire(now)
        for address in self.listed.update(addresses):
            for peer in self.peers.values():
                silent = self.role.probes and not self._answers(peer, now)
                if peer.member.address == address and silent:
                    peer.dead = peer.departed = True
        ping_listed(self, now)
        return self._flush()

    def on_address_ping(self, message: Message, source: tuple[str, int], now: float) -> list[Action]:
        """A ping addressed to ANYONE (or any datagram of this node's own) came from ``source``.

        A datagram of this node's own means that a listed address is this node's. Otherwise
        the sender learns who is here from the pong; nothing else changes here.
        """
        if self.state is State.STOPPED or message.group != self.group or message.kind != "ping":
            return []
        if message.sender == self.me.node_id:
            self.listed.own.add(source)
            return []
        self._expire(now)
        self._send(self._pong(message.members_version, now), Member(message.sender, message.priority, *source))
        return self._flush()

    # ----------------------------------------------------------------- queries

    def is_leader(self, now: float) -> bool:
        """True while leading with a lease that has not run out."""
        return self.role.is_leader(self, now)

    @property
    def lease_until(self) -> float | None:
        """As leader: the end of the lease that followers renew by echoing lease marks."""
        return self.role.lease_until
