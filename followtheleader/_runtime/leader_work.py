"""Leader-only work on threads: run a function on a thread of its own at each leadership.

The elector's callback thread calls :meth:`LeaderWork.on_event`; the work runs on a thread
named ``followtheleader-work-NAME``. Its stop event (``demoted``) is armed with the elector
(``_arm_leadership_end``): it is set under the elector's state lock by the first thread that
sees the leadership over (the ticker at the lease's end, an input, or a read of ``is_leader``),
so ``is_leader`` never reads False before ``demoted`` is set. It is also set on a
``reelection``/``follower`` event. A watcher thread reads ``is_leader`` every :data:`POLL`
seconds as a backstop (should the ticker be starved) and reports a function still running
``grace`` seconds after demotion.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .._core.model import Event, FencingToken

log = logging.getLogger(__name__)

POLL = 0.05
"""Seconds between two reads of ``is_leader`` by the watcher while the work runs (a backstop:
the elector sets ``demoted`` itself when the leadership ends)."""

WorkFunction = Callable[[FencingToken, threading.Event], Any]


class Host(Protocol):
    """What leader work needs of an elector."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def fencing_token(self) -> FencingToken | None: ...

    def _report_error(self, error: BaseException, reason: str) -> None: ...

    def _arm_leadership_end(self, signal: Callable[[], None]) -> bool: ...


class LeaderWork:
    """Run ``function(token, demoted)`` on its own thread at each leadership of ``host``."""

    def __init__(self, host: Host, function: WorkFunction, grace: float, name: str) -> None:
        if not callable(function):
            raise TypeError(f"leader work must be callable, not {type(function).__name__}")
        if grace < 0:
            raise ValueError(f"grace must be >= 0, not {grace!r}")
        self._host = host
        self._function = function
        self._grace = grace
        self._name = name
        self._lock = threading.Lock()
        self._demoted: threading.Event | None = None
        self._closed = False
        self._threads: list[threading.Thread] = []

    def on_event(self, event: Event) -> None:
        """Callback thread: start the work on ``leader``, signal its end on any other role."""
        if event.kind == "leader":
            self.begin(event.fencing_token)
        elif event.kind in ("follower", "reelection"):
            self._end()

    def begin(self, token: FencingToken | None) -> None:
        """Any thread: start the work for the leadership of ``token`` unless it already runs."""
        with self._lock:
            if self._closed or self._demoted is not None or token is None:
                return
            demoted = self._demoted = threading.Event()
            worker = threading.Thread(
                target=self._run, args=(token, demoted), name=f"followtheleader-work-{self._name}", daemon=True
            )
            watcher = threading.Thread(
                target=self._watch,
                args=(worker, demoted),
                name=f"followtheleader-work-watch-{self._name}",
                daemon=True,
            )
            self._threads = [t for t in self._threads if t.is_alive()] + [worker, watcher]
        self._host._arm_leadership_end(demoted.set)
        worker.start()
        watcher.start()

    def _end(self) -> None:
        with self._lock:
            demoted, self._demoted = self._demoted, None
        if demoted is not None:
            demoted.set()

    def _run(self, token: FencingToken, demoted: threading.Event) -> None:
        """Work thread: the user's function; an exception is reported, never lost."""
        try:
            self._function(token, demoted)
        except BaseException as error:  # noqa: BLE001 - reported through the error event
            self._host._report_error(error, f"leader work {self._name} raised {error!r}")

    def _watch(self, worker: threading.Thread, demoted: threading.Event) -> None:
        """Watcher thread: signal demotion as soon as ``is_leader`` is False, then wait ``grace``."""
        while not demoted.wait(POLL):
            if not worker.is_alive():
                return
            if not self._host.is_leader:
                with self._lock:
                    if self._demoted is demoted:
                        self._demoted = None
                demoted.set()
        worker.join(self._grace)
        if worker.is_alive():
            error = TimeoutError(f"leader work {self._name} still running {self._grace} s after demotion")
            self._host._report_error(error, str(error))
            log.warning("%s", error)

    def close(self, timeout: float | None = None) -> bool:
        """Any thread: signal the work to stop and wait for its threads; False if one still runs."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        self._end()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        return not any(t.is_alive() for t in threads)
