"""The roles of the LAN machine (as etcd-io/raft's ``becomeCandidate``, ``becomeFollower``,
``becomeLeader``): each keeps its own state and timers, and enters through one constructor
that builds it afresh and hands it to :meth:`.Node.become`.

* :class:`Electing`: pings the candidates, claims when it is the best live one.
* :class:`Follower`: pings its leader when a heartbeat is overdue, elects when it is lost.
* :class:`Leader`: sends the heartbeats, keeps its followers' table and its lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .candidates import best_candidate, live_leader_hold, ping_listed, probe_lost_peers
from .leading import Leading
from .messages import Message, ack_slot
from .model import FencingToken, Member, State
from .node import Node, Role
from .peers import Peer, silent_since
from .progress import ProgressTable
from .timing import FORGET_AFTER

__all__ = ["Electing", "Follower", "Leader"]


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
        return (self.settle_until, node._resumed_until, node.resigned_until, live_leader_hold(node, node._last_now))

    def failure_due(self, node: Node, peer: Peer) -> float | None:
        """When a pinged live candidate counts as dead, unless it answers first."""
        if peer.dead or peer.pinged_since is None:
            return None
        return peer.pinged_since + node.timing.failure_window

    def retry_due(self, node: Node, peer: Peer) -> float | None:
        """When to ping again a live candidate whose last ping got no answer.

        As a follower retries its leader (:attr:`Timing.retry`): an answer may be the one that
        says a peer still hears the leader (``Handlers._note_live_leader``), and with a few
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
        if now < live_leader_hold(node, now):
            return  # a peer still hears from its leader
        if best_candidate(node, now) is node.me and node._sees_majority(now):
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

    def consider_claim(self, node: Node, now: float) -> None:
        self.claim_if_best(node, now)

    def greets(self, node: Node, peer: Peer, leads: bool, now: float) -> bool:
        return leads or not peer.dead


@dataclass
class Follower(Role):
    """Following a leader (one of ours, or an npm leader)."""

    state: ClassVar[State] = State.FOLLOWER
    leader_boot: int = 0
    """The run of its leader, from the leader's own messages."""
    leader_mark: float = 0.0
    """The greatest lease mark of the leader's beats, pongs and claims, echoed in each ack
    and ping."""
    multicast_at: float | None = None
    """When the latest multicast beat of the leader arrived (its acks say so for two
    intervals, and the leader then stops sending it beats one by one)."""
    acked_beat: int = 0
    """The number of the latest beat acked: a beat that arrives twice (by multicast and one
    by one, while the leader learns) is acked once."""

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

    def greets(self, node: Node, peer: Peer, leads: bool, now: float) -> bool:
        """A follower of an npm leader greets its peers, so that both know each other."""
        return node._follows_npm() and peer.last_heard is None

    def lost_leader(self, node: Node, node_id: str, now: float, reason: str, wait: float = 0.0) -> bool:
        assert node.leader is not None
        if node.leader.node_id != node_id:
            return False
        Electing.enter(node, now, reason, wait=wait)
        return True

    def leave(self, node: Node, now: float) -> None:
        assert node.leader is not None
        node._send(node._message("leave", now), node.leader)

    def outdated(self, node: Node, message: Message) -> bool:
        """A message of this node's leader, of the same run, that names an older term: it was
        sent before the claim this node follows (a candidate's ping or pong), and says nothing
        of the leadership now. (A leader that steps down keeps its term, and a restarted one
        has another run.)

        A node of protocol 3 reads the leader's multicast beats on a socket and thread of
        their own: a multicast beat may then be decided on before a ping that the leader sent
        as a candidate and that still waits in the heartbeat socket. Taking that ping for a
        step-down made a follower re-elect just after a failover (seen in the lab at 30 nodes
        on a loaded machine). Protocol 2 keeps 0.2's behaviour: one socket, read in order."""
        assert node.leader is not None
        return (
            node.protocol >= 3
            and message.sender == node.leader.node_id
            and message.boot == self.leader_boot
            and message.term < node.term
        )

    def from_own_leader(self, node: Node, message: Message, sender: Member, now: float, measure: bool) -> None:
        """Its leader's beat, pong or claim: take its member list and ack, echoing the mark."""
        assert node.leader is not None
        if node.leader.node_id != sender.node_id:
            return
        self.leader_mark = max(self.leader_mark, message.lease_mark)
        if measure:
            node._measure_round_trip(now)
        self.take_members(node, message, sender, now)
        if message.multicast:
            self.multicast_at = now
        if self.acks(node, message) and not (message.beat and message.beat == self.acked_beat):
            self.acked_beat = message.beat
            hears = self.multicast_at is not None and now - self.multicast_at <= 2 * node.timing.interval
            node._send(node._message("ack", now, multicast=hears), sender)

    @staticmethod
    def acks(node: Node, message: Message) -> bool:
        """Every pong and claim of the leader is acked, and every beat, unless the beat thins
        the acks (protocol 3: ``ack_every`` over 1) and it is not in this node's slot. A beat
        that carries the member list is acked too: the leader sends the list until an ack
        says it arrived."""
        if message.kind != "beat" or message.ack_every <= 1 or node.protocol < 3 or message.members is not None:
            return True
        return (message.beat + ack_slot(node.me.node_id)) % message.ack_every == 0

    def take_members(self, node: Node, message: Message, leader: Member, now: float) -> None:
        """The leader's member list replaces what this node knew.

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
            if member.node_id == node.me.node_id or member.node_id == leader.node_id:
                continue
            listed.add(member.node_id)
            peer = node.peers.get(member.node_id)
            if peer is None:
                node._new_peer(member)
            else:
                peer.member = member
                peer.dead = peer.dropped = peer.departed = False  # the leader hears from it
                peer.probed_since = None
        for node_id, peer in list(node.peers.items()):
            if node_id in listed:
                continue
            if not peer.dropped:
                peer.dead = peer.dropped = True
                peer.probed_since = now  # lost from now on (the list is newer than its last word)
            if peer.departed or now - silent_since(peer, now) >= FORGET_AFTER:
                del node.peers[node_id]
        node.members_version = message.members_version

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
class Leader(Leading):
    """The leader role: its claim, and its timers (beats, lease, quorum, an unconfirmed claim)."""

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
            next_ping_at=node.role.next_ping_at,  # the first beats go out on the candidate's ping timer
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

    def heard_leader(self, node: Node, leader: Member, term: int, now: float, boot: int) -> None:
        """Rivals: the greater token remains."""
        if node.token is None or FencingToken(term, leader.priority, leader.node_id, boot) > node.token:
            Follower.enter(node, leader, term, now, "a better leader was found", boot)
        else:
            node._send(node._message("claim", now, with_members=True), leader)

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
