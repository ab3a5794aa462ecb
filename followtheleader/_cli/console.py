"""What the commands share: one line per event, and signals turned into queue items.

:class:`Console` writes whole lines under a lock, so lines printed by the elector's callback
thread and by the main thread never mix. :func:`catch_signals` makes SIGINT and SIGTERM put
their number into a queue: a Python signal handler runs on the main thread between two
bytecodes, possibly while that thread holds a lock, so it must do nothing but a reentrant
``queue.SimpleQueue.put``; the main thread then acts on it.
"""

from __future__ import annotations

import datetime
import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TextIO

from .._core.model import Event, FencingToken

__all__ = ["STOP_SIGNALS", "Console", "catch_signals", "format_token"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Console:
    """Writes one line at a time to ``stream``; any thread.

    :param stream: where to write (``sys.stdout`` for ``elect``, ``sys.stderr`` for ``run``).
    :param node_id: this node's id, so that events can say "leader this node".
    :param json_lines: write one JSON object a line instead of readable text.
    :param hold_events: keep event lines back until :meth:`release`, so that a line the
        command prints once the elector has started (``joined group ...``) comes first,
        although the elector may find its leader, and report it, while it starts.
    """

    def __init__(self, stream: TextIO, node_id: str, json_lines: bool, hold_events: bool = False) -> None:
        self._stream = stream
        self._node_id = node_id
        self.json_lines = json_lines
        self._lock = threading.Lock()
        self._held: list[str] | None = [] if hold_events else None

    def line(self, text: str) -> None:
        """Write ``text`` and a newline, and flush."""
        with self._lock:
            self._write(text)

    def event(self, event: Event) -> None:
        """Write one elector event (a callback: runs on the elector's callback thread)."""
        text = format_event(event, self._node_id, self.json_lines)
        with self._lock:
            if self._held is not None:
                self._held.append(text)
            else:
                self._write(text)

    def release(self, first: str | None = None) -> None:
        """Write ``first`` (if given), then the event lines held back; later ones go out at once.

        Any thread; a second call writes only ``first``.
        """
        with self._lock:
            held, self._held = self._held or [], None
            for text in [first, *held] if first is not None else held:
                self._write(text)

    def _write(self, text: str) -> None:
        """Write one line and flush (with the lock held)."""
        self._stream.write(text + "\n")
        self._stream.flush()

    def record(self, kind: str, text: str, **fields: Any) -> None:
        """Write a line of the command's own: readable ``text``, or ``fields`` as JSON."""
        now = _now()
        if self.json_lines:
            self.line(json.dumps({"time": now.isoformat(timespec="milliseconds"), "event": kind, **fields}))
        else:
            self.line(f"{_clock(now)} {kind:<10} {text}")


def format_event(event: Event, node_id: str, json_lines: bool) -> str:
    """One line for one elector event: readable text, or one JSON object."""
    now = _now()
    leader = event.leader
    if json_lines:
        return json.dumps(
            {
                "time": now.isoformat(timespec="milliseconds"),
                "event": event.kind,
                "node_id": event.node_id,
                "state": event.state.value,
                "previous_state": event.previous_state.value,
                "term": event.term,
                "fencing_token": None if event.fencing_token is None else event.fencing_token.key,
                "leader": None
                if leader is None
                else {"node_id": leader.node_id, "priority": leader.priority, "host": leader.host, "port": leader.port},
                "reason": event.reason,
                "error": None if event.error is None else repr(event.error),
            }
        )
    if leader is None:
        who = "no leader"
    elif leader.node_id == node_id:
        who = "leader this node"
    elif leader.host:
        who = f"leader {leader.node_id} at {leader.host}:{leader.port}"
    else:  # known by its id only (a coordinator's leader)
        who = f"leader {leader.node_id}"
    token = format_token(event.fencing_token)
    text = f"{_clock(now)} {event.kind:<10} {event.state.value:<8} term {event.term:<4} token {token} {who}"
    text += f" ({event.reason})"
    if event.error is not None:
        text += f": {event.error!r}"
    return text


def format_token(token: FencingToken | None) -> str:
    """A fencing token, short and readable: ``term/priority/node_id/boot``, ``-`` for None.

    Only the last six hex digits of ``boot`` are shown (enough to tell two runs of a node
    apart by eye); the full token is its :attr:`~FencingToken.key`, which ``--json`` gives.
    """
    if token is None:
        return "-"
    return f"{token.term}/{token.priority}/{token.node_id}/{token.boot & 0xFFFFFF:06x}"


@contextmanager
def catch_signals(put: Callable[[int], None]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM call ``put(signum)`` instead of their usual action.

    ``put`` runs on the main thread inside a signal handler: it must be reentrant, such as
    ``queue.SimpleQueue.put``. The previous handlers come back on exit.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        put(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _now() -> datetime.datetime:
    return datetime.datetime.now().astimezone()


def _clock(now: datetime.datetime) -> str:
    return f"{now:%H:%M:%S.%f}"[:-3]
