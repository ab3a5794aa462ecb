"""Whom a candidate may claim for, and whom a candidate or leader probes.

The candidates: the best-ranked live one (an npm leader first), and the holds that keep
claims back while a peer still hears its leader. The probes: lost peers and listed addresses,
pinged on the probing schedule so that partitions heal and newcomers are found.
"""

from __future__ import annotations

from collections.abc import Callable

from .model import Member
from .node import Node
from .peers import Peer

__all__ = ["best_candidate", "live_leader_hold", "ping_listed", "probe_lost_peers"]


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


def live_leader_hold(node: Node, now: float) -> float:
    """Until when claims wait for a leader that some peer still hears (0.0: none).

    A hold is for one leader: heard while this node still followed that same leader, it
    must not outlast the leader's own resign or goodbye (a claim would then wait a
    failure window for nothing: seen in handovers of 30 nodes)."""
    hold = 0.0
    for leader, until in node.heard_alive.items():
        known = node.peers.get(leader)
        if until > now and not (known is not None and (known.departed or now < known.stands_back_until)):
            hold = max(hold, until)
    return hold


def best_candidate(node: Node, now: float) -> Member | None:
    """The best-ranked live candidate, this node included unless it stands back."""
    npm = node.npm.peer
    if npm is not None and not npm.dead:
        return npm.member  # it never steps down: nobody of ours claims while it may live
    candidates = [p.member for p in node.peers.values() if not p.dead and now >= p.stands_back_until]
    if now >= node.resigned_until:
        candidates.append(node.me)
    return max(candidates, key=lambda m: m.rank, default=None)
