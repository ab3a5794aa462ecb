"""The small public data types: states, members and events.

They are plain immutable values, safe to hand from any thread to any other.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["Event", "FencingToken", "Member", "State"]


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


_KEY_NODE_ID_BYTES = 32
"""Node ids are at most 32 ASCII characters; the key pads them to that many bytes."""
_PRIORITY_OFFSET = 2**31
"""Priorities run from -2**31 to 2**31 - 1; the key stores them offset to be unsigned."""


@dataclass(frozen=True, order=True)
class FencingToken:
    """A fencing token: unique to one leadership in the whole group, and ordered.

    Tokens compare as the tuple ``(term, priority, node_id, boot)``: a greater term gives a
    greater token, and for rival leaders of one term (two sides of a partition) the order is
    the one by which the rivals are resolved when they meet, so the leader that remains never
    holds the lesser token. ``node_id`` makes tokens of one term unique across the group (node
    ids are unique); ``boot`` (microseconds of the wall clock when the node's elector was
    created) makes them unique across restarts of one node, which may claim a term it held in
    an earlier run.

    A shared resource stores :attr:`key` and accepts a write only while the writer's key is
    not less than the stored one: one comparison of two strings, byte by byte.

    :ivar term: the leadership's term (see :attr:`Event.term`).
    :ivar priority: the leader's priority.
    :ivar node_id: the leader's node id.
    :ivar boot: the leader's run, in microseconds since the epoch (0 when unknown).
    """

    term: int
    priority: int
    node_id: str
    boot: int = 0

    @property
    def key(self) -> str:
        """The token as 104 lowercase hex digits, which sort as the tokens do.

        Layout: 16 digits of ``term``, 8 of ``priority + 2**31``, 64 of the node id's ASCII
        bytes padded with zero bytes to 32, 16 of ``boot``. Only digits and ``a``-``f``, of one
        width: byte order, SQL's binary collations, ``sort`` and locale-aware comparisons
        (Lua's ``<`` in Redis) all agree on their order.
        """
        node = self.node_id.encode("ascii").ljust(_KEY_NODE_ID_BYTES, b"\0").hex()
        return f"{self.term:016x}{self.priority + _PRIORITY_OFFSET:08x}{node}{self.boot:016x}"

    @classmethod
    def from_key(cls, key: str) -> FencingToken:
        """Parse :attr:`key` back into a token.

        :raises ValueError: when ``key`` is not a key of this layout.
        """
        if not re.fullmatch(r"[0-9a-f]{104}", key):
            raise ValueError(f"not a fencing token key: {key!r}")
        node = bytes.fromhex(key[24:88]).rstrip(b"\0").decode("ascii")
        return cls(int(key[:16], 16), int(key[16:24], 16) - _PRIORITY_OFFSET, node, int(key[88:], 16))

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class Event:
    """What a callback receives.

    :ivar kind: ``"leader"``, ``"follower"``, ``"reelection"`` or ``"error"``.
    :ivar node_id: the node this elector runs as.
    :ivar state: the state after the change.
    :ivar previous_state: the state before the change.
    :ivar term: the term of the leadership this node now leads or follows (for ``leader``,
        strictly greater than any term its group has seen), else the last one. Not unique across
        partitions: fence shared resources with :attr:`fencing_token`.
    :ivar leader: the leader now followed or held, or None.
    :ivar reason: a few words on why this happened.
    :ivar time: ``time.monotonic()`` when the change was decided.
    :ivar error: the exception, for ``error`` events.
    :ivar fencing_token: the :class:`FencingToken` of the leadership this node now leads or
        follows (for ``leader``, unique in the group and greater than this node's earlier
        ones), else of the last one; None before any.
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
    fencing_token: FencingToken | None = None
