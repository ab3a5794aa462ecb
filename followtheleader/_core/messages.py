"""The heartbeat protocol's messages as data: what a datagram or a TXT record says.

How they are encoded, and how a peer's garbage is refused, is the wire layer's business
(:mod:`followtheleader._wire.protocol.protocol`); the state machines only ever see these values.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Member, State

__all__ = ["ANYONE", "KINDS", "MAX_MEMBERS", "Message", "PeerRecord"]

MAX_MEMBERS = 256
"""A member list longer than this is malformed."""
KINDS = ("ping", "pong", "beat", "ack", "claim", "resign", "leave")
ANYONE = "*"
"""The receiver of a ping sent to an address whose node is not known yet (unicast mode): in
an authenticated group it is answered, never taken as proof that its sender lives."""


@dataclass(frozen=True)
class Message:
    """One heartbeat datagram.

    :ivar kind: one of :data:`KINDS`.
    :ivar group: the group name; datagrams of other groups are ignored.
    :ivar sender: the sender's node id.
    :ivar priority: the sender's priority.
    :ivar role: the sender's state (never STOPPED).
    :ivar term: for a leader its own term, for a follower its leader's, else the greatest seen.
    :ivar leader: the leader the sender follows or is, or None.
    :ivar leader_member: where that leader can be reached, for peers that do not know it yet.
    :ivar members_version: from a leader, the version of its member list; from anyone else,
        the version of the list the sender holds (so that the answer includes the list only
        when that one is out of date).
    :ivar members: the member list, when included.
    :ivar lease_mark: from a leader, its clock when it sent this; in a follower's ack or ping,
        the greatest mark it received from its leader (the echoed lease runs from it). 0 when
        there is none.
    :ivar leader_age: in a follower's pong, seconds since it last heard from its leader.
    :ivar boot: the sender's run (see :attr:`FencingToken.boot`); 0 when not sent.
    """

    kind: str
    group: str
    sender: str
    priority: int
    role: State
    term: int
    leader: str | None = None
    leader_member: Member | None = None
    members_version: int = 0
    members: tuple[Member, ...] | None = None
    lease_mark: float = 0.0
    leader_age: float | None = None
    boot: int = 0


@dataclass(frozen=True)
class PeerRecord:
    """What a node publishes in its DNS-SD TXT record (a hint, never proof of life)."""

    group: str
    member: Member
    role: State
    term: int
    boot: int = 0
