"""The heartbeat protocol's messages as data: what a datagram or a TXT record says.

How they are encoded, and how a peer's garbage is refused, is the wire layer's business
(:mod:`followtheleader._wire.protocol.protocol`); the state machines only ever see these values.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Member, State

__all__ = ["ANYONE", "BASE_PROTOCOL", "KINDS", "MAX_MEMBERS", "PROTOCOL", "Message", "PeerRecord", "ack_slot"]

PROTOCOL = 3
"""The protocol this version speaks: 3 added thinned acks (a leader's beats may ask its
followers to ack only every k-th beat, each in its own slot)."""
BASE_PROTOCOL = 2
"""The oldest protocol it still speaks with (0.2's). Every message stays readable by it: the
additions of protocol 3 are fields that version 2 ignores, and a node says which protocol it
speaks in each message (:attr:`Message.protocol`), so that a leader thins the acks only of
followers that speak 3 (see :mod:`.leading`)."""

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
    :ivar protocol: the protocol the sender speaks (:data:`BASE_PROTOCOL` when not said).
    :ivar beat: in a leader's beat that thins acks, its number (counted per leadership).
    :ivar ack_every: in a leader's beat, ack only every this many beats: a follower that
        speaks protocol 3 acks the beats whose ``(beat + ack_slot(its id)) % ack_every`` is 0
        (1: every beat, as protocol 2 does).
    :ivar multicast: in a leader's beat, sent once to the group's multicast address (protocol
        3 in mDNS mode); in a follower's ack, it received such a beat of its leader within
        the last two intervals, so the leader may stop sending it beats one by one.
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
    protocol: int = BASE_PROTOCOL
    beat: int = 0
    ack_every: int = 1
    multicast: bool = False


@dataclass(frozen=True)
class PeerRecord:
    """What a node publishes in its DNS-SD TXT record (a hint, never proof of life)."""

    group: str
    member: Member
    role: State
    term: int
    boot: int = 0


def ack_slot(node_id: str) -> int:
    """The slot of a follower among the beats that thin acks: it acks the beats whose
    ``(beat + ack_slot) % ack_every`` is 0. Spread by a hash of its id, the same in every
    process, so that the leader reads about ``followers / ack_every`` acks per beat."""
    value = 0x811C9DC5  # 32-bit FNV-1a: pure arithmetic, as the core may do
    for byte in node_id.encode("utf-8"):
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value
