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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .messages import ANYONE, MAX_MEMBERS, Message, PeerRecord
from .model import Event, FencingToken, Member, State

__all__ = ["Machine", "Notify", "NpmPing", "Publish", "Send", "Timing", "npm_member"]


@dataclass(frozen=True)
class Timing:
    """The timing parameters, all derived from ``interval`` and ``max_failed_responses``.

    :ivar interval: seconds between two heartbeats (a leader's beats, a candidate's pings).
    :ivar max_failed: heartbeats missed in a row after which a peer counts as lost (at least 2).
    """

    interval: float
    max_failed: int

    @property
    def failure_window(self) -> float:
        """Silence after which a peer counts as lost: ``(max_failed + 0.5) * interval``."""
        return (self.max_failed + 0.5) * self.interval

    @property
    def lease(self) -> float:
        """How long a leader's lease runs from its last renewal.

        A follower gives up at (the last heartbeat it received + failure window), and the
        leader's clock when it sent that heartbeat is no later than its renewal: a renewal
        by its own tick comes with the beats it sends on that tick; a renewal by an echoed
        lease mark is the mark itself, the leader's clock when it sent a heartbeat that
        arrived. So a lease shorter than the failure window ends before any follower that
        heard that heartbeat gives up; the fifth of an interval between them covers timer
        jitter. (A follower that missed the latest beats says so with a stale mark in its
        pings, and the lease is then the echoed one: see ``Machine._lease_end``.)
        """
        return self.failure_window - 0.2 * self.interval

    @property
    def overdue(self) -> float:
        """A follower pings its leader when no heartbeat came for this long: one and a half
        intervals (the leader sends one every interval)."""
        return 1.5 * self.interval

    @property
    def settle(self) -> float:
        """After start, nobody claims for this long: time to hear of an existing leader."""
        return 2.5 * self.interval

    @property
    def suspect(self) -> float:
        """A follower switches to a better leader only if its own has been silent this long.

        One and a half intervals short of the failure window: after a crash, the node that
        claims first has waited a whole failure window (and the confirmation), and the others
        have not heard from the dead leader for at least an interval less than that; while a
        leader lives, its followers hear from it every interval. So a node that lost only its
        own link to the leader cannot take the others over. (In quorum mode the lease is
        used instead: see ``Machine._leader_alive``.)
        """
        return self.failure_window - 1.5 * self.interval

    @property
    def confirm(self) -> float:
        """After losing its leader, a follower waits this long before claiming: half an interval,
        enough to hear back from a leader that is alive after all."""
        return self.interval / 2

    @property
    def retry(self) -> float:
        """A follower whose last ping got no answer pings again this soon (an eighth interval).

        A lost datagram then costs one retry, not an interval: the failure window holds
        ``max_failed`` beats of the leader when all goes well, and once one is overdue, some
        eight pings an interval until an answer comes, so a few lost in a row are not taken
        for a crash.
        """
        return self.interval / 8


PROBE_FAST_FOR = 60.0
"""A leader probes a peer it lost every interval for this many seconds ..."""
PROBE_SLOW_EVERY = 2.0
"""... then every this many seconds ..."""
FORGET_AFTER = 3600.0
"""... and forgets it after this long without a word from it."""
NPM_HOLD = 1.5
"""A leader publishes the records npm nodes look for only once it has led this long: an npm
node that emitted ``leader`` before our claim is silent while it probes its name (up to 1 s),
then announces it; this node then follows it, and no npm node was pointed at this one."""


@dataclass(frozen=True)
class Send:
    """Send ``message`` to node ``to`` at ``address`` over the heartbeat socket."""

    message: Message
    address: tuple[str, int]
    to: str


@dataclass(frozen=True)
class NpmPing:
    """Send the npm package's bare ``PING`` to the npm leader at ``address``."""

    address: tuple[str, int]


@dataclass(frozen=True)
class Publish:
    """Publish this node's role and term in its DNS-SD TXT record; with ``serve_npm``, also
    the records npm nodes look for (an announced leader with ``npm_compat``, once it has led
    for :data:`NPM_HOLD`); without, withdraw them."""

    role: State
    term: int
    serve_npm: bool = False


@dataclass(frozen=True)
class Notify:
    """Deliver ``event`` to the callbacks."""

    event: Event


Action = Send | NpmPing | Publish | Notify

_HANDLERS = {kind: f"_on_{kind}" for kind in ("ping", "pong", "beat", "ack", "claim", "resign", "leave")}
"""The method of :class:`Machine` that handles each kind of message."""


def npm_member(host: str, port: int) -> Member:
    """The member that stands for an npm leader at ``host:port`` (it has no id of its own)."""
    return Member(f"npm-{host.replace('.', '-').replace(':', '_')}-{port}"[:32], 0, host, port, npm=True)


@dataclass
class _Peer:
    """What this node knows of another node of its group."""

    member: Member
    last_heard: float | None = None
    """When a datagram from it last arrived."""
    pinged_since: float | None = None
    """When the first ping it has not answered yet was sent."""
    last_ping: float | None = None
    """When the last ping to it was sent."""
    live_until: float = 0.0
    """(As leader) it counts as a live member until then."""
    dead: bool = False
    """Silent for the failure window, departed, or dropped: no candidate."""
    departed: bool = False
    """It stopped cleanly (leave, resign or DNS-SD goodbye): never probed."""
    dropped: bool = False
    """(As follower) dead only because the leader's member list dropped it: kept to be probed
    if this node leads, and taken as a candidate again from anybody's list."""
    stands_back_until: float = 0.0
    """It resigned: no candidate until then, even if it speaks (it stands back that long)."""
    renewed_at: float | None = None
    """(As leader) the greatest lease mark it echoed as this node's follower."""
    echoed_at: float | None = None
    """(As leader) when its latest datagram echoing a lease mark of this node arrived ..."""
    echo_lag: float = 0.0
    """... and how old that mark was then: more than two intervals means it does not hear
    this leader's heartbeats while this leader hears it (a one-way fault)."""
    acked_version: int = -1
    """(As leader) the member-list version it holds, from its latest ack or ping."""
    probed_since: float | None = None
    """(As leader) when it started probing this peer, which it has never heard from; or, for
    a peer that the leader's member list dropped, when it was dropped. Its silence counts
    from then, or from its last word if later (see ``Machine._silent_since``)."""


@dataclass
class Machine:
    """The election state of one node. Not thread-safe: the elector serialises calls.

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
    state: State = State.STOPPED
    term: int = 0
    """Term of the leadership this node holds or follows (the last one while electing)."""
    max_term: int = 0
    """The greatest term this node has seen anywhere."""
    leader: Member | None = None
    peers: dict[str, _Peer] = field(default_factory=dict)
    settle_until: float = 0.0
    next_ping_at: float = 0.0
    lease_until: float | None = None
    """As leader: the end of the lease that followers renew by echoing lease marks."""
    awake_until: float = 0.0
    """As leader: the end of the lease this node renews at each of its own ticks; it lapses
    when the process was paused or starved of CPU for longer than the lease."""
    resigned_until: float = 0.0
    members_version: int = 0
    """As leader: version of the live member list. Otherwise: version of the list held."""
    round_trip: float = 0.0
    """As follower: smoothed round trip of a ping to the leader, in seconds."""
    heard_alive: dict[str, float] = field(default_factory=dict)
    """Leaders some peer heard from recently, each with when that stops holding claims back
    (see :meth:`_note_live_leader` and :meth:`_live_leader_hold`)."""
    claimed_at: float = 0.0
    """As leader: when this node claimed."""
    confirmed: bool = True
    """As leader: announced (always, unless quorum mode waits for a majority to follow)."""
    leader_mark: float = 0.0
    """As follower: the greatest lease mark of the leader's beats, pongs and claims, echoed in
    each ack and ping."""
    npm: _Peer | None = None
    """The npm leader this node knows of (its DNS-SD record was seen), if any."""
    boot: int = 0
    """This node's run (:attr:`FencingToken.boot`), sent in every message of its own."""
    leader_boot: int = 0
    """As follower: the run of its leader, from the leader's own messages."""
    token: FencingToken | None = None
    """The fencing token of the leadership this node holds or follows (the last one while
    electing), None before any."""
    npm_serve_at: float | None = None
    """As announced leader with ``npm_compat``: when to publish the records npm nodes look for
    (:data:`NPM_HOLD` after the announcement); None once published, or when not to be."""
    _leader_told: bool = False
    """As leader: the callbacks were told (a ``leader`` event); not yet for a quorum claim
    that waits for its majority."""
    _last_now: float = 0.0
    """The time of the latest input, so that passed deadlines are not asked for again."""
    _resumed_until: float = 0.0
    """After a time jump (this node was paused or starved): no claim before then."""
    _lagging: set[str] = field(default_factory=set)
    """As leader: the followers whose latest echo was of a mark over two intervals old."""
    _live_ids: frozenset[str] = frozenset()
    _live_recheck_at: float = float("inf")
    """As leader: when the live member with the earliest expiry runs out, unless it pings again."""
    _actions: list[Action] = field(default_factory=list)
    listed: dict[tuple[str, int], _Peer] = field(default_factory=dict)
    """Unicast mode: the listed addresses (see :meth:`on_addresses`), as placeholder peers."""
    own_addresses: set[tuple[str, int]] = field(default_factory=set)
    """Unicast mode: listed addresses that turned out to be this node's own."""

    # ----------------------------------------------------------------- inputs

    def start(self, now: float) -> list[Action]:
        """Begin electing; nobody is claimed for the settle window."""
        if self.state is State.STOPPED:
            self._last_now = now
            self.settle_until = now + self.timing.settle
            self.next_ping_at = now
            self._set_state(State.ELECTING, now, "started")
        return self._flush()

    def stop(self, now: float) -> list[Action]:
        """Leave the group: a leader resigns, a follower says it leaves."""
        self._expire(now)
        if self.state is State.LEADER:
            self._send_to_peers(self._message("resign", now, with_members=True))
        elif self.state is State.FOLLOWER and self.leader is not None:
            self._send(self._message("leave", now), self.leader)
        if self.state is not State.STOPPED:
            self.lease_until = None
            self._set_state(State.STOPPED, now, "stopped")
        return self._flush()

    def resign(self, now: float) -> list[Action]:
        """Step down if leading, and stand back as a candidate for one failure window."""
        self._expire(now)
        if self.state is State.LEADER:
            self._send_to_peers(self._message("resign", now, with_members=True))
            self.resigned_until = now + self.timing.failure_window
            self._start_electing(now, "resigned")
        return self._flush()

    def tick(self, now: float) -> list[Action]:
        """Timers: failure detection, lease, claims, heartbeats and periodic pings."""
        self._expire(now)
        if self.state is State.ELECTING:
            self._claim_if_best(now)
        if self.state is State.FOLLOWER and self.leader is not None:
            if now >= self._follower_ping_due():
                self._ping(self._leader_peer(), now)
        elif self.state is not State.STOPPED and now >= self.next_ping_at:
            self.next_ping_at = now + self.timing.interval
            if self.state is State.LEADER:
                # Still leading after _expire: the lease has not lapsed, so this node has been
                # awake all along. Only the tick that sends the beats renews this part of the
                # lease: the lease argument counts from a renewal that came with heartbeats.
                self.awake_until = now + self.timing.lease
            self._send_pings(now)
        if self.state is State.ELECTING:
            for peer in self.peers.values():
                due = self._candidate_retry_due(peer)
                if due is not None and now >= due:
                    self._ping(peer, now)
        self._probe_npm(now)
        due = self._npm_serve_due()
        if due is not None and now >= due:
            self.npm_serve_at = None
            self._actions.append(Publish(State.LEADER, self._told_term(), serve_npm=True))
        return self._flush()

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
            self._start_electing(now, "leader stepped down", wait=self.timing.confirm)  # it says so itself
        known = self.peers.get(sender.node_id)
        revived = known is not None and known.dead
        self._heard(sender, now)
        if revived and self.state is State.LEADER:
            self._refresh_live_members(now)  # no longer dead: it may be a live member again
        getattr(self, _HANDLERS[message.kind])(message, sender, now)
        if self.state is State.ELECTING:
            self._claim_if_best(now)
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
                peer = self.peers[record.member.node_id] = _Peer(record.member)
            elif peer.dead or peer.last_heard is None:
                peer.member = record.member  # it may have come back elsewhere
            peer.departed = False  # a new or changed record: it is there again
            # A record is a hint: only an answer makes it count. A leader greets every node it
            # does not hear from yet, so a newcomer learns of it before its own settle window
            # ends (answers to the newcomer's DNS-SD query may be rate-limited for a second).
            if (
                (self.state is State.LEADER and peer.live_until < now)
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
        if self.state is State.LEADER:
            self._refresh_live_members(now)
        if self.state is State.FOLLOWER and self.leader is not None and self.leader.node_id == node_id:
            self._start_electing(now, "leader said goodbye")
            self._claim_if_best(now)
        return self._flush()

    def on_npm_record(self, host: str, port: int, now: float) -> list[Action]:
        """The DNS-SD record of an npm leader appeared at ``host:port``: a hint; ping it."""
        if self.state is State.STOPPED:
            return []
        self._expire(now)
        if not self._follows_npm():  # one npm leader at a time: the one it follows
            self._ping_now(self._known_npm(host, port, now), now)
        return self._flush()

    def on_npm_pong(self, source: tuple[str, int], now: float) -> list[Action]:
        """The npm leader answered a ``PING``: it is alive, and it leads (it never steps down)."""
        npm = self.npm
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
            self._follow(npm.member, 0, now, reason)
        return self._flush()

    # ----------------------------------------------------------------- queries

    def is_leader(self, now: float) -> bool:
        """True while leading with a lease that has not run out."""
        if self.state is not State.LEADER or not self.confirmed or now >= self._lease_end(now):
            return False
        quorum_until = self._quorum_until()
        return quorum_until is None or now < quorum_until

    def members(self, now: float, with_npm: bool = True) -> tuple[Member, ...]:
        """The group as this node sees it, best-ranked first, this node included.

        A followed npm leader comes first, unless ``with_npm`` is False (member lists on
        the wire hold our nodes only).
        """
        if self.state is State.LEADER:
            found = [p.member for p in self.peers.values() if p.live_until >= now and not p.dead]
        elif self.state is State.FOLLOWER or self.state is State.ELECTING:
            found = [p.member for p in self.peers.values() if not p.dead]
        else:
            return ()
        found.append(self.me)
        ranked = sorted(found, key=lambda m: m.rank, reverse=True)
        if with_npm and self._follows_npm() and self.leader is not None:
            ranked.insert(0, self.leader)
        return tuple(ranked)

    def next_deadline(self) -> float | None:
        """The time at which :meth:`tick` next has work, or None when stopped."""
        if self.state is State.STOPPED:
            return None
        deadlines = [self.next_ping_at]
        if self.state is State.LEADER and not self.confirmed:
            # An unconfirmed claim is never is_leader, so its lease does not matter yet (tick
            # acts on it only once confirmed, and a confirmation renews it): only the claim's
            # own deadline does.
            deadlines.append(self.claimed_at + self.timing.failure_window)
        elif self.state is State.LEADER:
            deadlines.extend(t for t in (self._lease_end(self._last_now), self._quorum_until()) if t is not None)
        elif self.state is State.FOLLOWER and self.leader is not None:
            deadlines = [self._follower_ping_due()]
            heard = self._leader_peer().last_heard
            if heard is not None:
                deadlines.append(heard + self.timing.failure_window)
        elif self.state is State.ELECTING:
            # Settle and resign holds matter only until they pass (then the ping timer rules).
            hold = self._live_leader_hold(self._last_now)
            holds = (self.settle_until, self._resumed_until, self.resigned_until, hold)
            deadlines.extend(t for t in holds if t > self._last_now)
            deadlines.extend(
                p.pinged_since + self.timing.failure_window
                for p in self.peers.values()
                if p.pinged_since is not None and not p.dead
            )
            deadlines.extend(t for t in map(self._candidate_retry_due, self.peers.values()) if t is not None)
        npm_due = self._npm_probe_due()
        if npm_due is not None:
            deadlines.append(npm_due)
            if self.npm is not None and not self.npm.dead and self.npm.pinged_since is not None:
                deadlines.append(self.npm.pinged_since + self.timing.failure_window)
        serve_due = self._npm_serve_due()
        if serve_due is not None:
            deadlines.append(serve_due)
        return min(deadlines)

    # ----------------------------------------------------------------- message handlers

    def _on_ping(self, message: Message, sender: Member, now: float) -> None:
        if message.role is State.LEADER:
            self._direct_from_leader(sender, message.term, now, message.boot)
        else:
            self._from_follower(message, sender, now)
        self._send(self._pong(message.members_version, now), sender)

    def _on_ack(self, message: Message, sender: Member, now: float) -> None:
        """A follower answers a heartbeat (beat, pong or claim) of the leader it names."""
        if self.state is State.LEADER and message.leader == self.me.node_id and message.term == self.term:
            self._from_follower(message, sender, now)
        else:  # it takes this node for its leader, wrongly: the pong says what this node is
            self._send(self._pong(message.members_version, now), sender)

    def _from_follower(self, message: Message, sender: Member, now: float) -> None:
        """As leader: a ping or ack from ``sender``; one that names this leadership renews the
        lease with the mark it echoes, and any one keeps the sender a live member."""
        if self.state is not State.LEADER:
            return
        peer = self.peers[sender.node_id]
        if message.leader == self.me.node_id and message.term == self.term:
            self._renew_lease(peer, message.lease_mark, now)
            peer.acked_version = message.members_version
        peer.live_until = now + self.timing.failure_window
        if sender.node_id not in self._live_ids:  # a datagram of a live member changes nothing
            self._refresh_live_members(now)

    def _on_beat(self, message: Message, sender: Member, now: float) -> None:
        self._from_leader(message, sender, now)

    def _on_pong(self, message: Message, sender: Member, now: float) -> None:
        if message.role is State.LEADER:
            self._from_leader(message, sender, now, measure=True)
        elif self.state is State.LEADER and message.leader == self.me.node_id and message.term == self.term:
            # A follower of this leadership answers a probe: a follower that heard this node's
            # probes (not its beats) takes them for heartbeats and neither pings nor acks, so
            # this answer is what makes it a live member again (it then gets beats).
            self._from_follower(message, sender, now)
        else:
            if message.leader_member is not None and message.leader is not None:
                self._note_live_leader(message, now)
                self._hearsay_of_leader(message.leader_member, message.term, now)
            if message.members is not None and self.state is not State.FOLLOWER:
                self._merge_candidates(message.members, sender, now)

    def _on_claim(self, message: Message, sender: Member, now: float) -> None:
        self._from_leader(message, sender, now)

    def _from_leader(self, message: Message, sender: Member, now: float, measure: bool = False) -> None:
        """A beat, pong or claim of a leader: follow it or compare; a follower of it takes its
        member list and acks, echoing the lease mark."""
        self._direct_from_leader(sender, message.term, now, message.boot)
        if self.state is State.FOLLOWER and self.leader is not None and self.leader.node_id == sender.node_id:
            self.leader_mark = max(self.leader_mark, message.lease_mark)
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
        if self.state is State.LEADER:
            self._refresh_live_members(now)
        if message.members is not None:
            self._merge_candidates(message.members, sender, now)
        if self.state is State.FOLLOWER and self.leader is not None and self.leader.node_id == sender.node_id:
            self._start_electing(now, "leader resigned")

    def _on_leave(self, message: Message, sender: Member, now: float) -> None:
        peer = self.peers[sender.node_id]
        peer.live_until = 0.0
        if self.state is State.LEADER:
            self._refresh_live_members(now)
        if message.leader not in (None, self.me.node_id) and message.leader_member is not None:
            # It moved to another leader: check that one. The lease keeps running, so a
            # leader deserted for a better one steps down even if that check gets lost.
            self._hearsay_of_leader(message.leader_member, message.term, now)
            return
        peer.dead = peer.departed = True  # it stops
        peer.renewed_at = None
        if self.state is State.LEADER and not self._live_ids:
            self.lease_until = None  # nobody left whose silence could mean a partition

    # ----------------------------------------------------------------- decisions

    def _direct_from_leader(self, leader: Member, term: int, now: float, boot: int) -> None:
        """``leader`` itself (of run ``boot``) says it leads with ``term``: follow it, or make
        it step down."""
        theirs = FencingToken(term, leader.priority, leader.node_id, boot)
        if self.state is State.LEADER:
            if self.token is None or theirs > self.token:  # rivals: the greater token remains
                self._follow(leader, term, now, "a better leader was found", boot)
            else:
                self._send(self._message("claim", now, with_members=True), leader)
        elif self.state is State.FOLLOWER and self.leader is not None:
            if leader.node_id == self.leader.node_id:
                if term != self.term or boot != self.leader_boot:
                    self._follow(leader, term, now, "leader started a new term", boot)
            elif (self.token is None or theirs > self.token) and not self._leader_alive(now):
                old = self.leader
                self._follow(leader, term, now, "a better leader was found", boot)
                self._send(self._message("leave", now), old)
            else:
                self._send(self._pong(0, now), leader)  # tells it which leader this node follows
        elif self.state is State.ELECTING:
            self._follow(leader, term, now, "found the leader", boot)

    def _leader_age(self, now: float) -> float:
        """As follower: seconds since the leader last spoke as leader."""
        heard = self._leader_peer().last_heard
        return now - heard if heard is not None else self.timing.failure_window

    def _leader_alive(self, now: float) -> bool:
        """As follower: the leader spoke as leader less than :attr:`Timing.suspect` ago.

        In quorum mode, less than :attr:`Timing.lease` ago: this node's echoes may still
        hold up the old leader's majority until then (every mark it echoed came in a datagram
        it received by its last word from the leader, and a mark renews for the lease from
        when it was sent), so its acks must not make up a new leader's majority before.
        """
        limit = self.timing.suspect if self.quorum is None else self.timing.lease
        return self._leader_age(now) < limit

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

    def _live_leader_hold(self, now: float) -> float:
        """Until when claims wait for a leader that some peer still hears (0.0: none).

        A hold is for one leader: heard while this node still followed that same leader, it
        must not outlast the leader's own resign or goodbye (a claim would then wait a
        failure window for nothing: seen in handovers of 30 nodes)."""
        hold = 0.0
        for leader, until in self.heard_alive.items():
            known = self.peers.get(leader)
            if until > now and not (known is not None and (known.departed or now < known.stands_back_until)):
                hold = max(hold, until)
        return hold

    def _hearsay_of_leader(self, leader: Member, term: int, now: float) -> None:
        """A peer names ``leader``: ping it, unless it is known and no better than ours."""
        if leader.node_id == self.me.node_id or not leader.host:
            return
        if leader.node_id == npm_member(leader.host, leader.port).node_id:
            if self.npm_compat:
                self._npm_hearsay(leader.host, leader.port, now)
            return
        peer = self.peers.get(leader.node_id)
        if peer is None:
            peer = self.peers[leader.node_id] = _Peer(leader)
        # A peer found dead is pinged too: only its own answer revives it (then it is followed).
        current = self.leader if self.state in (State.FOLLOWER, State.LEADER) else None
        if current is not None and (term, leader.rank) <= (self.term, current.rank):
            return  # no better than the leader this node follows or is
        self._ping_now(peer, now)

    def _claim_if_best(self, now: float) -> None:
        """While electing and settled: claim if this node is the best live candidate."""
        if now < self.settle_until or now < self._resumed_until:
            return
        if now < self._live_leader_hold(now):
            return  # a peer still hears from its leader
        best = self._best_candidate(now)
        if best is self.me and self._sees_majority(now):
            self._claim(now)

    def _best_candidate(self, now: float) -> Member | None:
        if self.npm is not None and not self.npm.dead:
            return self.npm.member  # it never steps down: nobody of ours claims while it may live
        candidates = [p.member for p in self.peers.values() if not p.dead and now >= p.stands_back_until]
        if now >= self.resigned_until:
            candidates.append(self.me)
        return max(candidates, key=lambda m: m.rank, default=None)

    def _claim(self, now: float) -> None:
        self.term = self.max_term = self.max_term + 1
        self.leader = self.me
        for peer in self.peers.values():
            peer.live_until = now + self.timing.failure_window if not peer.dead else 0.0
        # With followers to expect, the lease runs from the claim: a leader paused before their
        # first ping must not lead on when it resumes.
        window = self.timing.failure_window
        recent = {
            k for k, p in self.peers.items() if not p.dead and p.last_heard is not None and now - p.last_heard < window
        }
        self.lease_until = now + self.timing.lease if recent else None
        self.awake_until = now + self.timing.lease
        for peer in self.peers.values():
            peer.renewed_at = peer.echoed_at = None
            peer.acked_version = -1
        self._lagging.clear()
        self.claimed_at = now
        # In quorum mode the claim is announced (``leader`` event, is_leader True) only once a
        # majority has followed it: a node that lost only its own link to a live leader claims
        # in vain, and nobody sees two leaders.
        self.confirmed = self._quorum_until() is None
        self._refresh_live_members(now, force=True)
        self._set_state(State.LEADER, now, "claimed leadership", quiet=not self.confirmed)
        self._send_to_peers(self._message("claim", now, with_members=True))

    def _follow(self, leader: Member, term: int, now: float, reason: str, boot: int = 0) -> None:
        was_leader = self.state is State.LEADER
        if was_leader:
            # Point our followers at the new leader; they will check with it directly.
            hint = self._message(
                "pong", now, leader_member=leader, term=term, leader=leader.node_id, role=State.FOLLOWER
            )
            self._send_to_peers(hint)
        self.leader = leader
        self.leader_boot = boot
        self.term = term
        self.max_term = max(self.max_term, term)
        self.lease_until = None
        self.members_version = 0
        self.leader_mark = 0.0
        peer = self.npm if leader.npm and self.npm is not None else self._heard(leader, now)
        peer.last_ping = None  # ping the new leader at once: its member list and a lease mark
        self.next_ping_at = now
        self._set_state(State.FOLLOWER, now, reason, force=True)

    def _start_electing(self, now: float, reason: str, wait: float = 0.0, quiet: bool = False) -> None:
        """Elect; nobody is claimed for ``wait`` seconds (time to hear of a live leader)."""
        old = self._leader_peer() if self.state is State.FOLLOWER and self.leader is not None else None
        self.leader = None
        self.lease_until = None
        self.settle_until = now + wait
        self.next_ping_at = now
        for peer in self.peers.values():
            peer.pinged_since = None
        self._set_state(State.ELECTING, now, reason, quiet=quiet)
        if old is not None:
            old.dead = True  # no candidate; but if it answers as leader after all, it is followed
            if wait:
                self._ping(old, now)

    def _expire(self, now: float) -> None:
        """Apply every timeout that has passed, before anything else is decided."""
        if now - self._last_now > 2 * self.timing.interval:
            # No input for over two intervals (a node awake has one every interval and a half
            # at most): this node was paused or starved. What waited in its inbox, and the
            # timers that ran out meanwhile, are stale: the group may have elected without it.
            # It claims only after a whole settle window, time to hear of the current leader.
            self._resumed_until = now + self.timing.settle
        self._last_now = max(self._last_now, now)
        window = self.timing.failure_window
        if self.state is State.LEADER:
            quorum_until = self._quorum_until()
            if not self.confirmed:
                if now >= self.claimed_at + window:  # no majority followed the claim
                    self._start_electing(now, "no quorum followed the claim", wait=self.timing.settle, quiet=True)
            elif quorum_until is not None and now >= quorum_until:
                self._start_electing(now, "lost the quorum", wait=self.timing.settle)
            elif now >= self._lease_end(now):
                self.resigned_until = 0.0
                if now >= self.awake_until:
                    reason = f"lease lapsed: paused or starved for {now - self.awake_until + self.timing.lease:.2f} s"
                else:
                    reason = "followers stopped hearing this leader"
                self._start_electing(now, reason, wait=self.timing.settle)
            elif now > self._live_recheck_at:
                self._refresh_live_members(now)  # a member's time ran out
        elif self.state is State.FOLLOWER and self.leader is not None:
            heard = self._leader_peer().last_heard
            if heard is None or now >= heard + window:
                # Wait a moment before claiming: a node back from a pause hears from a live
                # leader (the old one, or a newer one) before it could depose it.
                self._start_electing(now, "leader unreachable", wait=self.timing.confirm)
        if self.state is State.ELECTING:
            for peer in self.peers.values():
                if not peer.dead and peer.pinged_since is not None and now >= peer.pinged_since + window:
                    peer.dead = True
        npm = self.npm
        if npm is not None and not npm.dead and npm.pinged_since is not None and now >= npm.pinged_since + window:
            npm.dead = True  # in any state: it is no candidate, and no reason to wait, any more

    # ----------------------------------------------------------------- members

    def _heard(self, member: Member, now: float) -> _Peer:
        """A datagram from ``member`` arrived: it is alive, at this address."""
        peer = self.peers.get(member.node_id)
        if peer is None:
            peer = self.peers[member.node_id] = _Peer(member)
        peer.member = member
        peer.last_heard = now
        peer.pinged_since = None
        peer.dead = peer.departed = peer.dropped = False
        return peer

    def _take_members(self, message: Message, leader: Member, now: float) -> None:
        """As follower: the leader's member list replaces what this node knew.

        A peer the list drops is kept as a lost peer (dead: no candidate, no member), not
        forgotten: if this node becomes leader, it probes it (:meth:`_probe_lost_peers`).
        During a partition each side's list drops the other side; a leader elected there
        then still pings the other side, and the two meet within an interval of the heal
        instead of waiting for a DNS-SD record. Peers that stopped cleanly are deleted, and
        lost peers are forgotten after :data:`FORGET_AFTER`, as a leader forgets them.
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
                self.peers[member.node_id] = _Peer(member)
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
            if peer.departed or now - self._silent_since(peer, now) >= FORGET_AFTER:
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
                peer = self.peers[member.node_id] = _Peer(member)
                if self.state is State.ELECTING:
                    self._ping_now(peer, now)

    def _refresh_live_members(self, now: float, force: bool = False) -> None:
        """As leader: bump the member-list version when the set of live members changed.

        Called when a member may have joined or left; the time of the first live member's
        expiry is kept, so that timeouts are checked then, not on every datagram (with 30
        members, rebuilding the set for each of their pings was a sixth of a leader's CPU).
        """
        live = frozenset(k for k, p in self.peers.items() if p.live_until >= now and not p.dead)
        if force or live != self._live_ids:
            self._live_ids = live
            self.members_version += 1
        self._live_recheck_at = min((self.peers[k].live_until for k in live), default=float("inf"))

    # ----------------------------------------------------------------- the npm leader

    def _follows_npm(self) -> bool:
        return self.state is State.FOLLOWER and self.leader is not None and self.leader.npm

    def _leader_peer(self) -> _Peer:
        """As follower: what this node knows of its leader."""
        assert self.leader is not None
        if self.leader.npm:
            assert self.npm is not None
            return self.npm
        return self.peers[self.leader.node_id]

    def _known_npm(self, host: str, port: int, now: float) -> _Peer:
        """The npm leader at ``host:port``, known from now on (in place of any other)."""
        member = npm_member(host, port)
        if self.npm is None or self.npm.member != member:
            self.npm = _Peer(member, probed_since=now)
        return self.npm

    def _npm_hearsay(self, host: str, port: int, now: float) -> None:
        """A peer follows an npm leader: count it as a candidate again, and ping it."""
        if self._follows_npm():
            return
        npm = self._known_npm(host, port, now)
        npm.dead = False
        self._ping_now(npm, now)

    def _npm_probe_due(self) -> float | None:
        """When a node that does not follow the known npm leader pings it next, if ever
        (the schedule of :meth:`_probe`)."""
        npm = self.npm
        if npm is None or self._follows_npm():
            return None
        if npm.last_ping is None:
            return self._last_now
        fast = self._last_now - self._silent_since(npm, self._last_now) < PROBE_FAST_FOR
        return npm.last_ping + (self.timing.interval if fast else PROBE_SLOW_EVERY)

    def _npm_serve_due(self) -> float | None:
        """As leader: when to publish the records npm nodes look for, if still to come.

        Not before :attr:`npm_serve_at`, nor while a known npm leader may be alive (pinged,
        not yet silent for the failure window): if it answers, this node follows it instead.
        """
        if self.npm_serve_at is None or self.state is not State.LEADER:
            return None
        npm = self.npm
        if npm is not None and not npm.dead and npm.pinged_since is not None:
            return max(self.npm_serve_at, npm.pinged_since + self.timing.failure_window)
        return self.npm_serve_at

    def _probe_npm(self, now: float) -> None:
        """Ping a known npm leader this node does not follow: when it answers, it is followed."""
        due = self._npm_probe_due()
        if self.npm is not None and due is not None and now >= due and not self._probe(self.npm, now):
            self.npm = None

    # ----------------------------------------------------------------- unicast mode: listed addresses
    # A peer list or DNS name gives addresses, not node ids. A candidate or leader pings every
    # listed address where no live peer is known, on the lost-peer probing schedule, addressed
    # to ANYONE; whoever is there answers with a pong that names it, and from then on it is an
    # ordinary peer. In an authenticated group a ping addressed to ANYONE is never proof of
    # life (a copy of it may be replayed to any node): the elector hands it to
    # on_address_ping, which only answers it. Without a secret it carries no stamp, nothing
    # tells it from a ping to the node itself, and it comes to on_message like any other.

    def on_addresses(self, addresses: Iterable[tuple[str, int]], now: float) -> list[Action]:
        """Unicast mode: nodes of the group may be at these addresses (the whole current list).

        Addresses no longer listed are not pinged any more. A candidate or leader (which hears
        from every live peer) takes the silent peers there as departed: a replica removed
        from a DNS name is no longer probed.
        """
        if self.state is State.STOPPED:
            return []
        self._expire(now)
        current = set(addresses)
        for address in [a for a in self.listed if a not in current]:
            del self.listed[address]
            for peer in self.peers.values():
                silent = self.state is not State.FOLLOWER and not self._answers(peer, now)
                if peer.member.address == address and silent:
                    peer.dead = peer.departed = True
        for host, port in current:
            self.listed.setdefault((host, port), _Peer(Member(ANYONE, 0, host, port)))
        self._ping_listed(now)
        return self._flush()

    def on_address_ping(self, message: Message, source: tuple[str, int], now: float) -> list[Action]:
        """A ping addressed to ANYONE (or any datagram of this node's own) came from ``source``.

        A datagram of this node's own means that a listed address is this node's. Otherwise
        the sender learns who is here from the pong; nothing else changes here.
        """
        if self.state is State.STOPPED or message.group != self.group or message.kind != "ping":
            return []
        if message.sender == self.me.node_id:
            self.own_addresses.add(source)
            return []
        self._expire(now)
        self._send(self._pong(message.members_version, now), Member(message.sender, message.priority, *source))
        return self._flush()

    def _answers(self, peer: _Peer, now: float) -> bool:
        """``peer`` was heard within the failure window (its address needs no ping of ANYONE)."""
        return not peer.dead and peer.last_heard is not None and now - peer.last_heard < self.timing.failure_window

    def _ping_listed(self, now: float) -> None:
        """A candidate or leader pings the listed addresses where no live peer is known."""
        if self.state not in (State.ELECTING, State.LEADER) or not self.listed:
            return
        known = {p.member.address for p in self.peers.values() if self._answers(p, now)}
        for address, spot in self.listed.items():
            if address in known or address in self.own_addresses:
                spot.probed_since = spot.last_ping = None  # when it falls silent: probed fast again
                continue
            if spot.probed_since is None:
                spot.probed_since = now
            if not self._probe(spot, now):
                spot.probed_since = now  # listed addresses are never forgotten: start over

    # ----------------------------------------------------------------- output

    def _send_pings(self, now: float) -> None:
        """Every interval: a candidate pings every live candidate, and probes the peers it found
        dead as a leader probes lost peers; a leader sends beats and probes lost peers."""
        if self.state is State.ELECTING:
            for peer in self.peers.values():
                if not peer.dead:
                    self._ping(peer, now)
            # Without the probes, a group where nobody leads (in quorum mode, after a partition
            # that left no side a majority) would never hear from its dead peers again.
            self._probe_lost_peers(now)
        elif self.state is State.LEADER:
            self._send_beats(now)
            self._probe_lost_peers(now)
        self._ping_listed(now)

    def _send_beats(self, now: float) -> None:
        """As leader, every interval: a heartbeat to every live member, with the member list
        for those that do not hold its current version. The two messages are built once, so
        the elector encodes each once (unless stamps must name each receiver)."""
        short = self._message("beat", now)
        full: Message | None = None
        for node_id in self._live_ids:
            peer = self.peers[node_id]
            if peer.acked_version == self.members_version:
                self._send(short, peer.member)
            else:
                full = full or self._message("beat", now, with_members=True)
                self._send(full, peer.member)

    def _probe_lost_peers(self, now: float) -> None:
        """As leader: ping peers that are not live members, so that rival leaders meet; as
        candidate: ping the peers found dead, so that a candidate hears of them when they are
        back.

        After a partition heals, the first probe that crosses makes the two leaders (or a
        leader and the other's followers) compare claims, or the candidates count each other
        again. Peers that stopped cleanly are never probed; a peer silent for long is probed
        less often, then forgotten.
        """
        for node_id, peer in list(self.peers.items()):
            lost = peer.dead if self.state is State.ELECTING else peer.live_until < now
            if peer.departed or not lost:
                continue
            if peer.last_heard is None and peer.probed_since is None:
                peer.probed_since = now
            if not self._probe(peer, now):
                del self.peers[node_id]

    def _probe(self, peer: _Peer, now: float) -> bool:
        """Ping a lost peer (or npm leader) on the probing schedule; False: forget it.

        Every interval for :data:`PROBE_FAST_FOR` seconds of silence, then every
        :data:`PROBE_SLOW_EVERY` seconds, until it has been silent for :data:`FORGET_AFTER`.
        """
        silent_for = now - self._silent_since(peer, now)
        if silent_for >= FORGET_AFTER:
            return False
        if silent_for < PROBE_FAST_FOR:
            self._ping_now(peer, now)
        elif peer.last_ping is None or now >= peer.last_ping + PROBE_SLOW_EVERY:
            self._ping(peer, now)
        return True

    @staticmethod
    def _silent_since(peer: _Peer, now: float) -> float:
        """Since when ``peer`` has been silent: its last word, or when it was first probed or
        dropped from the leader's list, whichever is later."""
        return max((t for t in (peer.last_heard, peer.probed_since) if t is not None), default=now)

    def _measure_round_trip(self, now: float) -> None:
        """As follower: a pong from the leader answers the last ping; keep a smoothed round trip."""
        sent = self._leader_peer().last_ping
        if sent is not None and 0.0 <= now - sent < self.timing.interval:
            self.round_trip = 0.8 * self.round_trip + 0.2 * (now - sent)

    def _follower_ping_due(self) -> float:
        """When a follower pings its leader next: an interval after its last ping, or sooner
        (a retry) while that ping is unanswered."""
        peer = self._leader_peer()
        if peer.last_ping is None:
            return self._last_now
        # A retry waits for three smoothed round trips at least: on a loaded host pongs come
        # late, and retrying at once would only add load.
        retry = min(self.timing.interval, max(self.timing.retry, 3.0 * self.round_trip))
        if peer.pinged_since is not None:
            return peer.last_ping + retry
        if peer.member.npm:  # it sends no heartbeats: it answers pings
            return peer.last_ping + self.timing.interval
        # Our leader sends a heartbeat every interval; ping it only when one is overdue.
        heard = peer.last_heard if peer.last_heard is not None else peer.last_ping
        return max(heard + self.timing.overdue, peer.last_ping + retry)

    def _candidate_retry_due(self, peer: _Peer) -> float | None:
        """While electing: when to ping again a live candidate whose last ping got no answer.

        As a follower retries its leader (:attr:`Timing.retry`): an answer may be the one that
        says a peer still hears the leader (:meth:`_note_live_leader`), and with a few
        datagrams lost a node cut off from a live leader would claim for lack of it.
        """
        if peer.dead or peer.pinged_since is None or peer.last_ping is None:
            return None
        return peer.last_ping + self.timing.retry

    def _sees_majority(self, now: float) -> bool:
        """Quorum mode: this node and the peers heard within the failure window are a majority."""
        if self.quorum is None:
            return True
        window = self.timing.failure_window
        visible = 1 + sum(
            1 for p in self.peers.values() if not p.dead and p.last_heard is not None and now - p.last_heard < window
        )
        return visible >= self.quorum // 2 + 1

    def _renew_lease(self, peer: _Peer, mark: float, now: float) -> None:
        """As leader: a follower echoed ``mark``, the time this node sent a heartbeat it received."""
        if mark <= 0.0:
            return
        self.lease_until = max(self.lease_until or 0.0, mark + self.timing.lease)
        peer.renewed_at = max(peer.renewed_at or 0.0, mark)
        peer.echoed_at = now
        peer.echo_lag = now - peer.renewed_at
        if peer.echo_lag > 2 * self.timing.interval:
            self._lagging.add(peer.member.node_id)
        else:
            self._lagging.discard(peer.member.node_id)
        if not self.confirmed and (self._quorum_until() or 0.0) > now:
            self.confirmed = True  # a majority follows: announce the leadership now
            self._set_state(State.LEADER, now, "claimed leadership with a quorum", force=True)

    def _lease_end(self, now: float) -> float:
        """As leader: when ``is_leader`` turns False unless the lease is renewed first.

        Without quorum, the lease is renewed by this node's own ticks (:attr:`awake_until`):
        followers that fall silent may have crashed, and a leader awake all along leads on
        (if they were cut off instead, each side leads, as in any partition). It lapses when
        the ticks stop (a pause), and it is cut back to what followers renew by echoing lease
        marks (:attr:`lease_until`) as soon as one of them shows that it no longer hears
        this leader: it would give up on it, and elect, when that runs out.
        In quorum mode the echoes are the lease, and the quorum's own check comes on top.
        """
        end = self.awake_until
        if self.quorum is not None or self._deaf_follower(now):
            end = min(end, self.lease_until if self.lease_until is not None else end)
        return end

    def _deaf_follower(self, now: float) -> bool:
        """As leader: a follower that spoke within the failure window echoed a lease mark more
        than two intervals old: this node hears it, but it does not hear this node."""
        for node_id in list(self._lagging):
            peer = self.peers.get(node_id)
            if peer is not None and peer.echoed_at is not None and now - peer.echoed_at < self.timing.failure_window:
                return True
            self._lagging.discard(node_id)  # gone, or silent since: it no longer counts
        return False

    def _quorum_until(self) -> float | None:
        """Quorum mode, as leader: when the majority renewed by followers' echoes runs out."""
        needed = 0 if self.quorum is None else self.quorum // 2  # followers besides this node
        if needed == 0:
            return None
        renewals = sorted((p.renewed_at for p in self.peers.values() if p.renewed_at is not None), reverse=True)
        if len(renewals) < needed:
            return self._last_now  # not enough followers: due now
        return renewals[needed - 1] + self.timing.lease

    def _ping_now(self, peer: _Peer, now: float) -> None:
        """Ping at once, unless it was pinged less than an interval ago.

        Written as a deadline (``last_ping + interval``), as :meth:`next_deadline` computes
        it: the same rounding, so a tick at that deadline does ping.
        """
        if peer.last_ping is None or now >= peer.last_ping + self.timing.interval:
            self._ping(peer, now)

    def _ping(self, peer: _Peer, now: float) -> None:
        if not peer.member.host:
            return
        if peer.pinged_since is None and not peer.dead:
            peer.pinged_since = now
        peer.last_ping = now
        if peer.member.npm:
            self._actions.append(NpmPing(peer.member.address))
        else:
            self._send(self._message("ping", now), peer.member)

    def _pong(self, pinger_version: int, now: float) -> Message:
        if self.state is State.LEADER:
            return self._message("pong", now, with_members=pinger_version != self.members_version)
        return self._message("pong", now, with_members=self.state is State.ELECTING)

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
    ) -> Message:
        state = role or self.state
        if leader is None and self.leader is not None:
            leader = self.leader.node_id
            if self.state is State.FOLLOWER and kind not in ("ping", "ack"):  # the leader's own
                leader_member = self.leader
        if term is None:
            term = self._told_term()
        if self.state is State.LEADER:
            mark = now  # a follower echoes it back: the echoed lease (see _lease_end)
        elif self.state is State.FOLLOWER and kind in ("ping", "ack"):
            mark = self.leader_mark
        else:
            mark = 0.0
        return Message(
            kind=kind,
            group=self.group,
            sender=self.me.node_id,
            priority=self.me.priority,
            role=State.ELECTING if state is State.STOPPED else state,
            term=term,
            leader=leader,
            leader_member=leader_member,
            members_version=self.members_version,
            members=self.members(now, with_npm=False)[:MAX_MEMBERS] if with_members else None,
            lease_mark=mark,
            leader_age=self._leader_age(now) if kind == "pong" and self.state is State.FOLLOWER else None,
            boot=self.boot,
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

    def _send_to_peers(self, message: Message) -> None:
        """Send to every peer that has not departed, those found dead too (they may be back)."""
        for peer in self.peers.values():
            if not peer.departed and peer.member.host:
                self._send(message, peer.member)

    def _set_state(self, new: State, now: float, reason: str, force: bool = False, quiet: bool = False) -> None:
        """Change state, emit the event it means (unless ``quiet``) and publish the role."""
        previous = self.state
        if new is previous and not force:
            return
        self.state = new
        if new is State.LEADER:
            self.token = FencingToken(self.term, self.me.priority, self.me.node_id, self.boot)
        elif new is State.FOLLOWER and self.leader is not None:
            self.token = FencingToken(self.term, self.leader.priority, self.leader.node_id, self.leader_boot)
        # A claim not announced yet (quorum mode waits for a majority) was never told to the
        # callbacks: to them this node was electing, and leaving it is no reelection.
        told = State.ELECTING if previous is State.LEADER and not self._leader_told else previous
        kind = {State.LEADER: "leader", State.FOLLOWER: "follower"}.get(new)
        if kind is None and told in (State.LEADER, State.FOLLOWER):
            kind = "reelection"
        if kind is not None and not quiet:
            leader = self.leader if new in (State.LEADER, State.FOLLOWER) else None
            event = Event(kind, self.me.node_id, new, told, self.term, leader, reason, now, None, self.token)
            self._actions.append(Notify(event))
        self._leader_told = new is State.LEADER and (not quiet or (previous is State.LEADER and self._leader_told))
        # The records for npm nodes come later, from tick (see NPM_HOLD).
        announced = new is State.LEADER and self.confirmed and self.npm_compat
        self.npm_serve_at = now + NPM_HOLD if announced else None
        # The DNS-SD record is a hint, updated only when leadership starts or ends: a group's
        # followers re-announcing every change of theirs would flood mDNS right when a new
        # leader needs the CPU (the record of a follower keeps saying "electing").
        if State.LEADER in (new, previous) and new is not State.STOPPED:
            self._actions.append(Publish(new, self._told_term()))

    def _flush(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions
