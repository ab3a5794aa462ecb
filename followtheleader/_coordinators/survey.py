"""``followtheleader status --coordinator URL``: the groups under a coordinator's prefix.

Runs on the main thread: one client session (kazoo's threads, or none for etcd3gw) reads
every group's ``leader`` node or key and its members, then ends.
"""

from __future__ import annotations

from .._core.model import Member
from .base import GroupInfo, make_coordinator, parse_coordinator

__all__ = ["coordinator_groups"]

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
