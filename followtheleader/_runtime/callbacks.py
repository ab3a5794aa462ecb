"""The callback thread: user callbacks run here, in order, one at a time.

Events are queued by whichever thread decided them (under the elector's state lock, so their
order is the order of the decisions) and delivered by one named daemon thread, so a slow or
failing callback never delays a heartbeat. An exception in a callback is logged with its
traceback and reported as an ``error`` event; the thread goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from .._core.model import Event

__all__ = ["EVENT_KINDS", "Callback", "CallbackThread"]

log = logging.getLogger(__name__)

EVENT_KINDS = ("leader", "follower", "reelection", "error")
Callback = Callable[[Event], object]


class CallbackThread:
    """One thread that delivers events to the callbacks registered for their kind.

    :param name: the thread's name.
    :param make_error_event: builds the ``error`` event for an exception raised by a callback.
    """

    def __init__(self, name: str, make_error_event: Callable[[BaseException, str], Event]) -> None:
        self._name = name
        self._make_error_event = make_error_event
        self._callbacks: dict[str, list[Callback]] = {kind: [] for kind in EVENT_KINDS}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()  # None: finish
        self._thread: threading.Thread | None = None

    def add(self, kind: str, callback: Callback) -> None:
        """Register ``callback`` for events of ``kind``. Any thread."""
        with self._lock:
            self._callbacks[kind].append(callback)

    def remove(self, kind: str, callback: Callback) -> bool:
        """Unregister ``callback``; False if it was not registered. Any thread."""
        with self._lock:
            try:
                self._callbacks[kind].remove(callback)
            except ValueError:
                return False
            return True

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def put(self, event: Event) -> None:
        """Queue ``event`` for delivery. Any thread; never blocks."""
        self._queue.put(event)

    def close(self) -> None:
        """Ask the thread to finish once everything queued so far is delivered. Never joins."""
        self._queue.put(None)

    def forget_thread_after_fork(self) -> None:
        """In a forked child: the thread was the parent's; nothing will be delivered here."""
        self._lock = threading.Lock()  # the parent may have held it at the fork
        self._thread = None

    def is_current_thread(self) -> bool:
        """True when called from a callback."""
        return self._thread is not None and threading.current_thread() is self._thread

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to finish; True if it has. Never call from a callback."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        with self._lock:
            callbacks = list(self._callbacks[event.kind])
        for callback in callbacks:
            try:
                callback(event)
            except BaseException as exc:
                log.exception("%s callback %r raised", event.kind, callback)
                if event.kind != "error":
                    self.put(self._make_error_event(exc, f"{event.kind} callback raised {exc!r}"))
