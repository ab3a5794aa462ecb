"""``followtheleader status``: the groups on this segment, their leaders, terms, tokens and members.

Everything runs on the main thread, except zeroconf's own threads: the ServiceBrowser's
handler (on the browser thread) only puts the instance names it sees into a queue.

1. Browse ``_<type>._udp.local.`` for a while and read every node's TXT record. The records
   are a hint: they say what each node was doing when it last published.
2. In each group, the member whose record says ``leader`` with the greatest term is asked
   directly: one heartbeat ``ping`` to its UDP port. A ``pong`` that says ``leader`` confirms
   it is alive and leading, gives its current term, its run (``boot``: with its id and
   priority, the leadership's fencing token) and its own view of the live members;
   then a ``leave`` tells it to forget this probe at once. A pong from a node that follows
   names its leader, which is asked next; when no record says ``leader`` or none of those
   answers, the other members are asked (a few at most). The probe pings as a node in state
   ``electing`` with the lowest priority, so it is never a candidate for anything.

With a peer list (``--peers``, unicast mode) there are no records: each listed address is
pinged as in step 2, a follower's pong names the leader to ask, and the leader's pong gives
the members (:func:`survey_peers`).

Records of an authenticated group (they carry a ``mac``) are listed, but neither their tags
are checked nor is their leader probed (``status`` has no secret; the leader would drop and
log an unauthenticated ping): such a group is shown as not checked.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from zeroconf import (
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from .._core.messages import ANYONE, Message, PeerRecord
from .._core.model import FencingToken, Member, State
from .._core.status import GroupView, MemberView, ranked_views
from .._wire.protocol import MAX_DATAGRAM, decode_message, decode_txt, encode_message

__all__ = [
    "DEFAULT_TIMEOUT",
    "SeenRecord",
    "browse",
    "probe",
    "survey",
    "survey_peers",
]

DEFAULT_TIMEOUT = 1.5
"""Seconds to collect DNS-SD records for."""
PING_TIMEOUT = 1.0
"""Seconds to wait for a node to answer the probe (the ping is sent again every quarter)."""
PROBE_ID = "followtheleader-status"
PROBE_PRIORITY = -(2**31)
_RESOLVE_TIMEOUT_MS = 500.0
_MAX_PINGS_PER_GROUP = 4


@dataclass(frozen=True)
class SeenRecord:
    """A valid TXT record seen while browsing; ``signed`` when it carries a ``mac``."""

    record: PeerRecord
    signed: bool


def browse(service_type: str, timeout: float) -> list[SeenRecord]:
    """Collect the valid TXT records of ``service_type`` seen within ``timeout`` seconds."""
    changes: queue.SimpleQueue[tuple[str, ServiceStateChange]] = queue.SimpleQueue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        """Browser thread: hand the name over, nothing else."""
        changes.put((name, state_change))

    zc = Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
    try:
        browser = ServiceBrowser(zc, service_type, handlers=[on_change], question_type=DNSQuestionType.QM)
        names: set[str] = set()
        deadline = time.monotonic() + timeout
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    name, change = changes.get(timeout=remaining)
                except queue.Empty:
                    break
                if change is ServiceStateChange.Removed:
                    names.discard(name)
                else:
                    names.add(name)
        finally:
            browser.cancel()
        records = []
        for name in sorted(names):
            info = ServiceInfo(service_type, name)
            if not info.load_from_cache(zc) and not info.request(
                zc, _RESOLVE_TIMEOUT_MS, question_type=DNSQuestionType.QM
            ):
                continue
            addresses = info.parsed_addresses(IPVersion.V4Only)
            try:
                properties = info.decoded_properties
            except (UnicodeDecodeError, ValueError):
                continue
            record = decode_txt(properties, addresses[0]) if addresses else None
            if record is not None:
                records.append(SeenRecord(record, "mac" in properties))
        return records
    finally:
        zc.close()


def probe(group: str, member: Member, timeout: float = PING_TIMEOUT) -> Message | None:
    """Ping ``member`` of ``group`` at its heartbeat port; its pong, or None without answer.

    A member whose node id is :data:`ANYONE` (a listed address) may answer with any id.
    """
    family = socket.AF_INET6 if ":" in member.host else socket.AF_INET
    ping = encode_message(Message("ping", group, PROBE_ID, PROBE_PRIORITY, State.ELECTING, 0))
    leave = encode_message(Message("leave", group, PROBE_ID, PROBE_PRIORITY, State.ELECTING, 0))
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        deadline = time.monotonic() + timeout
        next_ping = 0.0
        while (now := time.monotonic()) < deadline:
            if now >= next_ping:
                try:
                    sock.sendto(ping, member.address)
                except OSError:
                    return None
                next_ping = now + timeout / 4
            sock.settimeout(max(0.001, min(next_ping, deadline) - now))
            try:
                data = sock.recv(MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            except OSError:  # e.g. ICMP port unreachable from an earlier ping
                continue
            message = decode_message(data)
            if message is None or message.kind != "pong" or message.group != group:
                continue
            if member.node_id not in (ANYONE, message.sender):
                continue
            with contextlib.suppress(OSError):
                sock.sendto(leave, member.address)  # the leader forgets this probe at once
            return message
    return None


def survey(service_type: str, timeout: float, name: str | None = None, ping: bool = True) -> list[GroupView]:
    """Every group seen on the segment (or only ``name``), best-known leader first checked.

    :param ping: confirm each leader with :func:`probe`; without it, trust the records.
    """
    by_group: dict[str, dict[str, PeerRecord]] = {}
    signed: set[str] = set()
    for seen in browse(service_type, timeout):
        record = seen.record
        if name is not None and record.group != name:
            continue
        if seen.signed:
            signed.add(record.group)
        members = by_group.setdefault(record.group, {})
        known = members.get(record.member.node_id)
        if known is None or known.term <= record.term:
            members[record.member.node_id] = record
    if name is not None:
        by_group.setdefault(name, {})
    return [
        _group_view(group, list(records.values()), ping, group in signed) for group, records in sorted(by_group.items())
    ]


def survey_peers(group: str, addresses: Iterable[tuple[str, int]]) -> GroupView:
    """Group ``group`` as its nodes at ``addresses`` (a peer list, unicast mode) describe it."""
    to_ask = [Member(ANYONE, 0, host, port) for host, port in addresses]
    asked: set[tuple[str, int]] = set()
    unanswered: list[str] = []
    seen: dict[str, MemberView] = {}
    most = len(to_ask) + _MAX_PINGS_PER_GROUP  # every listed address, and a few leaders they name
    while to_ask and len(asked) < most:
        member = to_ask.pop(0)
        if member.address in asked:
            continue
        asked.add(member.address)
        pong = probe(group, member)
        if pong is None:
            unanswered.append(f"{member.host}:{member.port}")
            continue
        answering = Member(pong.sender, pong.priority, member.host, member.port)
        if pong.role is State.LEADER:
            return _confirmed(group, answering, pong, {}, tuple(unanswered))
        seen[pong.sender] = MemberView(pong.sender, pong.priority, member.host, member.port, pong.role.value, pong.term)
        if pong.leader_member is not None and pong.leader_member.host:
            to_ask.insert(0, pong.leader_member)  # it follows a leader: ask that one next
    return GroupView(group, None, None, False, ranked_views(seen.values()), tuple(unanswered))


def _group_view(group: str, records: list[PeerRecord], ping: bool, authenticated: bool) -> GroupView:
    claimants = sorted(
        (r for r in records if r.role is State.LEADER), key=lambda r: (r.term, r.member.rank), reverse=True
    )
    by_id = {r.member.node_id: r for r in records}
    if not ping or authenticated:
        leader = claimants[0] if claimants else None
        views = tuple(_view(r, None) for r in records)
        return GroupView(
            group,
            None if leader is None else _view(leader, None),
            None if leader is None else leader.term,
            False,
            ranked_views(views),
            authenticated=authenticated,
            fencing_token=None if leader is None else _record_token(leader),
        )
    # The records may be stale (even older than a record seen before): when no member that
    # says it leads answers as leader, the others are asked too; a follower names its leader.
    others = sorted((r for r in records if r.role is not State.LEADER), key=lambda r: (r.term, r.member.rank))
    to_ask = [r.member for r in claimants] + [r.member for r in reversed(others)]
    asked: set[str] = set()
    unanswered: list[str] = []
    while to_ask and len(asked) < _MAX_PINGS_PER_GROUP:
        member = to_ask.pop(0)
        if member.node_id in asked:
            continue
        asked.add(member.node_id)
        pong = probe(group, member)
        if pong is None:
            unanswered.append(member.node_id)
        elif pong.role is State.LEADER:
            return _confirmed(group, member, pong, by_id, tuple(unanswered))
        elif pong.leader_member is not None and pong.leader_member.host:
            to_ask.insert(0, pong.leader_member)  # it follows someone else now: ask that one
    views = tuple(_view(r, None) for r in records)
    return GroupView(group, None, None, False, ranked_views(views), tuple(unanswered))


def _confirmed(
    group: str, leader: Member, pong: Message, by_id: dict[str, PeerRecord], unanswered: tuple[str, ...]
) -> GroupView:
    """The group as its leader's pong describes it.

    The members the leader counts as live follow it (they ping it); the others are listed
    with what their records say, as not live.
    """
    live = {m.node_id: m for m in pong.members or () if m.node_id not in (PROBE_ID, leader.node_id) and m.host}
    views = [
        MemberView(node_id, member.priority, member.host, member.port, "follower", pong.term, True)
        for node_id, member in live.items()
    ]
    views.extend(_view(record, False) for node_id, record in by_id.items() if node_id not in live)
    leader_view = MemberView(leader.node_id, pong.priority, leader.host, leader.port, "leader", pong.term, True)
    views = [view for view in views if view.node_id != leader.node_id]
    views.append(leader_view)
    token = FencingToken(pong.term, pong.priority, leader.node_id, pong.boot)
    return GroupView(group, leader_view, pong.term, True, ranked_views(views), unanswered, fencing_token=token)


def _record_token(record: PeerRecord) -> FencingToken:
    """The fencing token of the leadership a leader's record describes."""
    return FencingToken(record.term, record.member.priority, record.member.node_id, record.boot)


def _view(record: PeerRecord, live: bool | None) -> MemberView:
    member = record.member
    return MemberView(member.node_id, member.priority, member.host, member.port, record.role.value, record.term, live)
