"""``followtheleader status``: the groups found, as a table or as JSON.

Pure formatting of what the surveys found (:mod:`.._lan.survey` on the LAN,
:mod:`.._coordinators.survey` on a coordinator); runs on the main thread.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .._coordinators.base import GroupInfo
from .._lan.survey import GroupView, MemberView
from .console import format_token

__all__ = ["coordinator_json", "format_coordinator_table", "format_table", "to_json"]


def format_table(groups: list[GroupView], service_type: str) -> str:
    """A table: group, leader, term, fencing token (short form), members (``id@host:port role``)."""
    if not groups:
        return f"no groups found on {service_type}"
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


def to_json(groups: list[GroupView], service_type: str) -> dict[str, Any]:
    """One JSON-ready object for ``--json``."""
    return {
        "service_type": service_type,
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


def format_coordinator_table(groups: list[GroupInfo], url: str) -> str:
    """A table: group, leader, term, members (``id (priority N)``, best-ranked first)."""
    if not groups:
        return f"no groups found on {url}"
    rows = [("GROUP", "LEADER", "TERM", "MEMBERS")]
    for group in groups:
        held = group.view.leadership
        members = ", ".join(f"{m.node_id} (priority {m.priority})" for m in group.view.members) or "-"
        rows.append((group.name, held.leader.node_id if held else "none", str(held.term) if held else "-", members))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}".rstrip() for row in rows
    )


def coordinator_json(groups: list[GroupInfo], url: str) -> dict[str, Any]:
    """One JSON-ready object for ``--json``."""
    return {
        "coordinator": url,
        "groups": [
            {
                "group": group.name,
                "leader": None if group.view.leadership is None else group.view.leadership.leader.node_id,
                "term": None if group.view.leadership is None else group.view.leadership.term,
                "members": [{"node_id": m.node_id, "priority": m.priority} for m in group.view.members],
            }
            for group in groups
        ],
    }
