"""The LAN machine's message handlers (as etcd-io/raft's ``step``): what each kind of
heartbeat message means, whatever the role; what depends on the role, the role answers
(:class:`.node.Role`)."""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Message
from .model import Member, State
from .node import Node
from .peers import npm_member

__all__ = ["Handlers"]


@dataclass
class Handlers(Node):
    """The handler of each kind of message (``_on_<kind>``), and what they share."""

    def _on_ping(self, message: Message, sender: Member, now: float) -> None:
        if message.role is State.LEADER:
            self.role.heard_leader(self, sender, message.term, now, message.boot)
        else:
            self.role.from_follower(self, message, sender, now)
        self._send(self._pong(message.members_version, now), sender)

    def _on_ack(self, message: Message, sender: Member, now: float) -> None:
        """A follower answers a heartbeat (beat, pong or claim) of the leader it names."""
        if self.role.names_this_leadership(self, message):
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
        elif self.role.names_this_leadership(self, message):
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
        self.role.from_own_leader(self, message, sender, now, measure)

    def _on_resign(self, message: Message, sender: Member, now: float) -> None:
        peer = self.peers[sender.node_id]
        peer.dead = peer.departed = True
        # Its next datagram revives it (its ping may even overtake this resign), but it stands
        # back for a failure window: waiting for its claim would leave the group leaderless.
        # It counts again an interval before that ends here, so that nobody claims in the
        # instant it does (its claim may still be on its way).
        peer.stands_back_until = now + self.timing.failure_window - self.timing.interval
        self._note_departure(sender.node_id, message.term, message.boot, now)
        self.role.peer_changed(self, now)
        if message.members is not None:
            self._merge_candidates(message.members, sender, now)
        self.role.lost_leader(self, sender.node_id, now, "leader resigned")

    def _on_leave(self, message: Message, sender: Member, now: float) -> None:
        peer = self.peers[sender.node_id]
        self.role.follower_left(self, sender.node_id, now)
        if message.leader not in (None, self.me.node_id) and message.leader_member is not None:
            # It moved to another leader: check that one. The lease keeps running, so a
            # leader deserted for a better one steps down even if that check gets lost.
            self._hearsay_of_leader(message.leader_member, message.term, now)
            return
        peer.dead = peer.departed = True  # it stops
        self._note_departure(sender.node_id, message.term, message.boot, now)
        self.role.follower_stopped(sender.node_id)

    # ----------------------------------------------------------------- hearsay and member lists

    def _note_live_leader(self, message: Message, now: float) -> None:
        """A follower says it heard its leader recently: do not claim while that holds.

        Like a pre-vote: a node that lost only its own link to a live leader sees the others
        still hear from it, and keeps out of the way instead of claiming (and flapping). The
        hold lasts until that follower itself gives up on its leader (the failure window after
        it last heard it): a shorter one ends while the leader may still hold its lease, and a
        few lost answers would then let a node cut off from a live leader claim.
        """
        known = self.peers.get(message.leader or "")
        if message.leader_age is None or message.leader is None or message.leader == self.me.node_id:
            return
        if known is not None and (known.departed or now < known.stands_back_until):
            return  # it resigned or stopped: the follower has not heard of it yet
        if self._stale_leadership(message.leader, message.term, now):
            return  # the same, once its peer entry is gone
        remaining = self.timing.failure_window - message.leader_age
        if remaining > 0:
            self.heard_alive = {k: t for k, t in self.heard_alive.items() if t > now}
            until = now + remaining
            self.heard_alive[message.leader] = max(self.heard_alive.get(message.leader, 0.0), until)

    def _hearsay_of_leader(self, leader: Member, term: int, now: float) -> None:
        """A peer names ``leader``: ping it, unless it is known and no better than ours."""
        if leader.node_id == self.me.node_id or not leader.host or self._stale_leadership(leader.node_id, term, now):
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
            if self.state is State.FOLLOWER:
                # Hearsay is no proof of life: a follower counts it as a member (or, later, as a
                # candidate) once it speaks or its leader lists it. A late pong naming a leader
                # that resigned would otherwise bring it back into the member list for good.
                peer.dead = True
        # A peer found dead is pinged too: only its own answer revives it (then it is followed).
        current = self.leader if self.state in (State.FOLLOWER, State.LEADER) else None
        if current is not None and (term, leader.rank) <= (self.term, current.rank):
            return  # no better than the leader this node follows or is
        self._ping_now(peer, now)

    def _merge_candidates(self, members: tuple[Member, ...], sender: Member, now: float) -> None:
        """Add candidates another node knows of (never revives a peer found dead; one only
        dropped from a member list is taken as new)."""
        for member in members:
            if member.node_id in (self.me.node_id, sender.node_id) or not member.host:
                continue
            if self._recently_departed(member.node_id, now):
                continue  # it said it resigns or stops: a list made before its word
            known = self.peers.get(member.node_id)
            if known is None or known.dropped:
                peer = self._new_peer(member)
                if self.state is State.ELECTING:
                    self._ping_now(peer, now)
