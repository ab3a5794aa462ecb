"""The roles of the LAN machine (as etcd-io/raft's ``becomeCandidate``, ``becomeFollower``,
``becomeLeader``): each keeps its own state and timers, and enters through one constructor
that builds it afresh and hands it to :meth:`.Node.become`.

* :class:`Electing`: pings the candidates, claims when it is the best live one.
* :class:`Follower`: pings its leader when a heartbeat is overdue, elects when it is lost.
* :class:`Leader`: sends the heartbeats, keeps its followers' table and its lease.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from .messages import Message
from .model import FencingToken, Member, State
from .node import Node, Role
from .peers import Peer
from .progress import ProgressTable
from .quorum import followers_needed, majority_mark

__all__ = ["Electing", "Follower", "Leader"]


def probe_lost_peers(node: Node, now: float, lost: Callable[[str, Peer], bool]) -> None:
    """Ping the ``lost`` peers on the probing schedule, so that a candidate hears of them when
    they are back and rival leaders meet; forget those silent for too long.

    After a partition heals, the first probe that crosses makes the two leaders (or a leader
    and the other's followers) compare claims, or the candidates count each other again.
    Peers that stopped cleanly are never probed.
    """
    for node_id, peer in list(node.peers.items()):
        if peer.departed or not lost(node_id, peer):
            continue
        if peer.last_heard is None and peer.probed_since is None:
            peer.probed_since = now
        if not node._probe(peer, now):
            node.role.forget(node_id)
            del node.peers[node_id]


def ping_listed(node: Node, now: float) -> None:
    """A candidate or leader pings the listed addresses where no live peer is known."""
    if not node.role.probes or not node.listed.spots:
        return
    known = {p.member.address for p in node.peers.values() if node._answers(p, now)}
    node.listed.ping(now, known, node._probe)


@dataclass
class Electing(Role):
    """Looking for the leader, or for the moment to claim."""

    state: ClassVar[State] = State.ELECTING
    probes: ClassVar[bool] = True
    settle_until: float = 0.0
    """Nobody is claimed before then: time to hear of a live leader."""
    next_ping_at: float = 0.0
    """When the candidates are pinged next."""

    @classmethod
    def enter(cls, node: Node, now: float, reason: str, wait: float = 0.0, quiet: bool = False) -> None:
        """Elect; nobody is claimed for ``wait`` seconds (time to hear of a live leader)."""
        old = node._leader_peer() if node.state is State.FOLLOWER and node.leader is not None else None
        node.leader = None
        for peer in node.peers.values():
            peer.pinged_since = None
        node.become(cls(settle_until=now + wait, next_ping_at=now), now, reason, quiet=quiet)
        if old is not None:
            old.dead = True  # no candidate; but if it answers as leader after all, it is followed
            if wait:
                node._ping(old, now)

    def holds(self, node: Node) -> tuple[float, ...]:
        """The times before which nobody is claimed: settle, resumption, resignation, and a
        leader some peer still hears."""
        return (self.settle_until, node._resumed_until, node.resigned_until, node.live_leader_hold(node._last_now))

    def failure_due(self, node: Node, peer: Peer) -> float | None:
        """When a pinged live candidate counts as dead, unless it answers first."""
        if peer.dead or peer.pinged_since is None:
            return None
        return peer.pinged_since + node.timing.failure_window

    def retry_due(self, node: Node, peer: Peer) -> float | None:
        """When to ping again a live candidate whose last ping got no answer.

        As a follower retries its leader (:attr:`Timing.retry`): an answer may be the one that
        says a peer still hears the leader (``Machine._note_live_leader``), and with a few
        datagrams lost a node cut off from a live leader would claim for lack of it.
        """
        if peer.dead or peer.pinged_since is None or peer.last_ping is None:
            return None
        return peer.last_ping + node.timing.retry

    def deadlines(self, node: Node) -> list[float]:
        # Settle and resign holds matter only until they pass (then the ping timer rules).
        dues = [self.next_ping_at, *(t for t in self.holds(node) if t > node._last_now)]
        for peer in node.peers.values():
            dues.extend(t for t in (self.failure_due(node, peer), self.retry_due(node, peer)) if t is not None)
        return dues

    def expire(self, node: Node, now: float) -> None:
        for peer in node.peers.values():
            due = self.failure_due(node, peer)
            if due is not None and now >= due:
                peer.dead = True

    def claim_if_best(self, node: Node, now: float) -> None:
        """Once settled: claim if this node is the best live candidate."""
        if now < self.settle_until or now < node._resumed_until:
            return
        if now < node.live_leader_hold(now):
            return  # a peer still hears from its leader
        if node.best_candidate(now) is node.me and node._sees_majority(now):
            Leader.enter(node, now)

    def tick(self, node: Node, now: float) -> None:
        self.claim_if_best(node, now)
        if node.role is not self:  # it claimed: the leader's timers, in this same tick
            node.role.tick(node, now)
            return
        if now >= self.next_ping_at:
            self.next_ping_at = now + node.timing.interval
            for peer in node.peers.values():
                if not peer.dead:
                    node._ping(peer, now)
            # Without the probes, a group where nobody leads (in quorum mode, after a partition
            # that left no side a majority) would never hear from its dead peers again.
            probe_lost_peers(node, now, lambda _, peer: peer.dead)
            ping_listed(node, now)
        for peer in node.peers.values():
            due = self.retry_due(node, peer)
            if due is not None and now >= due:
                node._ping(peer, now)

    def pong_with_members(self, node: Node, pinger_version: int) -> bool:
        return True

    def heard_leader(self, node: Node, leader: Member, term: int, now: float, boot: int) -> None:
        Follower.enter(node, leader, term, now, "found the leader", boot)


@dataclass
class Follower(Role):
    """Following a leader (one of ours, or an npm leader)."""

    state: ClassVar[State] = State.FOLLOWER
    leader_boot: int = 0
    """The run of its leader, from the leader's own messages."""
    leader_mark: float = 0.0
    """The greatest lease mark of the leader's beats, pongs and claims, echoed in each ack
    and ping."""

    @classmethod
    def enter(cls, node: Node, leader: Member, term: int, now: float, reason: str, boot: int = 0) -> None:
        """Follow ``leader`` (of run ``boot``) in ``term``."""
        if node.state is State.LEADER:
            # Point our followers at the new leader; they will check with it directly.
            hint = node._message(
                "pong", now, leader_member=leader, term=term, leader=leader.node_id, role=State.FOLLOWER
            )
            node._send_to_peers(hint)
        node.leader = leader
        node.term = term
        node.max_term = max(node.max_term, term)
        node.members_version = 0
        peer = node.npm.peer if leader.npm and node.npm.peer is not None else node._heard(leader, now)
        peer.last_ping = None  # ping the new leader at once: its member list and a lease mark
        node.become(cls(leader_boot=boot), now, reason)

    def token(self, node: Node) -> FencingToken | None:
        assert node.leader is not None
        return FencingToken(node.term, node.leader.priority, node.leader.node_id, self.leader_boot)

    def lease_mark(self, kind: str, now: float) -> float:
        return self.leader_mark if kind in ("ping", "ack") else 0.0

    def leader_age(self, node: Node, now: float) -> float | None:
        """Seconds since the leader last spoke as leader."""
        heard = node._leader_peer().last_heard
        return now - heard if heard is not None else node.timing.failure_window

    def alive(self, node: Node, now: float) -> bool:
        """The leader spoke as leader less than :attr:`Timing.suspect` ago.

        In quorum mode, less than :attr:`Timing.lease` ago: this node's echoes may still
        hold up the old leader's majority until then (every mark it echoed came in a datagram
        it received by its last word from the leader, and a mark renews for the lease from
        when it was sent), so its acks must not make up a new leader's majority before.
        """
        limit = node.timing.suspect if node.quorum is None else node.timing.lease
        age = self.leader_age(node, now)
        return age is not None and age < limit

    def heard_leader(self, node: Node, leader: Member, term: int, now: float, boot: int) -> None:
        assert node.leader is not None
        theirs = FencingToken(term, leader.priority, leader.node_id, boot)
        if leader.node_id == node.leader.node_id:
            if term != node.term or boot != self.leader_boot:
                Follower.enter(node, leader, term, now, "leader started a new term", boot)
        elif (node.token is None or theirs > node.token) and not self.alive(node, now):
            old = node.leader
            Follower.enter(node, leader, term, now, "a better leader was found", boot)
            node._send(node._message("leave", now), old)
        else:
            node._send(node._pong(0, now), leader)  # tells it which leader this node follows

    def gives_up_at(self, node: Node) -> float | None:
        """When the leader counts as lost, unless it speaks first (None: already lost)."""
        heard = node._leader_peer().last_heard
        return None if heard is None else heard + node.timing.failure_window

    def ping_due(self, node: Node) -> float:
        """When to ping the leader next: an interval after the last ping, or sooner (a retry)
        while that ping is unanswered."""
        peer = node._leader_peer()
        if peer.last_ping is None:
            return node._last_now
        # A retry waits for three smoothed round trips at least: on a loaded host pongs come
        # late, and retrying at once would only add load.
        retry = min(node.timing.interval, max(node.timing.retry, 3.0 * node.round_trip))
        if peer.pinged_since is not None:
            return peer.last_ping + retry
        if peer.member.npm:  # it sends no heartbeats: it answers pings
            return peer.last_ping + node.timing.interval
        # Our leader sends a heartbeat every interval; ping it only when one is overdue.
        heard = peer.last_heard if peer.last_heard is not None else peer.last_ping
        return max(heard + node.timing.overdue, peer.last_ping + retry)

    def deadlines(self, node: Node) -> list[float]:
        gives_up = self.gives_up_at(node)
        return [self.ping_due(node)] + ([] if gives_up is None else [gives_up])

    def expire(self, node: Node, now: float) -> None:
        gives_up = self.gives_up_at(node)
        if gives_up is None or now >= gives_up:
            # Wait a moment before claiming: a node back from a pause hears from a live
            # leader (the old one, or a newer one) before it could depose it.
            Electing.enter(node, now, "leader unreachable", wait=node.timing.confirm)
            node.role.expire(node, now)

    def tick(self, node: Node, now: float) -> None:
        if now >= self.ping_due(node):
            node._ping(node._leader_peer(), now)


@dataclass
class Leader(Role):
    """Leading: heartbeats to the live members, a lease, and the followers' table."""

    state: ClassVar[State] = State.LEADER
    probes: ClassVar[bool] = True
    next_ping_at: float = 0.0
    """When the beats go out next."""
    claimed_at: float = 0.0
    awake_until: float = 0.0
    """The end of the lease this node renews at each of its own ticks; it lapses when the
    process was paused or starved of CPU for longer than the lease."""
    lease_until: float | None = None
    """The end of the lease that followers renew by echoing lease marks."""
    confirmed: bool = True
    """Announced (always, unless quorum mode waits for a majority to follow)."""
    progress: ProgressTable = field(default_factory=ProgressTable)

    @classmethod
    def enter(cls, node: Node, now: float) -> None:
        """Claim: term = greatest term seen + 1, sent to every peer."""
        assert isinstance(node.role, Electing)
        node.term = node.max_term = node.max_term + 1
        node.leader = node.me
        # With followers to expect, the lease runs from the claim: a leader paused before their
        # first ping must not lead on when it resumes.
        recent = any(node._answers(p, now) for p in node.peers.values())
        role = cls(
            next_ping_at=node.role.next_ping_at,
            claimed_at=now,
            awake_until=now + node.timing.lease,
            lease_until=now + node.timing.lease if recent else None,
            progress=ProgressTable.start(node.peers, now, node.timing.failure_window),
        )
        # In quorum mode the claim is announced (``leader`` event, is_leader True) only once a
        # majority has followed it: a node that lost only its own link to a live leader claims
        # in vain, and nobody sees two leaders.
        role.confirmed = role.quorum_until(node) is None
        role.refresh(node, now, force=True)
        node.become(role, now, "claimed leadership", quiet=not role.confirmed)
        node._send_to_peers(node._message("claim", now, with_members=True))

    # ------------------------------------------------------------- the role's face

    def token(self, node: Node) -> FencingToken | None:
        return FencingToken(node.term, node.me.priority, node.me.node_id, node.boot)

    def told_state(self) -> State:
        return State.LEADER if self.told else State.ELECTING

    def heard_leader(self, node: Node, leader: Member, term: int, now: float, boot: int) -> None:
        """Rivals: the greater token remains."""
        if node.token is None or FencingToken(term, leader.priority, leader.node_id, boot) > node.token:
            Follower.enter(node, leader, term, now, "a better leader was found", boot)
        else:
            node._send(node._message("claim", now, with_members=True), leader)

    def announced(self) -> bool:
        return self.confirmed

    def lease_mark(self, kind: str, now: float) -> float:
        return now  # a follower echoes it back: the echoed lease (see lease_end)

    def member_list(self, node: Node, now: float) -> list[Member] | None:
        live_until = self.progress.live_until
        return [p.member for k, p in node.peers.items() if live_until(k) >= now and not p.dead]

    def pong_with_members(self, node: Node, pinger_version: int) -> bool:
        return pinger_version != node.members_version

    def forget(self, node_id: str) -> None:
        self.progress.forget(node_id)

    def peer_changed(self, node: Node, now: float) -> None:
        self.refresh(node, now)

    def refresh(self, node: Node, now: float, force: bool = False) -> None:
        """Bump the member-list version when the set of live members changed."""
        if self.progress.refresh(node.peers, now, force):
            node.members_version += 1

    # ------------------------------------------------------------- followers

    def from_follower(self, node: Node, message: Message, sender: Member, now: float) -> None:
        """A ping or ack from ``sender``; one that names this leadership renews the lease with
        the mark it echoes, and any one keeps the sender a live member."""
        row = self.progress.row(sender.node_id)
        if message.leader == node.me.node_id and message.term == node.term:
            self.renew(node, sender.node_id, message.lease_mark, now)
            row.acked_version = message.members_version
        row.live_until = now + node.timing.failure_window
        if sender.node_id not in self.progress.live_ids:  # a datagram of a live member changes nothing
            self.refresh(node, now)

    def renew(self, node: Node, node_id: str, mark: float, now: float) -> None:
        """A follower echoed ``mark``, the time this node sent a heartbeat it received."""
        if mark <= 0.0:
            return
        self.lease_until = max(self.lease_until or 0.0, mark + node.timing.lease)
        self.progress.echo(node_id, mark, now, 2 * node.timing.interval)
        if not self.confirmed and (self.quorum_until(node) or 0.0) > now:
            self.confirmed = True  # a majority follows: announce the leadership now
            node.announce(self, now, "claimed leadership with a quorum")

    def follower_left(self, node: Node, node_id: str, now: float) -> None:
        """``node_id`` left this leadership: no live member any more."""
        self.progress.row(node_id).live_until = 0.0
        self.refresh(node, now)

    def follower_stopped(self, node_id: str) -> None:
        """``node_id`` stopped: its echoes no longer count."""
        self.progress.row(node_id).renewed_at = None
        if not self.progress.live_ids:
            self.lease_until = None  # nobody left whose silence could mean a partition

    # ------------------------------------------------------------- the lease and timers

    def lease_end(self, node: Node, now: float) -> float:
        """When ``is_leader`` turns False unless the lease is renewed first.

        Without quorum, the lease is renewed by this node's own ticks (:attr:`awake_until`):
        followers that fall silent may have crashed, and a leader awake all along leads on
        (if they were cut off instead, each side leads, as in any partition). It lapses when
        the ticks stop (a pause), and it is cut back to what followers renew by echoing lease
        marks (:attr:`lease_until`) as soon as one of them shows that it no longer hears
        this leader: it would give up on it, and elect, when that runs out.
        In quorum mode the echoes are the lease, and the quorum's own check comes on top.
        """
        end = self.awake_until
        if node.quorum is not None or self.progress.deaf_follower(now, node.timing.failure_window):
            end = min(end, self.lease_until if self.lease_until is not None else end)
        return end

    def quorum_until(self, node: Node) -> float | None:
        """Quorum mode: when the majority renewed by followers' echoes runs out."""
        needed = followers_needed(node.quorum)
        if needed == 0:
            return None
        mark = majority_mark(self.progress.renewals(), needed)
        return node._last_now if mark is None else mark + node.timing.lease  # too few: due now

    def claim_expiry(self, node: Node) -> float:
        """An unconfirmed claim that no majority followed ends then."""
        return self.claimed_at + node.timing.failure_window

    def deadlines(self, node: Node) -> list[float]:
        if not self.confirmed:
            # An unconfirmed claim is never is_leader, so its lease does not matter yet (tick
            # acts on it only once confirmed, and a confirmation renews it).
            return [self.next_ping_at, self.claim_expiry(node)]
        ends = (self.lease_end(node, node._last_now), self.quorum_until(node))
        return [self.next_ping_at, *(t for t in ends if t is not None)]

    def expire(self, node: Node, now: float) -> None:
        quorum_until = self.quorum_until(node)
        if not self.confirmed:
            if now >= self.claim_expiry(node):  # no majority followed the claim
                Electing.enter(node, now, "no quorum followed the claim", wait=node.timing.settle, quiet=True)
        elif quorum_until is not None and now >= quorum_until:
            Electing.enter(node, now, "lost the quorum", wait=node.timing.settle)
        elif now >= self.lease_end(node, now):
            node.resigned_until = 0.0
            if now >= self.awake_until:
                reason = f"lease lapsed: paused or starved for {now - self.awake_until + node.timing.lease:.2f} s"
            else:
                reason = "followers stopped hearing this leader"
            Electing.enter(node, now, reason, wait=node.timing.settle)
        elif now > self.progress.live_recheck_at:
            self.refresh(node, now)  # a member's time ran out
        if node.role is not self:
            node.role.expire(node, now)

    def tick(self, node: Node, now: float) -> None:
        if now >= self.next_ping_at:
            self.next_ping_at = now + node.timing.interval
            # Still leading after expire: the lease has not lapsed, so this node has been
            # awake all along. Only the tick that sends the beats renews this part of the
            # lease: the lease argument counts from a renewal that came with heartbeats.
            self.awake_until = now + node.timing.lease
            self.send_beats(node, now)
            probe_lost_peers(node, now, lambda node_id, _: self.progress.live_until(node_id) < now)
            ping_listed(node, now)

    def send_beats(self, node: Node, now: float) -> None:
        """Every interval: a heartbeat to every live member, with the member list for those
        that do not hold its current version. The two messages are built once, so the elector
        encodes each once (unless stamps must name each receiver)."""
        short = node._message("beat", now)
        full: Message | None = None
        for node_id in self.progress.live_ids:
            peer = node.peers[node_id]
            if self.progress.row(node_id).acked_version == node.members_version:
                node._send(short, peer.member)
            else:
                full = full or node._message("beat", now, with_members=True)
                node._send(full, peer.member)
