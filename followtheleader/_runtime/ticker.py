"""The ticker thread: the clock of a state machine.

:class:`Ticker` runs on ``followtheleader-ticker-<name>``: it calls ``tick`` at the deadlines
the state machine asks for (pings, failure detection, lease), waiting on an Event in between,
and wakes early when :meth:`Ticker.wake` is called.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Ticker"]

log = logging.getLogger(__name__)


class Ticker:
    """A thread that calls ``tick`` at the deadlines it returns.

    :param name: the thread's name.
    :param tick: runs on the ticker thread; returns the ``time.monotonic()`` at which it wants
        to run again, or None to wait until woken.
    :param on_error: called on the ticker thread when ``tick`` raised; the ticker goes on.
    :param retry_after: seconds to wait after ``tick`` raised.
    """

    def __init__(
        self,
        name: str,
        tick: Callable[[], float | None],
        on_error: Callable[[BaseException, str], None],
        retry_after: float,
    ) -> None:
        self._tick = tick
        self._on_error = on_error
        self._retry_after = retry_after
        self._wake = threading.Event()
        self._stopping = False
        self.planned = 0.0
        """When the thread will next run ``tick`` unless woken."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def wake(self) -> None:
        """Make the thread run ``tick`` now. Any thread but the ticker's own.

        On the ticker thread itself it does nothing: the deadline ``tick`` returns is the one
        that counts, and waking there would make the thread spin, ticking without pause.
        """
        if threading.current_thread() is not self._thread:
            self._wake.set()

    def stop(self) -> None:
        """Ask the thread to finish. Any thread; never joins."""
        self._stopping = True
        self._wake.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to finish; True if it has."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._stopping:  # checked after clear(): a stop() in between is never lost
                return
            self.planned = float("inf")  # a deadline set while tick() runs must wake us
            try:
                deadline = self._tick()
            except Exception as exc:  # never let the thread die silently
                log.exception("error in the heartbeat ticker")
                self._on_error(exc, f"error in the heartbeat ticker: {exc!r}")
                deadline = time.monotonic() + self._retry_after
            if deadline is None:
                self.planned = float("inf")
                self._wake.wait()
            else:
                self.planned = deadline
                self._wake.wait(max(0.0, deadline - time.monotonic()))
