"""What ``followtheleader status`` reports about a group: one model for every mode.

The LAN survey (DNS-SD records and heartbeat probes, or a peer list) and the coordinator
survey (a coordination service's groups) both describe a group as a :class:`GroupView`; the
command line formats it, one table and one JSON form for all. Values a mode cannot know are
None (the address of a member known by its id only, the term of a member of a group without
leader).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .model import FencingToken

__all__ = ["GroupView", "MemberView", "ranked_views"]


@dataclass(frozen=True)
class MemberView:
    """One member of a group as ``status`` sees it.

    :ivar host: its heartbeat address, None when it is known by its id only (a coordinator).
    :ivar port: its heartbeat port, None likewise.
    :ivar role: the role its record says (``leader``, ``follower``, ``electing``), or
        ``follower`` for a member only the leader reported; with a coordinator, ``leader``
        for the one that holds the leadership, else ``follower`` (``electing`` while none does).
    :ivar term: the term its record says (with a coordinator: the leadership's), or None.
    :ivar live: whether the leader (or the coordinator) counts it as live, or None when no
        leader answered.
    """

    node_id: str
    priority: int
    host: str | None
    port: int | None
    role: str
    term: int | None
    live: bool | None = None

    @property
    def address(self) -> str:
        """``id@host:port``, or the id alone when the address is unknown."""
        return self.node_id if self.host is None else f"{self.node_id}@{self.host}:{self.port}"


@dataclass(frozen=True)
class GroupView:
    """One group as ``status`` sees it.

    :ivar leader: the leader: the one that answered the probe (or that the coordinator
        names), or (without the probe) the member whose record says leader with the greatest
        term; None when there is none.
    :ivar term: the leader's term.
    :ivar fencing_token: the leader's fencing token: from its pong when it answered, else
        from its record (its term, priority, node id and boot); with a coordinator, the one
        its members hold (boot 0).
    :ivar confirmed: True when the leader answered the probe as leader, or a coordinator
        holds its leadership.
    :ivar unanswered: the members that were probed but did not answer.
    :ivar authenticated: its records carry a tag (``mac``): an authenticated group.
    """

    name: str
    leader: MemberView | None
    term: int | None
    confirmed: bool
    members: tuple[MemberView, ...]
    unanswered: tuple[str, ...] = ()
    authenticated: bool = False
    fencing_token: FencingToken | None = None


def ranked_views(views: Iterable[MemberView]) -> tuple[MemberView, ...]:
    """The leader first, then by rank (priority, then node id), best first."""
    return tuple(
        sorted(views, key=lambda v: (v.role == "leader" and v.live is not False, v.priority, v.node_id), reverse=True)
    )
