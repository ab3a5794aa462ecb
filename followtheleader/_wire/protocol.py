"""What goes on the wire: heartbeat datagrams and DNS-SD TXT records.

Parsers never raise on what a peer sends: anything malformed gives ``None``, and the caller
counts and drops it. They are pure functions, with no sockets and no clock.

Heartbeat datagrams are compact JSON objects (protocol version 2)::

    {"v": 2, "k": "ack", "g": "group", "id": "node", "p": 0, "r": "follower",
     "t": 4, "l": "leader-id", "mv": 7, "e": 5021.25, "b": 1764680000123456}

``k`` is one of ``beat`` (a leader's heartbeat to each follower, every interval), ``ack``
(a follower's answer to a beat, pong or claim of its leader, echoing its lease mark ``e``),
``ping`` (a candidate to a peer, a leader probing a lost peer, a follower whose beat is
overdue), ``pong`` (the answer), ``claim`` (a new leader to every peer it knows), ``resign``
(a leader that stops or resigns) and ``leave`` (a follower that stops, or that moved to
another leader). A beat or pong carries the member list ``m`` only when the receiver's member
version ``mv`` is not the current one, so that steady-state heartbeats stay small whatever
the size of the group. ``b`` is the sender's run (:attr:`FencingToken.boot`).

Version 2 replaced version 1's follower pings by leader beats and added ``b``; the two
versions ignore each other's datagrams and records.

Protocol 3 (thinned acks, multicast beats) keeps the datagrams of version 2 (``"v": 2``,
which 0.2 nodes read) and adds fields that version 2 ignores: ``pv``, the protocol the sender
speaks (absent: 2); in a leader's beat ``n`` (the beat's number, when it thins acks or sends
multicast beats), ``ak`` (ack only every ``ak``-th beat) and ``mc`` (this copy went to the
group's multicast address, see :func:`multicast_group`); ``mc`` in an ack says that its
sender receives those. That is the negotiation: a leader thins the acks only of followers
whose messages say ``pv`` 3, stops unicast beats only to followers whose acks say ``mc``,
and a follower thins its acks only when its leader's beat asks it to; with a 0.2 node on
either side, everything runs as in version 2.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from .._core.messages import ANYONE, BASE_PROTOCOL, KINDS, MAX_MEMBERS, Message, PeerRecord
from .._core.model import Member, State

__all__ = [
    "MAX_DATAGRAM",
    "NPM_PING",
    "NPM_PONG",
    "PROTOCOL_VERSION",
    "Stamp",
    "decode_datagram",
    "decode_message",
    "decode_txt",
    "encode_message",
    "encode_txt",
    "multicast_group",
]

PROTOCOL_VERSION = 2
"""The ``v`` of every datagram and TXT record: the wire format, which 0.2 nodes read."""
MULTICAST_PORT = 9002
"""The UDP port of multicast beats (see :func:`multicast_group`)."""
_MAX_PROTOCOL = 99
_MAX_ACK_EVERY = 64
MAX_DATAGRAM = 16384
"""Larger datagrams are neither sent nor read."""
NPM_PING = b"PING"
NPM_PONG = b"PONG"
_MAX_TERM = 2**53
_MAX_BOOT = 10**16 - 1
"""Microseconds of the wall clock fit 16 digits until the year 2286 (the TXT parser's limit)."""
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_ROLE_BY_NAME = {"leader": State.LEADER, "follower": State.FOLLOWER, "electing": State.ELECTING}
_ROLE_NAME = {state: name for name, state in _ROLE_BY_NAME.items()}


@dataclass(frozen=True)
class Stamp:
    """Who sent an authenticated datagram, in which order and when (see ``_auth``).

    :ivar boot: random id of the sender's run (a restarted node has a new one).
    :ivar counter: strictly increasing within one run.
    :ivar time: the sender's wall clock, in seconds.
    :ivar to: the node id of the receiver it was sent to (a copy sent elsewhere is refused), or
        :data:`ANYONE` for a ping to an address whose node is not known yet.
    """

    boot: str
    counter: int
    time: float
    to: str


def encode_message(message: Message, stamp: Stamp | None = None) -> bytes:
    """Serialise a message to one datagram (with its stamp, in an authenticated group)."""
    body: dict[str, object] = {
        "v": PROTOCOL_VERSION,
        "k": message.kind,
        "g": message.group,
        "id": message.sender,
        "p": message.priority,
        "r": _ROLE_NAME[message.role],
        "t": message.term,
        "mv": message.members_version,
    }
    if message.leader is not None:
        body["l"] = message.leader
    if message.leader_member is not None:
        body["lm"] = _member_to_list(message.leader_member)
    if message.members is not None:
        body["m"] = [_member_to_list(m) for m in message.members]
    if message.lease_mark:
        body["e"] = message.lease_mark
    if message.leader_age is not None:
        body["la"] = round(message.leader_age, 4)
    if message.boot:
        body["b"] = message.boot
    if message.protocol > BASE_PROTOCOL:  # absent in 0.2's messages: their bytes stay the same
        body["pv"] = message.protocol
    if message.beat:
        body["n"] = message.beat
    if message.ack_every > 1:
        body["ak"] = message.ack_every
    if message.multicast:
        body["mc"] = 1
    if stamp is not None:
        body["a"] = [stamp.boot, stamp.counter, stamp.time, stamp.to]
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_message(data: bytes) -> Message | None:
    """Parse one datagram; None if it is not a well-formed message of our protocol version."""
    decoded = decode_datagram(data)
    return None if decoded is None else decoded[0]


def decode_datagram(data: bytes) -> tuple[Message, Stamp | None] | None:
    """Parse one datagram and its stamp, if any; None if it is not well-formed."""
    if not data or len(data) > MAX_DATAGRAM or data[:1] != b"{":
        return None
    try:
        body = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(body, dict) or body.get("v") != PROTOCOL_VERSION:
        return None
    kind, group, sender = body.get("k"), body.get("g"), body.get("id")
    priority, role, term, version = body.get("p"), body.get("r"), body.get("t"), body.get("mv")
    leader = body.get("l")
    if kind not in KINDS or not _is_group(group) or not _is_node_id(sender):
        return None
    if not _is_int(priority, -(2**31), 2**31 - 1) or not _is_int(term, 0, _MAX_TERM):
        return None
    if not _is_int(version, 0, _MAX_TERM) or not isinstance(role, str) or role not in _ROLE_BY_NAME:
        return None
    if leader is not None and not _is_node_id(leader):
        return None
    leader_member = None
    if "lm" in body:
        leader_member = _member_from_list(body["lm"])
        if leader_member is None:
            return None
    members = None
    if "m" in body:
        raw = body["m"]
        if not isinstance(raw, list) or len(raw) > MAX_MEMBERS:
            return None
        parsed = [_member_from_list(item) for item in raw]
        if any(m is None for m in parsed):
            return None
        members = tuple(m for m in parsed if m is not None)
    assert isinstance(group, str) and isinstance(sender, str)  # checked above; for the type checker
    assert isinstance(priority, int) and isinstance(term, int) and isinstance(version, int)
    mark = body.get("e", 0.0)
    if isinstance(mark, bool) or not isinstance(mark, (int, float)) or not 0 <= mark < 1e12:
        return None
    age = body.get("la")
    if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age < 1e9):
        return None
    boot = body.get("b", 0)
    if not _is_int(boot, 0, _MAX_BOOT):
        return None
    protocol = body.get("pv", BASE_PROTOCOL)
    if not _is_int(protocol, BASE_PROTOCOL, _MAX_PROTOCOL):
        return None
    beat, ack_every = body.get("n", 0), body.get("ak", 1)
    if not _is_int(beat, 0, _MAX_TERM) or not _is_int(ack_every, 1, _MAX_ACK_EVERY):
        return None
    multicast = body.get("mc", 0)
    if multicast not in (0, 1) or isinstance(multicast, bool):
        return None
    stamp = None
    if "a" in body:
        stamp = _stamp_from_list(body["a"])
        if stamp is None:
            return None
    message = Message(
        kind=kind,
        group=group,
        sender=sender,
        priority=priority,
        role=_ROLE_BY_NAME[role],
        term=term,
        leader=leader,
        leader_member=leader_member,
        members_version=version,
        members=members,
        lease_mark=float(mark),
        leader_age=None if age is None else float(age),
        boot=boot,
        protocol=protocol,
        beat=beat,
        ack_every=ack_every,
        multicast=multicast == 1,
    )
    return message, stamp


def multicast_group(group: str) -> tuple[str, int]:
    """The multicast address and port of a group's beats (protocol 3, mDNS mode): one of the
    65,536 addresses of 239.255.0.0/16 (administratively scoped: routers do not forward it),
    chosen by a hash of the group name, so that a host's kernel drops most other groups'
    beats; the port is :data:`MULTICAST_PORT`."""
    digest = zlib.crc32(group.encode("utf-8"))
    return f"239.255.{(digest >> 8) & 255}.{digest & 255}", MULTICAST_PORT


def encode_txt(group: str, member: Member, role: State, term: int, boot: int = 0) -> dict[str, str]:
    """The TXT properties a node publishes about itself."""
    return {
        "b": str(boot),
        "v": str(PROTOCOL_VERSION),
        "g": group,
        "id": member.node_id,
        "p": str(member.priority),
        "r": _ROLE_NAME.get(role, "electing"),
        "t": str(term),
        "hp": str(member.port),
    }


def decode_txt(properties: Mapping[str, str | None], host: str) -> PeerRecord | None:
    """Parse a peer's TXT properties; None if they are not a valid record of our protocol.

    :param host: the address to reach the peer at, from its A or AAAA record.
    """
    try:
        if properties.get("v") != str(PROTOCOL_VERSION):
            return None
        group, node_id, role = properties.get("g"), properties.get("id"), properties.get("r")
        if not _is_group(group) or not _is_node_id(node_id) or role not in _ROLE_BY_NAME:
            return None
        priority = _parse_int(properties.get("p"), -(2**31), 2**31 - 1)
        term = _parse_int(properties.get("t"), 0, _MAX_TERM)
        port = _parse_int(properties.get("hp"), 1, 65535)
        boot = _parse_int(properties.get("b"), 0, _MAX_BOOT)
    except (AttributeError, TypeError):
        return None
    if priority is None or term is None or port is None or boot is None or not _is_host(host):
        return None
    assert isinstance(group, str) and isinstance(node_id, str) and isinstance(role, str)
    return PeerRecord(group, Member(node_id, priority, host, port), _ROLE_BY_NAME[role], term, boot)


def _stamp_from_list(item: object) -> Stamp | None:
    if not isinstance(item, list) or len(item) != 4:
        return None
    boot, counter, sent_at, to = item
    if to != ANYONE and not _is_node_id(to):
        return None
    if not isinstance(boot, str) or not re.fullmatch(r"[0-9a-f]{16}", boot) or not _is_int(counter, 1, _MAX_TERM):
        return None
    if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)) or not 0 <= sent_at < 1e11:
        return None
    return Stamp(boot, counter, float(sent_at), to)


def _member_to_list(member: Member) -> list[object]:
    return [member.node_id, member.priority, member.host, member.port]


def _member_from_list(item: object) -> Member | None:
    if not isinstance(item, list) or len(item) != 4:
        return None
    node_id, priority, host, port = item
    if not _is_node_id(node_id) or not _is_int(priority, -(2**31), 2**31 - 1):
        return None
    if not isinstance(host, str) or (host and not _is_host(host)) or not _is_int(port, 0, 65535):
        return None
    return Member(node_id, priority, host, port)


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _parse_int(text: str | None, low: int, high: int) -> int | None:
    if text is None or not re.fullmatch(r"-?[0-9]{1,16}", text):
        return None
    value = int(text)
    return value if low <= value <= high else None


def _is_node_id(value: object) -> bool:
    return isinstance(value, str) and _NODE_ID.fullmatch(value) is not None


def _is_group(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value.encode("utf-8", "replace")) <= 63


@functools.lru_cache(maxsize=1024)  # every ping names its leader's address: parse it once
def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value.split("%")[0])
    except ValueError:
        return False
    return True
