"""``followtheleader status``: the groups found, as a table or as JSON, in every mode.

Pure formatting of what the surveys found (:mod:`.._lan.survey` on the LAN, by mDNS or from a
peer list; :mod:`.._coordinators.survey` on a coordinator), all in one model
(:class:`~followtheleader._core.status.GroupView`): one table with the columns GROUP, LEADER,
TERM, TOKEN and MEMBERS, and one JSON form. Runs on the main thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from .._core.status import GroupView, MemberView
from .console import format_token

__all__ = ["format_table", "to_json"]


def format_table(groups: Sequence[GroupView], where: str) -> str:
    """A table: group, leader, term, fencing token (short form), members (``id@host:port role``,
    or ``id role`` for a member known by its id only); ``-`` where a value is unknown.

    :param where: what was surveyed (``_ftl._udp.local.``, ``peers ...``, a coordinator URL).
    """
    if not groups:
        return f"no groups found on {where}"
    rows = [("GROUP", "LEADER", "TERM", "TOKEN", "MEMBERS")]
    for group in groups:
        term = "-" if group.term is None else str(group.term)
        rows.append((group.name, _leader_cell(group), term, format_token(group.fencing_token), _members_cell(group)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ("  ".join([*(f"{row[i]:<{widths[i]}}" for i in range(4)), row[4]]).rstrip() for row in rows)
    return "\n".join(lines)


def _leader_cell(group: GroupView) -> str:
    if group.leader is None:
        if group.unanswered:
            return f"none ({', '.join(group.unanswered)} did not answer)"
        return "none"
    text = group.leader.address
    if group.confirmed:
        return text
    return f"{text} (authenticated group: not checked)" if group.authenticated else f"{text} (not checked)"


def _members_cell(group: GroupView) -> str:
    if not group.members:
        return "-"
    cells = []
    for member in group.members:
        text = f"{member.address} {member.role}"
        if member.live is False:
            text += " (not live)"
        cells.append(text)
    return ", ".join(cells)


def to_json(groups: Sequence[GroupView], key: str, where: str) -> dict[str, Any]:
    """One JSON-ready object for ``--json``: ``{key: where, "groups": [...]}``, where ``key``
    says what was surveyed (``service_type`` on the LAN, ``coordinator`` for a URL)."""
    return {
        key: where,
        "groups": [
            {
                "group": group.name,
                "leader": None if group.leader is None else _member_json(group.leader),
                "term": group.term,
                "fencing_token": None if group.fencing_token is None else group.fencing_token.key,
                "confirmed": group.confirmed,
                "authenticated": group.authenticated,
                "unanswered": list(group.unanswered),
                "members": [_member_json(member) for member in group.members],
            }
            for group in groups
        ],
    }


def _member_json(member: MemberView) -> dict[str, Any]:
    return asdict(member)
