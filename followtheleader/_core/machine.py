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
from .messages import Message, PeerRecord
from .model import Member, State
from .node import Node, Stopped
from .peers import npm_member, silent_since
from .roles import Electing, Follower, Leader, ping_listed
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
class Machine(Node):
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
        if self.state is State.LEADER:
            self._send_to_peers(self._message("resign", now, with_members=True))
        elif self.state is State.FOLLOWER and self.leader is not None:
            self._send(self._message("leave", now), self.leader)
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
        self.max_term = max(self.max_term, message.term)
        sender = Member(message.sender, message.priority, source[0], source[1])
        if (
            self.state is State.FOLLOWER
            and self.leader is not None
            and message.sender == self.leader.node_id
            and message.role is not State.LEADER
        ):
            Electing.enter(self, now, "leader stepped down", wait=self.timing.confirm)  # it says so itself
        known = self.peers.get(sender.node_id)
        revived = known is not None and known.dead
        self._heard(sender, now)
        if revived:
            self.role.peer_changed(self, now)  # no longer dead: it may be a live member again
        getattr(self, _HANDLERS[message.kind])(message, sender, now)
        self._consider_claim(now)
        return self._flush()

    def on_discovered(self, record: PeerRecord, now: float) -> list[Action]:
        """A peer's DNS-SD record appeared or changed: a hint, never proof of life."""
        if self.state is State.STOPPED or record.group != self.group or record.member.node_id == self.me.node_id:
            return []
        self._expire(now)
        self.max_term = max(self.max_term, record.term)
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
            role = self.role
            if (
                (isinstance(role, Leader) and role.progress.live_until(record.member.node_id) < now)
                or (self.state is State.ELECTING and (record.role is State.LEADER or not peer.dead))
                or (self._follows_npm() and peer.last_heard is None)  # so that both know each other
            ):
                self._ping_now(peer, now)
        return self._flush()

    def on_goodbye(self, node_id: str, now: float) -> list[Action]:
        """A peer withdrew its DNS-SD record (it stopped)."""
        peer = self.peers.get(node_id)
        if self.state is State.STOPPED or peer is None:
            return []
        self._expire(now)
        peer.dead = peer.departed = True
        self.role.peer_changed(self, now)
        if self.state is State.FOLLOWER and self.leader is not None and self.leader.node_id == node_id:
            Electing.enter(self, now, "leader said goodbye")
            self._consider_claim(now)
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
                silent = self.state is not State.FOLLOWER and not self._answers(peer, now)
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
        role = self.role
        if not isinstance(role, Leader) or not role.confirmed or now >= role.lease_end(self, now):
            return False
        quorum_until = role.quorum_until(self)
        return quorum_until is None or now < quorum_until

    @property
    def lease_until(self) -> float | None:
        """As leader: the end of the lease that followers renew by echoing lease marks."""
        return self.role.lease_until if isinstance(self.role, Leader) else None

    # ----------------------------------------------------------------- message handlers

    def _on_ping(self, message: Message, sender: Member, now: float) -> None:
        if message.role is State.LEADER:
            self.role.heard_leader(self, sender, message.term, now, message.boot)
        elif isinstance(self.role, Leader):
            self.role.from_follower(self, message, sender, now)
        self._send(self._pong(message.members_version, now), sender)

    def _on_ack(self, message: Message, sender: Member, now: float) -> None:
        """A follower answers a heartbeat (beat, pong or claim) of the leader it names."""
        if isinstance(self.role, Leader) and message.leader == self.me.node_id and message.term == self.term:
            self.role.from_follower(self, message, sender, now)
        else:  # it takes this node for its leader, wrongly: the pong says what this node is
            self._send(self._pong(message.members_version, now), sender)

    def _on_beat(self, message: Message, sender: Member, now: float) -> None:
        self._from_leader(message, sender, now)

    def _on_claim(self, message: Message, sender: Member, now: float) -> None:
        self._from_leader(message, sender, now)

    def _on_pong(self, message: Message, sender: Member, now: float) -> None:
        if message.role is State.LEADER:
            self._from_leader(message, sender, now, measure=True)
        elif isinstance(self.role, Leader) and message.leader == self.me.node_id and message.term == self.term:
            # A follower of this leadership answers a probe: a follower that heard this node's
            # probes (not its beats) takes them for heartbeats and neither pings nor acks, so
            # this answer is what makes it a live member again (it then gets beats).
            self.role.from_follower(self, message, sender, now)
        else:
            if message.leader_member is not None and message.leader is not None:
                self._note_live_leader(message, now)
                self._hearsay_of_leader(message.leader_member, message.term, now)
            if message.members is not None and self.state is not State.FOLLOWER:
                self._merge_candidates(message.members, sender, now)

    def _from_leader(self, message: Message, sender: Member, now: float, measure: bool = False) -> None:
        """A beat, pong or claim of a leader: follow it or compare; a follower of it takes its
        member list and acks, echoing the lease mark."""
        self.role.heard_leader(self, sender, message.term, now, message.boot)
        role = self.role
        if isinstance(role, Follower) and self.leader is not None and self.leader.node_id == sender.node_id:
            role.leader_mark = max(role.leader_mark, message.lease_mark)
            if measure:
                self._measure_round_trip(now)
            self._take_members(message, sender, now)
            self._send(self._message("ack", now), sender)

    def _on_resign(self, message: Message, sender: Member, now: float) -> None:
        peer = self.peers[sender.node_id]
        peer.dead = peer.departed = True
        # Its next datagram revives it (its ping may even overtake this resign), but it stands
        # back for a failure window: waiting for its claim would leave the group leaderless.
        # It counts again an interval before that ends here, so that nobody claims in the
        # instant it does (its claim may still be on its way).
        peer.stands_back_until = now + self.timing.failure_window - self.timing.interval
        self.role.peer_changed(self, now)
        if message.members is not None:
            self._merge_candidates(message.members, sender, now)
        if self.state is State.FOLLOWER and self.leader is not None and self.leader.node_id == sender.node_id:
            Electing.enter(self, now, "leader resigned")

    def _on_leave(self, message: Message, sender: Member, now: float) -> None:
        peer = self.peers[sender.node_id]
        if isinstance(self.role, Leader):
            self.role.follower_left(self, sender.node_id, now)
        if message.leader not in (None, self.me.node_id) and message.leader_member is not None:
            # It moved to another leader: check that one. The lease keeps running, so a
            # leader deserted for a better one steps down even if that check gets lost.
            self._hearsay_of_leader(message.leader_member, message.term, now)
            return
        peer.dead = peer.departed = True  # it stops
        if isinstance(self.role, Leader):
            self.role.follower_stopped(sender.node_id)

    # ----------------------------------------------------------------- hearsay and member lists

    def _consider_claim(self, now: float) -> None:
        """After an input: a settled candidate claims if it is the best live one."""
        if isinstance(self.role, Electing):
            self.role.claim_if_best(self, now)

    def _note_live_leader(self, message: Message, now: float) -> None:
        """A follower says it heard its leader recently: do not claim while that holds.

        Like a pre-vote: a node that lost only its own link to a live leader sees the others
        still hear from it, and keeps out of the way instead of claiming (and flapping). The
        hold lasts until that follower itself gives up on its leader (the failure window after
        it last heard it): a shorter one ends while the leader may still hold its lease, and a
        few lost answers would then let a node cut off from a live leader claim.
        """
        known = self.peers.get(message.leader or "")
        if message.leader_age is None or message.leader == self.me.node_id:
            return
        if known is not None and (known.departed or now < known.stands_back_until):
            return  # it resigned or stopped: the follower has not heard of it yet
        remaining = self.timing.failure_window - message.leader_age
        if remaining > 0 and message.leader is not None:
            self.heard_alive = {k: t for k, t in self.heard_alive.items() if t > now}
            until = now + remaining
            self.heard_alive[message.leader] = max(self.heard_alive.get(message.leader, 0.0), until)

    def _hearsay_of_leader(self, leader: Member, term: int, now: float) -> None:
        """A peer names ``leader``: ping it, unless it is known and no better than ours."""
        if leader.node_id == self.me.node_id or not leader.host:
            return
        if leader.node_id == npm_member(leader.host, leader.port).node_id:
            if self.npm_compat and not self._follows_npm():  # count it as a candidate again
                npm = self.npm.know(leader.host, leader.port, now)
                npm.dead = False
                self._ping_now(npm, now)
            return
        peer = self.peers.get(leader.node_id)
        if peer is None:
            peer = self._new_peer(leader)
        # A peer found dead is pinged too: only its own answer revives it (then it is followed).
        current = self.leader if self.state in (State.FOLLOWER, State.LEADER) else None
        if current is not None and (term, leader.rank) <= (self.term, current.rank):
            return  # no better than the leader this node follows or is
        self._ping_now(peer, now)

    def _take_members(self, message: Message, leader: Member, now: float) -> None:
        """As follower: the leader's member list replaces what this node knew.

        A peer the list drops is kept as a lost peer (dead: no candidate, no member), not
        forgotten: if this node becomes leader, it probes it. During a partition each side's
        list drops the other side; a leader elected there then still pings the other side,
        and the two meet within an interval of the heal instead of waiting for a DNS-SD
        record. Peers that stopped cleanly are deleted, and lost peers are forgotten after
        :data:`FORGET_AFTER`, as a leader forgets them.
        """
        if message.members is None:
            return
        listed = {leader.node_id}
        for member in message.members:
            if member.node_id == self.me.node_id or member.node_id == leader.node_id:
                continue
            listed.add(member.node_id)
            peer = self.peers.get(member.node_id)
            if peer is None:
                self._new_peer(member)
            else:
                peer.member = member
                peer.dead = peer.dropped = peer.departed = False  # the leader hears from it
                peer.probed_since = None
        for node_id, peer in list(self.peers.items()):
            if node_id in listed:
                continue
            if not peer.dropped:
                peer.dead = peer.dropped = True
                peer.probed_since = now  # lost from now on (the list is newer than its last word)
            if peer.departed or now - silent_since(peer, now) >= FORGET_AFTER:
                del self.peers[node_id]
        self.members_version = message.members_version

    def _merge_candidates(self, members: tuple[Member, ...], sender: Member, now: float) -> None:
        """Add candidates another node knows of (never revives a peer found dead; one only
        dropped from a member list is taken as new)."""
        for member in members:
            if member.node_id in (self.me.node_id, sender.node_id) or not member.host:
                continue
            known = self.peers.get(member.node_id)
            if known is None or known.dropped:
                peer = self._new_peer(member)
                if self.state is State.ELECTING:
                    self._ping_now(peer, now)

    def _measure_round_trip(self, now: float) -> None:
        """As follower: a pong from the leader answers the last ping; keep a smoothed round trip."""
        sent = self._leader_peer().last_ping
        if sent is not None and 0.0 <= now - sent < self.timing.interval:
            self.round_trip = 0.8 * self.round_trip + 0.2 * (now - sent)
