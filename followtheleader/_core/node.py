"""What every role of the LAN machine shares: the node's state, its peers, and its output.

:class:`Node` holds what outlives a role (term, peers, the npm and listed-address parts) and
the helpers every role uses to speak (pings, messages, the member list). :class:`Role` is
what a role provides; the roles themselves are in :mod:`.roles`, and :meth:`Node.become` is
the only place where the role changes: a new role object is the reset of the role's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .actions import Action, Notify, NpmPing, Publish, Send
from .listed import ListedAddresses
from .messages import ANYONE, MAX_MEMBERS, PROTOCOL, Message
from .model import Event, FencingToken, Member, State
from .npm import NpmPart
from .peers import Departure, Peer, silent_since
from .quorum import has_majority
from .timing import FORGET_AFTER, NPM_HOLD, PROBE_FAST_FOR, PROBE_SLOW_EVERY, THIN_FROM, Timing

__all__ = ["Node", "Role", "Stopped"]


class Role:
    """One role of the machine: its own state, timers and answers (the defaults: none).

    Each timer is a method that says when it is due; :meth:`deadlines` lists those and
    :meth:`expire` and :meth:`tick` act on the same ones. A role that hands over to another
    (:meth:`Node.become`) lets the new one act on its timers within the same input.
    """

    state: ClassVar[State]
    probes: ClassVar[bool] = False
    """It probes lost peers and listed addresses (a candidate or a leader)."""
    told: bool = False
    """(Leader) the callbacks were told of this leadership (a ``leader`` event)."""

    def expire(self, node: Node, now: float) -> None:
        """Apply the role's timeouts that have passed."""

    def tick(self, node: Node, now: float) -> None:
        """The role's timers: heartbeats, pings and claims that are due."""

    def deadlines(self, node: Node) -> list[float]:
        """The times at which :meth:`expire` or :meth:`tick` next have work."""
        return []

    def token(self, node: Node) -> FencingToken | None:
        """The fencing token of the leadership this role holds or follows, if any."""
        return None

    def told_state(self) -> State:
        """The role the callbacks know this node in."""
        return self.state

    def announced(self) -> bool:
        """(Leader) the leadership is announced."""
        return False

    def lease_mark(self, kind: str, now: float) -> float:
        """The lease mark a message of ``kind`` carries."""
        return 0.0

    def leader_age(self, node: Node, now: float) -> float | None:
        """(Follower) seconds since the leader last spoke, told in pongs."""
        return None

    def member_list(self, node: Node, now: float) -> list[Member] | None:
        """The members this role sees besides this node; None: no member list."""
        return [p.member for p in node.peers.values() if not p.dead]

    def pong_with_members(self, node: Node, pinger_version: int) -> bool:
        """A pong to a pinger holding ``pinger_version`` carries the member list."""
        return False

    def forget(self, node_id: str) -> None:
        """The peer ``node_id`` is gone or replaced: drop what the role keeps of it."""

    def peer_changed(self, node: Node, now: float) -> None:
        """A peer may have joined or left the live members."""

    def heard_leader(self, node: Node, leader: Member, term: int, now: float, boot: int) -> None:
        """``leader`` itself (of run ``boot``) says it leads with ``term``: follow it, or make
        it step down."""

    def consider_claim(self, node: Node, now: float) -> None:
        """After an input: (Electing) claim if this node is the best live candidate."""

    def greets(self, node: Node, peer: Peer, leads: bool, now: float) -> bool:
        """A DNS-SD record of ``peer`` (``leads``: it says it leads) was seen: ping it now."""
        return False

    def lost_leader(self, node: Node, node_id: str, now: float, reason: str, wait: float = 0.0) -> bool:
        """(Follower) ``node_id`` stepped down, resigned or left: elect if it is the leader."""
        return False

    def outdated(self, node: Node, message: Message) -> bool:
        """(Follower) ``message`` is older than the leadership this node follows: see
        :meth:`.Follower.outdated`."""
        return False

    def from_own_leader(self, node: Node, message: Message, sender: Member, now: float, measure: bool) -> None:
        """(Follower) a beat, pong or claim came from ``sender``, if it is this node's leader."""

    def leave(self, node: Node, now: float) -> None:
        """This node stops: say so to whom it concerns."""

    lease_until: float | None = None
    """(Leader) the end of the lease that followers renew by echoing lease marks."""

    def is_leader(self, node: Node, now: float) -> bool:
        """(Leader) leading with a lease that has not run out."""
        return False

    def names_this_leadership(self, node: Node, message: Message) -> bool:
        """(Leader) ``message`` comes from a follower of this leadership."""
        return False

    def from_follower(self, node: Node, message: Message, sender: Member, now: float) -> None:
        """(Leader) a ping or ack from ``sender``."""

    def follower_left(self, node: Node, node_id: str, now: float) -> None:
        """(Leader) ``node_id`` left this leadership."""

    def follower_stopped(self, node_id: str) -> None:
        """(Leader) ``node_id`` stopped."""


@dataclass
class Stopped(Role):
    """Not in the group: no timers, no answers."""

    state: ClassVar[State] = State.STOPPED

    def member_list(self, node: Node, now: float) -> list[Member] | None:
        return None


@dataclass
class Node:
    """The state that outlives a role, and the output every role uses.

    :param group: the group name.
    :param me: this node (its host is empty: others see its address).
    :param timing: the timing parameters.
    :param quorum: expected group size for quorum mode, or None.
    """

    group: str
    me: Member
    timing: Timing
    quorum: int | None = None
    """Expected group size: lead only while seeing a strict majority of it. None: off."""
    npm_compat: bool = True
    """Follow npm leaders (their records and PONGs come from the elector only when on; this
    also makes the machine ignore peers' hearsay of an npm leader when off)."""
    role: Role = field(default_factory=Stopped)
    """The current role: change it only with :meth:`become`."""
    term: int = 0
    """Term of the leadership this node holds or follows (the last one while electing)."""
    max_term: int = 0
    """The greatest term this node has seen anywhere."""
    leader: Member | None = None
    """The leader this node follows, or this node as leader (the last one otherwise)."""
    peers: dict[str, Peer] = field(default_factory=dict)
    resigned_until: float = 0.0
    """It resigned: this node is no candidate until then."""
    members_version: int = 0
    """As leader: version of the live member list. Otherwise: version of the list held."""
    round_trip: float = 0.0
    """As follower: smoothed round trip of a ping to the leader, in seconds (kept across
    leaders: it measures the link and the host)."""
    heard_alive: dict[str, float] = field(default_factory=dict)
    """Leaders some peer heard from recently, each with when that stops holding claims back
    (see ``Handlers._note_live_leader`` and :func:`.candidates.live_leader_hold`)."""
    departures: dict[str, Departure] = field(default_factory=dict)
    """(Protocol 3) Peers that said they stop or resign, for the failure window that follows
    (see :meth:`_note_departure`); kept even once their peer entry is gone."""
    boot: int = 0
    """This node's run (:attr:`FencingToken.boot`), sent in every message of its own."""
    token: FencingToken | None = None
    """The fencing token of the leadership this node holds or follows (the last one while
    electing), None before any."""
    protocol: int = PROTOCOL
    """The protocol this node speaks (2: exactly as 0.2 does, for the simulator's mixed groups
    and its traces of 0.2's behaviour)."""
    thin_from: int = THIN_FROM
    """As leader: thin the acks from this many followers of protocol 3 (see
    :meth:`.Leading.ack_every_now`)."""
    multicast: tuple[str, int] | None = None
    """The group's multicast address, when this node receives its beats there (protocol 3 in
    mDNS mode, without a secret; set by the elector before start): as leader it then sends one
    beat there per interval, and unicast beats only to followers that do not ack receiving it."""
    npm: NpmPart = field(default_factory=NpmPart)
    listed: ListedAddresses = field(default_factory=ListedAddresses)
    _last_now: float = 0.0
    """The time of the latest input, so that passed deadlines are not asked for again."""
    _resumed_until: float = 0.0
    """After a time jump (this node was paused or starved): no claim before then."""
    _actions: list[Action] = field(default_factory=list)

    @property
    def state(self) -> State:
        """The current role's state."""
        return self.role.state

    @state.setter
    def state(self, value: State) -> None:
        """Only ``State.STOPPED``: the role ends without a word (a forked child's copy)."""
        if value is not State.STOPPED:
            raise ValueError("only a stop can be set from outside")
        self.become(Stopped(), self._last_now, "stopped", quiet=True)

    # ----------------------------------------------------------------- the change of role

    def become(self, role: Role, now: float, reason: str, quiet: bool = False) -> None:
        """The only change of role: ``role`` (a new object: the role's state starts afresh)
        replaces the current one; emit the event it means (unless ``quiet``) and publish."""
        previous = self.role
        self.role = role
        self.announce(previous, now, reason, quiet)

    def announce(self, previous: Role, now: float, reason: str, quiet: bool = False) -> None:
        """Emit the event of the move from ``previous`` to the current role (unless ``quiet``),
        and publish the role. Also for a leadership confirmed by a quorum (same role)."""
        new, was = self.role.state, previous.state
        token = self.role.token(self)
        if token is not None:
            self.token = token
        # A claim not announced yet (quorum mode waits for a majority) was never told to the
        # callbacks: to them this node was electing, and leaving it is no reelection.
        told = previous.told_state()
        kind = {State.LEADER: "leader", State.FOLLOWER: "follower"}.get(new)
        if kind is None and told in (State.LEADER, State.FOLLOWER):
            kind = "reelection"
        if kind is not None and not quiet:
            leader = self.leader if new in (State.LEADER, State.FOLLOWER) else None
            event = Event(kind, self.me.node_id, new, told, self.term, leader, reason, now, None, self.token)
            self._actions.append(Notify(event))
        self.role.told = new is State.LEADER and (not quiet or (was is State.LEADER and previous.told))
        # The records for npm nodes come later, from tick (see NPM_HOLD).
        self.npm.serve_at = now + NPM_HOLD if self.role.announced() and self.npm_compat else None
        # The DNS-SD record is a hint, updated only when leadership starts or ends: a group's
        # followers re-announcing every change of theirs would flood mDNS right when a new
        # leader needs the CPU (the record of a follower keeps saying "electing").
        if State.LEADER in (new, was) and new is not State.STOPPED:
            self._actions.append(Publish(new, self._told_term()))

    # ----------------------------------------------------------------- peers

    def _follows_npm(self) -> bool:
        return self.state is State.FOLLOWER and self.leader is not None and self.leader.npm

    def _leader_peer(self) -> Peer:
        """As follower: what this node knows of its leader."""
        assert self.leader is not None
        if self.leader.npm:
            assert self.npm.peer is not None
            return self.npm.peer
        return self.peers[self.leader.node_id]

    def _new_peer(self, member: Member) -> Peer:
        """A peer known from now on, in place of any peer of that id."""
        self.role.forget(member.node_id)
        peer = self.peers[member.node_id] = Peer(member)
        return peer

    def _heard(self, member: Member, now: float) -> Peer:
        """A datagram from ``member`` arrived: it is alive, at this address."""
        peer = self.peers.get(member.node_id)
        if peer is None:
            peer = self._new_peer(member)
        peer.member = member
        peer.last_heard = now
        peer.pinged_since = None
        peer.dead = peer.departed = peer.dropped = False
        return peer

    def _answers(self, peer: Peer, now: float) -> bool:
        """``peer`` was heard within the failure window (its address needs no ping of ANYONE)."""
        return not peer.dead and peer.last_heard is not None and now - peer.last_heard < self.timing.failure_window

    def _sees_majority(self, now: float) -> bool:
        """Quorum mode: this node and the peers heard within the failure window are a majority."""
        return has_majority(1 + sum(1 for p in self.peers.values() if self._answers(p, now)), self.quorum)

    def _measure_round_trip(self, now: float) -> None:
        """As follower: a pong from the leader answers the last ping; keep a smoothed round trip."""
        sent = self._leader_peer().last_ping
        if sent is not None and 0.0 <= now - sent < self.timing.interval:
            self.round_trip = 0.8 * self.round_trip + 0.2 * (now - sent)

    def members(self, now: float, with_npm: bool = True) -> tuple[Member, ...]:
        """The group as this node sees it, best-ranked first, this node included.

        A followed npm leader comes first, unless ``with_npm`` is False (member lists on
        the wire hold our nodes only).
        """
        found = self.role.member_list(self, now)
        if found is None:
            return ()
        found.append(self.me)
        ranked = sorted(found, key=lambda m: m.rank, reverse=True)
        if with_npm and self._follows_npm() and self.leader is not None:
            ranked.insert(0, self.leader)
        return tuple(ranked)

    # ----------------------------------------------------------------- output

    def _ping_now(self, peer: Peer, now: float) -> None:
        """Ping at once, unless it was pinged less than an interval ago.

        Written as a deadline (``last_ping + interval``), as the probing schedule computes
        it: the same rounding, so a tick at that deadline does ping.
        """
        if peer.last_ping is None or now >= peer.last_ping + self.timing.interval:
            self._ping(peer, now)

    def _ping(self, peer: Peer, now: float) -> None:
        if not peer.member.host:
            return
        if peer.pinged_since is None and not peer.dead:
            peer.pinged_since = now
        peer.last_ping = now
        if peer.member.npm:
            self._actions.append(NpmPing(peer.member.address))
        else:
            self._send(self._message("ping", now), peer.member)

    def _probe(self, peer: Peer, now: float) -> bool:
        """Ping a lost peer (or npm leader, or listed address) on the probing schedule; False:
        forget it.

        Every interval for :data:`PROBE_FAST_FOR` seconds of silence, then every
        :data:`PROBE_SLOW_EVERY` seconds, until it has been silent for :data:`FORGET_AFTER`.
        """
        silent_for = now - silent_since(peer, now)
        if silent_for >= FORGET_AFTER:
            return False
        if silent_for < PROBE_FAST_FOR:
            self._ping_now(peer, now)
        elif peer.last_ping is None or now >= peer.last_ping + PROBE_SLOW_EVERY:
            self._ping(peer, now)
        return True

    def _pong(self, pinger_version: int, now: float) -> Message:
        return self._message("pong", now, with_members=self.role.pong_with_members(self, pinger_version))

    def _message(
        self,
        kind: str,
        now: float,
        *,
        with_members: bool = False,
        leader_member: Member | None = None,
        term: int | None = None,
        leader: str | None = None,
        role: State | None = None,
        beat: int = 0,
        ack_every: int = 1,
        multicast: bool = False,
    ) -> Message:
        state = role or self.state
        if leader is None and self.leader is not None:
            leader = self.leader.node_id
            if self.state is State.FOLLOWER and kind not in ("ping", "ack"):  # the leader's own
                leader_member = self.leader
        return Message(
            kind=kind,
            group=self.group,
            sender=self.me.node_id,
            priority=self.me.priority,
            role=State.ELECTING if state is State.STOPPED else state,
            term=self._told_term() if term is None else term,
            leader=leader,
            leader_member=leader_member,
            members_version=self.members_version,
            members=self.members(now, with_npm=False)[:MAX_MEMBERS] if with_members else None,
            lease_mark=self.role.lease_mark(kind, now),
            leader_age=self.role.leader_age(self, now) if kind == "pong" else None,
            boot=self.boot,
            protocol=self.protocol,
            beat=beat,
            ack_every=ack_every,
            multicast=multicast,
        )

    def _told_term(self) -> int:
        """The term this node tells others (heartbeats, record): the one it leads or follows;
        while electing, or following an npm leader (term 0), the greatest it knows, so that
        the terms of our leaders keep increasing across an npm leadership."""
        ours = self.state is State.LEADER or (self.state is State.FOLLOWER and not self._follows_npm())
        return self.term if ours else self.max_term

    def _send(self, message: Message, to: Member) -> None:
        if not to.npm:  # an npm node understands nothing but PING
            self._actions.append(Send(message, to.address, to.node_id))

    def _send_multicast(self, message: Message) -> None:
        """Send once to the group's multicast address (see :attr:`multicast`)."""
        assert self.multicast is not None
        self._actions.append(Send(message, self.multicast, ANYONE))

    def _note_departure(self, node_id: str, term: int, boot: int, now: float) -> None:
        """``node_id`` said it stops or resigns (a leader's ``resign``, a follower's ``leave``
        as it stops, or its DNS-SD goodbye), in ``term`` (0 when its word names none), from its
        run ``boot`` (0 when not known).

        For the failure window that follows (until no follower of it can still say it heard
        it within one), its leadership of that term or an older one is over for this node:

        * a message or DNS-SD record of that run as leader in that term is stale: sent before
          its word, it arrived after (a beat by multicast overtakes a resign sent one by
          one). Taken, it made followers follow the leader that had gone, and elect again;
        * a peer's word that it still follows it holds no claim back, and neither that word,
          a member list nor its DNS-SD record makes it a candidate again (a node that
          resigned stands back that long anyway). Marking the peer departed is not enough: a
          new leader's member list drops departed peers, and a peer nobody knows is taken as
          new. A group that handed over twice in quick succession (``stop()``, then
          ``resign()``, 30 nodes in the lab) waited on such a hold, or for such a candidate,
          until the resigned leader took over again a failure window later.

        A run that resigned claims again only in a newer term, and a node restarted with the
        same id is another run: both are news. Protocol 2 keeps 0.2's behaviour.
        """
        if self.protocol < 3:
            return
        self.heard_alive.pop(node_id, None)
        self.departures = {k: d for k, d in self.departures.items() if d.until > now}
        earlier = self.departures.get(node_id)  # a goodbye names no term and no run: keep those said
        if earlier is not None:
            term, boot = max(term, earlier.term), boot or earlier.boot
        self.departures[node_id] = Departure(now + self.timing.failure_window, term, boot)

    def _recently_departed(self, node_id: str, now: float) -> bool:
        """``node_id`` said it resigns or stops, within the failure window that followed (see
        :meth:`_note_departure`)."""
        departure = self.departures.get(node_id)
        return departure is not None and now < departure.until

    def _stale_leadership(self, node_id: str, term: int, now: float, boot: int = 0) -> bool:
        """A leadership of ``node_id`` in ``term`` ended by its own word, within the failure
        window that followed (see :meth:`_note_departure`): ``term`` is that of its word or
        older, and ``boot`` (0: not known) is the run that said it."""
        if not self._recently_departed(node_id, now):
            return False
        departure = self.departures[node_id]
        return term <= departure.term and (not boot or not departure.boot or boot == departure.boot)

    def _send_to_peers(self, message: Message) -> None:
        """Send to every peer that has not departed, those found dead too (they may be back)."""
        for peer in self.peers.values():
            if not peer.departed and peer.member.host:
                self._send(message, peer.member)

    def _flush(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions
