"""Quorum arithmetic, as pure functions (as etcd-io/raft's ``quorum/majority.go``).

``size`` is the expected group size of quorum mode, None when quorum mode is off.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["followers_needed", "has_majority", "majority_mark"]


def followers_needed(size: int | None) -> int:
    """Followers a leader needs besides itself to hold a strict majority (0: none, or no quorum)."""
    return 0 if size is None else size // 2


def has_majority(visible: int, size: int | None) -> bool:
    """``visible`` nodes (this one included) are a strict majority of ``size``; always without quorum."""
    return size is None or visible >= size // 2 + 1


def majority_mark(marks: Iterable[float], needed: int) -> float | None:
    """The greatest time that at least ``needed`` followers' marks reach (each follower's
    latest echoed mark): the ``needed``-th greatest; None when fewer followers echoed any.

    Like raft's ``CommittedIndex``: the leader's own mark counts without an echo, so
    ``needed`` is the majority less one.
    """
    ordered = sorted(marks, reverse=True)
    return ordered[needed - 1] if len(ordered) >= needed else None
