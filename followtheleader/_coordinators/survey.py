"""``followtheleader status --coordinator URL``: the groups under a coordinator's prefix.

Runs on the main thread: one client session (kazoo's threads, or none for etcd3gw) reads
every group's ``leader`` node or key and its members, then ends.
"""

from __future__ import annotations

from .._core.model import FencingToken, Member
from .._core.status import GroupView, MemberView, ranked_views
from .base import GroupInfo, make_coordinator, parse_coordinator

__all__ = ["coordinator_groups", "coordinator_status", "group_view"]

_STATUS_MEMBER = Member("followtheleader-status", -(2**31))


def coordinator_groups(url: str, name: str | None = None) -> list[GroupInfo]:
    """The groups (only ``name``, if given) with their leader, term and members.

    :raises ValueError: for a bad URL or a missing client library.
    :raises OSError: (:class:`followtheleader._coordinators.base.CoordinatorError`) when the service does not answer.
    """
    config = parse_coordinator(url)
    coordinator = make_coordinator(config, name or "status", _STATUS_MEMBER, 10.0)
    try:
        coordinator.connect_only()
        groups = coordinator.groups()
    finally:
        coordinator.close()
    return [group for group in groups if name is None or group.name == name]


def coordinator_status(url: str, name: str | None = None) -> list[GroupView]:
    """:func:`coordinator_groups` in the model ``status`` shows for every mode.

    :raises ValueError: for a bad URL or a missing client library.
    :raises OSError: when the service does not answer.
    """
    return [group_view(group) for group in coordinator_groups(url, name)]


def group_view(group: GroupInfo) -> GroupView:
    """One group read from a coordinator, as ``status`` shows it.

    Members are known by id and priority only (no address). Every listed member is live (its
    session holds); the leadership's holder is the leader, and its fencing token is the one
    its members hold (term, priority, node id; boot 0).
    """
    held = group.view.leadership
    term = None if held is None else held.term
    leader_id = None if held is None else held.leader.node_id
    others = "electing" if held is None else "follower"
    members = [
        MemberView(m.node_id, m.priority, None, None, "leader" if m.node_id == leader_id else others, term, True)
        for m in group.view.members
    ]
    if held is None:
        return GroupView(group.name, None, None, False, ranked_views(members))
    leader = next((m for m in members if m.node_id == held.leader.node_id), None)
    if leader is None:  # its member entry not (or no longer) listed
        leader = MemberView(held.leader.node_id, held.leader.priority, None, None, "leader", held.term, True)
        members.append(leader)
    token = FencingToken(held.term, leader.priority, leader.node_id, 0)
    return GroupView(group.name, leader, held.term, True, ranked_views(members), fencing_token=token)
