"""What a leader keeps and knows: its lease, its followers' table, and its heartbeats.

:class:`Leading` is the state and the answers of the leader role; :class:`.roles.Leader` adds
its entry (the claim) and its timers. Kept apart so that each stays short.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .messages import Message
from .model import FencingToken, Member, State
from .node import Node, Role
from .peers import Peer
from .progress import ProgressTable
from .quorum import followers_needed, majority_mark
from .timing import ACK_EVERY

__all__ = ["Leading"]


@dataclass
class Leading(Role):
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
    beats_sent: int = 0
    """The number of the latest beats (numbered so that thinned acks come in turn)."""
    ack_every: int = 1
    """The ``ack_every`` the latest beats asked for (see :meth:`ack_every_now`)."""

    # ------------------------------------------------------------- the role's face

    def token(self, node: Node) -> FencingToken | None:
        return FencingToken(node.term, node.me.priority, node.me.node_id, node.boot)

    def told_state(self) -> State:
        return State.LEADER if self.told else State.ELECTING

    def announced(self) -> bool:
        return self.confirmed

    def lease_mark(self, kind: str, now: float) -> float:
        return now  # a follower echoes it back: the echoed lease (see lease_end)

    def member_list(self, node: Node, now: float) -> list[Member] | None:
        live_until = self.progress.live_until
        return [p.member for k, p in node.peers.items() if live_until(k) >= now and not p.dead]

    def pong_with_members(self, node: Node, pinger_version: int) -> bool:
        return pinger_version != node.members_version

    def is_leader(self, node: Node, now: float) -> bool:
        if not self.confirmed or now >= self.lease_end(node, now):
            return False
        quorum_until = self.quorum_until(node)
        return quorum_until is None or now < quorum_until

    def greets(self, node: Node, peer: Peer, leads: bool, now: float) -> bool:
        """A leader greets every node it does not hear from yet, so that a newcomer learns of
        it before its own settle window ends."""
        return self.progress.live_until(peer.member.node_id) < now

    def leave(self, node: Node, now: float) -> None:
        node._send_to_peers(node._message("resign", now, with_members=True))

    def names_this_leadership(self, node: Node, message: Message) -> bool:
        return message.leader == node.me.node_id and message.term == node.term

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
        if self.names_this_leadership(node, message):
            self.renew(node, sender.node_id, message.lease_mark, now)
            row.acked_version = message.members_version
        row.protocol = message.protocol
        if message.kind == "ack":
            row.multicast = message.multicast
        elif message.kind == "ping":
            row.multicast = False  # its beats are overdue: unicast again
        row.heard_at = now
        row.ack_every = self.ack_every if row.protocol >= 3 else 1
        row.live_until = now + self.live_window(node, row.ack_every)
        if sender.node_id not in self.progress.live_ids:  # a datagram of a live member changes nothing
            self.refresh(node, now)

    @staticmethod
    def live_window(node: Node, ack_every: int) -> float:
        """How long a follower stays a live member after its latest ack or ping: the failure
        window, and the intervals by which thinned acks (every ``ack_every`` beats) come
        later. A follower that died stays in ``members`` that long."""
        return node.timing.failure_window + (ack_every - 1) * node.timing.interval

    def ack_every_now(self, node: Node) -> int:
        """The ``ack_every`` of the next beats: :data:`.timing.ACK_EVERY` once
        :attr:`.Node.thin_from` live followers speak protocol 3, else 1 (every beat, as
        protocol 2). Always 1 in quorum mode (its lease is the echoes of a majority, renewed
        with every beat) and while a follower lags (the lease is then cut back to the echoed
        marks, which must come with every beat, see :meth:`lease_end`)."""
        if node.protocol < 3 or node.quorum is not None or self.progress.lagging:
            return 1
        rows = self.progress.rows
        thinning = sum(1 for k in self.progress.live_ids if k in rows and rows[k].protocol >= 3)
        return ACK_EVERY if thinning >= node.thin_from else 1

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

    def send_beats(self, node: Node, now: float) -> None:
        """Every interval: a heartbeat to every live member, with the member list for those
        that do not hold its current version. The two messages are built once, so the elector
        encodes each once (unless stamps must name each receiver).

        With a multicast address (mDNS mode, protocol 3) and a live follower of protocol 3,
        one beat goes to the multicast address too, and the short beat is not sent one by one
        to followers whose latest ack says they receive it there."""
        ack_every = self.ack_every_now(node)
        if ack_every > self.ack_every:
            self.thin(node, ack_every)
        self.ack_every = ack_every
        self.beats_sent += 1
        rows = self.progress.rows
        multicast = node.multicast is not None and any(
            k in rows and rows[k].protocol >= 3 for k in self.progress.live_ids
        )
        number = self.beats_sent if ack_every > 1 or multicast else 0
        short = node._message("beat", now, beat=number, ack_every=ack_every)
        if multicast:
            node._send_multicast(node._message("beat", now, beat=number, ack_every=ack_every, multicast=True))
        full: Message | None = None
        for node_id in self.progress.live_ids:
            peer = node.peers[node_id]
            row = self.progress.row(node_id)
            if row.acked_version == node.members_version:
                if not (multicast and row.multicast):
                    node._send(short, peer.member)
            else:
                full = full or node._message("beat", now, with_members=True, beat=number, ack_every=ack_every)
                node._send(full, peer.member)

    def thin(self, node: Node, ack_every: int) -> None:
        """The beats start asking followers of protocol 3 to ack every ``ack_every`` beats:
        their next ack may come that much later, so they stay live members that much longer."""
        for row in self.progress.rows.values():
            if row.protocol >= 3 and row.ack_every < ack_every and row.live_until > 0.0:
                row.ack_every = ack_every
                row.live_until = max(row.live_until, row.heard_at + self.live_window(node, ack_every))
