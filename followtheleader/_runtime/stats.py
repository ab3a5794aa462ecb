"""Figures an elector keeps about itself: leadership changes and waits for a leader.

:class:`Stats` is fed by the facade's ``_feed`` (any thread, under the state lock) with each
event it decides, and read by :meth:`.Elector.stats` (any thread). Its own lock guards a few
integers and floats only, so both sides are cheap.
"""

from __future__ import annotations

import threading
from typing import Any

from .._core.model import Event, State

WAIT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds, in seconds, of the wait-for-leader histogram."""

_SETTLED = (State.LEADER, State.FOLLOWER)


class WaitHistogram:
    """Durations with cumulative buckets, a count and a sum (Prometheus' histogram shape)."""

    def __init__(self) -> None:
        self.buckets = [0] * len(WAIT_BUCKETS)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        for index, bound in enumerate(WAIT_BUCKETS):
            if seconds <= bound:
                self.buckets[index] += 1
        self.count += 1
        self.sum += seconds

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": self.sum,
            "buckets": {bound: n for bound, n in zip(WAIT_BUCKETS, self.buckets, strict=True)},
        }


class Stats:
    """Counts of leadership changes by event kind and histograms of the wait for a leader.

    ``election``: from start until this node first leads or follows; ``failover``: from losing
    a leader (leaving leader or follower state) until it leads or follows again, as seen here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changes: dict[str, int] = {}
        self._waits = {"election": WaitHistogram(), "failover": WaitHistogram()}
        self._waiting_since: float | None = None
        self._waiting_kind = "election"
        self._unread_waits: list[tuple[str, float]] | None = None

    def keep_waits(self) -> None:
        """From now on, also keep each wait duration until :meth:`drain_waits` reads it
        (multiprocess metrics observe them one by one). Any thread."""
        with self._lock:
            if self._unread_waits is None:
                self._unread_waits = []

    def drain_waits(self) -> list[tuple[str, float]]:
        """The ``(phase, seconds)`` waits closed since the last call (after :meth:`keep_waits`).
        Any thread."""
        with self._lock:
            waits = self._unread_waits or []
            if self._unread_waits is not None:
                self._unread_waits = []
            return waits

    def started(self, now: float) -> None:
        """The elector starts: the election wait begins."""
        with self._lock:
            self._waiting_since = now
            self._waiting_kind = "election"

    def event(self, event: Event) -> None:
        """Count one decided event and close or open a wait. Any thread."""
        with self._lock:
            self._changes[event.kind] = self._changes.get(event.kind, 0) + 1
            if event.kind == "error":
                return
            settled = event.state in _SETTLED
            was_settled = event.previous_state in _SETTLED
            if settled and self._waiting_since is not None:
                seconds = max(0.0, event.time - self._waiting_since)
                self._waits[self._waiting_kind].observe(seconds)
                if self._unread_waits is not None:
                    self._unread_waits.append((self._waiting_kind, seconds))
                self._waiting_since = None
            elif not settled and was_settled and event.state is not State.STOPPED:
                self._waiting_since = event.time
                self._waiting_kind = "failover"

    def snapshot(self) -> dict[str, Any]:
        """Changes by kind and the two wait histograms, as plain data."""
        with self._lock:
            return {
                "leadership_changes": dict(self._changes),
                "wait_for_leader": {kind: hist.summary() for kind, hist in self._waits.items()},
            }


class IoCounts:
    """Counts a backend's threads keep of their I/O (``heartbeat-sent``, ``heartbeat-received``,
    ``coordinator-errors``). Thread-safe; :meth:`add` is one locked addition."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        """Any thread: count ``n`` more of ``key``."""
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def snapshot(self) -> dict[str, int]:
        """Any thread: the counts so far."""
        with self._lock:
            return dict(self._counts)
