"""The small public data types: states, members and events.

They are plain immutable values, safe to hand from any thread to any other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Event", "Member", "State"]


class State(enum.Enum):
    """What an elector is doing now."""

    STOPPED = "stopped"
    """Not started yet, or stopped."""
    ELECTING = "electing"
    """Looking for a leader, or waiting for the best candidate to claim."""
    FOLLOWER = "follower"
    """Following :attr:`Elector.leader`."""
    LEADER = "leader"
    """This node leads its group."""


@dataclass(frozen=True, order=False)
class Member:
    """One node of a group as another node sees it.

    :ivar node_id: the node's identity, unique in its group.
    :ivar priority: higher is preferred as leader; ties go to the greater node id.
    :ivar host: the address its heartbeats come from (``""`` when not known yet).
    :ivar port: its UDP heartbeat port.
    :ivar npm: True for a leader run by the npm package ``followtheleader`` (a Node.js
        service in the same group); its ``node_id`` is then ``npm-<address>-<port>``.
    """

    node_id: str
    priority: int = 0
    host: str = ""
    port: int = 0
    npm: bool = False

    @property
    def rank(self) -> tuple[int, str]:
        """Sort key of candidates: the greatest rank is the preferred leader."""
        return (self.priority, self.node_id)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of its heartbeat socket."""
        return (self.host, self.port)


@dataclass(frozen=True)
class Event:
    """What a callback receives.

    :ivar kind: ``"leader"``, ``"follower"``, ``"reelection"`` or ``"error"``.
    :ivar node_id: the node this elector runs as.
    :ivar state: the state after the change.
    :ivar previous_state: the state before the change.
    :ivar term: the term of the leadership this node now leads or follows (for ``leader``,
        a fencing token strictly greater than any term its group has seen), else the last one.
    :ivar leader: the leader now followed or held, or None.
    :ivar reason: a few words on why this happened.
    :ivar time: ``time.monotonic()`` when the change was decided.
    :ivar error: the exception, for ``error`` events.
    """

    kind: str
    node_id: str
    state: State
    previous_state: State
    term: int
    leader: Member | None
    reason: str
    time: float
    error: BaseException | None = None
