"""What a node knows of the other nodes of its group, whatever its role."""

from __future__ import annotations

from dataclasses import dataclass

from .model import Member

__all__ = ["Departure", "Peer", "npm_member", "silent_since"]


def npm_member(host: str, port: int) -> Member:
    """The member that stands for an npm leader at ``host:port`` (it has no id of its own)."""
    return Member(f"npm-{host.replace('.', '-').replace(':', '_')}-{port}"[:32], 0, host, port, npm=True)


@dataclass(frozen=True)
class Departure:
    """(Protocol 3) A peer said it resigns or stops: what that word rules out, until when."""

    until: float
    """The end of the failure window after the word."""
    term: int
    """The term its word named: a leader's message of that run, in that term or an older one,
    was sent before it (a run that resigned claims again only in a newer term)."""
    boot: int = 0
    """The run that said it (0: not known, as after a DNS-SD goodbye alone): a node restarted
    with the same id is another run, and its word is news."""


@dataclass
class Peer:
    """What this node knows of another node of its group (a leader keeps what it knows of
    its followers in its own table: see :mod:`.progress`)."""

    member: Member
    last_heard: float | None = None
    """When a datagram from it last arrived."""
    pinged_since: float | None = None
    """When the first ping it has not answered yet was sent."""
    last_ping: float | None = None
    """When the last ping to it was sent."""
    dead: bool = False
    """Silent for the failure window, departed, or dropped: no candidate."""
    departed: bool = False
    """It stopped cleanly (leave, resign or DNS-SD goodbye): never probed."""
    dropped: bool = False
    """(As follower) dead only because the leader's member list dropped it: kept to be probed
    if this node leads, and taken as a candidate again from anybody's list."""
    stands_back_until: float = 0.0
    """It resigned: no candidate until then, even if it speaks (it stands back that long)."""
    probed_since: float | None = None
    """When this node started probing this peer, which it has never heard from; or, for a
    peer that the leader's member list dropped, when it was dropped. Its silence counts from
    then, or from its last word if later (see :func:`silent_since`)."""


def silent_since(peer: Peer, now: float) -> float:
    """Since when ``peer`` has been silent: its last word, or when it was first probed or
    dropped from the leader's list, whichever is later."""
    return max((t for t in (peer.last_heard, peer.probed_since) if t is not None), default=now)
