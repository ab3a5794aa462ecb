"""``followtheleader status --coordinator URL``: the groups under a coordinator's prefix.

Runs on the main thread: one client session (kazoo's threads, or none for etcd3gw) reads
every group's ``leader`` node or key and its members, then ends.
"""

from __future__ import annotations

from typing import Any

from ._coordinator import GroupInfo, make_coordinator, parse_coordinator
from ._model import Member

__all__ = ["coordinator_groups", "coordinator_json", "format_coordinator_table"]

_STATUS_MEMBER = Member("followtheleader-status", -(2**31))


def coordinator_groups(url: str, name: str | None = None) -> list[GroupInfo]:
    """The groups (only ``name``, if given) with their leader, term and members.

    :raises ValueError: for a bad URL or a missing client library.
    :raises OSError: (:class:`._coordinator.CoordinatorError`) when the service does not answer.
    """
    config = parse_coordinator(url)
    coordinator = make_coordinator(config, name or "status", _STATUS_MEMBER, 10.0)
    try:
        coordinator.connect_only()
        groups = coordinator.groups()
    finally:
        coordinator.close()
    return [group for group in groups if name is None or group.name == name]


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
