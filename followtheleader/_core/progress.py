"""The leader's table of its followers (as etcd-io/raft's ``tracker/progress.go``).

A leader keeps one row per peer: until when it counts as a live member, the lease marks it
echoed, and the member-list version it holds. A new leadership starts a new table; a peer
that is forgotten or replaced loses its row. The table also keeps the set of live members
(the member list the leader hands out) and the followers that do not hear this leader.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from .messages import BASE_PROTOCOL
from .peers import Peer

__all__ = ["Progress", "ProgressTable"]


@dataclass
class Progress:
    """What a leader knows of one follower."""

    live_until: float = 0.0
    """It counts as a live member until then."""
    renewed_at: float | None = None
    """The greatest lease mark it echoed as this node's follower."""
    echoed_at: float | None = None
    """When its latest datagram echoing a lease mark of this node arrived ..."""
    echo_lag: float = 0.0
    """... and how old that mark was then: more than two intervals means it does not hear
    this leader's heartbeats while this leader hears it (a one-way fault)."""
    acked_version: int = -1
    """The member-list version it holds, from its latest ack or ping."""
    protocol: int = BASE_PROTOCOL
    """The protocol it speaks, from its latest ack or ping: only a follower of protocol 3
    thins its acks when the beats ask it to."""
    multicast: bool = False
    """Its latest ack says it receives the multicast beats: no unicast beat goes to it (a
    ping, sent when its beats are overdue, turns this off)."""
    heard_at: float = 0.0
    """When its latest ack or ping arrived."""
    ack_every: int = 1
    """The largest ``ack_every`` of the beats sent to it since then: its next ack may take
    that many intervals, so it stays a live member that much longer (see
    :meth:`.Leading.live_window`)."""


@dataclass
class ProgressTable:
    """A leader's rows, one per peer (a peer without a row has a fresh :class:`Progress`)."""

    rows: dict[str, Progress] = field(default_factory=dict)
    live_ids: frozenset[str] = frozenset()
    """The live members: those in the member list."""
    live_recheck_at: float = float("inf")
    """When the live member with the earliest expiry runs out, unless it pings again."""
    lagging: set[str] = field(default_factory=set)
    """The followers whose latest echo was of a mark over two intervals old."""

    @classmethod
    def start(cls, peers: Mapping[str, Peer], now: float, window: float) -> ProgressTable:
        """The table of a new leadership: every peer not found dead is live for ``window``."""
        table = cls()
        for node_id, peer in peers.items():
            table.row(node_id).live_until = now + window if not peer.dead else 0.0
        return table

    def row(self, node_id: str) -> Progress:
        """The row of ``node_id`` (a fresh one if it has none)."""
        row = self.rows.get(node_id)
        if row is None:
            row = self.rows[node_id] = Progress()
        return row

    def live_until(self, node_id: str) -> float:
        """Until when ``node_id`` counts as a live member."""
        row = self.rows.get(node_id)
        return row.live_until if row is not None else 0.0

    def forget(self, node_id: str) -> None:
        """The peer is gone, or replaced by a new one: its row goes."""
        self.rows.pop(node_id, None)

    def renewals(self) -> Iterator[float]:
        """The lease mark each follower renewed, for those that echoed any."""
        return (r.renewed_at for r in self.rows.values() if r.renewed_at is not None)

    def echo(self, node_id: str, mark: float, now: float, lag_limit: float) -> None:
        """``node_id`` echoed ``mark`` at ``now``: a follower whose mark is over ``lag_limit``
        old does not hear this leader."""
        row = self.row(node_id)
        row.renewed_at = max(row.renewed_at or 0.0, mark)
        row.echoed_at = now
        row.echo_lag = now - row.renewed_at
        if row.echo_lag > lag_limit:
            self.lagging.add(node_id)
        else:
            self.lagging.discard(node_id)

    def deaf_follower(self, now: float, window: float) -> bool:
        """A lagging follower spoke within ``window``: it does not hear this leader."""
        for node_id in list(self.lagging):
            row = self.rows.get(node_id)
            if row is not None and row.echoed_at is not None and now - row.echoed_at < window:
                return True
            self.lagging.discard(node_id)  # gone, or silent since: it no longer counts
        return False

    def refresh(self, peers: Mapping[str, Peer], now: float, force: bool = False) -> bool:
        """Recompute the live members; True when the set changed (or ``force``): the member
        list then gets a new version.

        The time of the first live member's expiry is kept, so that timeouts are checked
        then, not on every datagram (with 30 members, rebuilding the set for each of their
        pings was a sixth of a leader's CPU).
        """
        live = frozenset(k for k, p in peers.items() if self.live_until(k) >= now and not p.dead)
        changed = force or live != self.live_ids
        if changed:
            self.live_ids = live
        self.live_recheck_at = min((self.live_until(k) for k in live), default=float("inf"))
        return changed
