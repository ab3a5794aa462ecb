"""The elector in coordinator mode: leadership held in ZooKeeper or etcd.

:class:`CoordinatedElector` is the :class:`.Elector` with its mDNS and heartbeat layer
swapped for a session with a coordination service; ``Elector(options)`` makes one when the
options name a coordinator. It opens no mDNS socket and no heartbeat port. Its threads (all
daemon threads, all gone after ``stop()``):

* ``followtheleader-session-<name>``: :meth:`CoordinatedElector._run_session`, the only thread
  that talks to the service (through :class:`followtheleader._coordinators.base.Coordinator`): it opens the
  session, renews it, reads the group, claims a vacant leadership, releases it on
  ``resign()``, and ends the session on ``stop()``. It reports to the
  :class:`followtheleader._core.lease.LeaseMachine` through :meth:`.Elector._feed`, as the heartbeat threads do in
  mDNS mode.
* ``followtheleader-ticker-<name>``: ends the local lease at its deadline, even while the
  session thread waits for an answer that does not come.
* ``followtheleader-callbacks-<name>``: the user's callbacks, as in mDNS mode.
* the client library's own threads (kazoo's connection and watcher threads; none for etcd3gw).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ._coordinators.base import Coordinator, CoordinatorError, SessionLost, make_coordinator, parse_coordinator
from ._core.lease import LeaseMachine, View
from ._core.model import Member
from ._elector import Elector
from ._options import Options
from ._runtime.logs import RateLimitedWarning
from ._runtime.ticker import Ticker

__all__ = ["CoordinatedElector"]

log = logging.getLogger(__name__)

T = TypeVar("T")

SETTLE = 0.3
"""Seconds a new session waits before claiming a vacant leadership, so that the members
started at the same time are registered and the best-ranked one gets it."""
GRACE = 0.5
"""Seconds the other members wait for the best-ranked one to claim a vacant leadership."""
RESIGN_HOLD = 1.0
"""Seconds a member that resigned stays out of the running (alone, it then leads again)."""
FIRST_BACKOFF = 0.1
"""Seconds before the first retry after an error; doubled each time up to a fifth of the TTL."""


class CoordinatedElector(Elector):
    """An :class:`.Elector` whose leadership is held in a coordination service."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        assert options.coordinator is not None
        config = parse_coordinator(options.coordinator)
        me = Member(options.node_id, options.priority)
        ttl = options.coordinator_ttl
        self._coordinator: Coordinator = make_coordinator(config, options.name, me, ttl)
        self._service = self._coordinator.service
        self._renew_every = ttl * self._coordinator.renew_fraction
        # The lease ends a fifth of the TTL before the server could expire the session: up to
        # three renewals in a row may fail before it does.
        lease = LeaseMachine(options.name, me, self._service, margin=ttl / 5)
        self._machine = lease  # type: ignore[assignment]  # the same face as Machine (see _lease)
        self._lease = lease
        self._session: threading.Thread | None = None
        self._closing = threading.Event()
        self._session_warn = RateLimitedWarning(log)

    def __repr__(self) -> str:
        state = self.state.value
        return f"<Elector {self.name!r} node_id={self.node_id!r} state={state} term={self.term} ({self._service})>"

    def _open(self) -> None:
        """Start the ticker and the session thread (under the life-cycle lock)."""
        name = self.name
        self._feed(self._lease.start)
        self._ticker = Ticker(f"followtheleader-ticker-{name}", self._tick, self._report_error, 1.0)
        self._ticker.start()
        self._session = threading.Thread(target=self._run_session, name=f"followtheleader-session-{name}", daemon=True)
        self._session.start()
        log.info("elector %r node %s started on %s", name, self.node_id, self._coordinator.config.url)

    def _close_resources(self) -> None:
        """End the session (a leader's node or key goes at once), then the ticker."""
        self._closing.set()
        self._coordinator.wake()
        session = self._session
        if session is not None and session is not threading.current_thread():
            session.join(self._options.coordinator_ttl + 5.0)
            if session.is_alive():
                log.warning("the %s session thread did not finish", self._service)
        super()._close_resources()

    def _disown_after_fork(self) -> None:
        super()._disown_after_fork()
        self._session = None  # the parent's; its client's sockets are the parent's too

    def resign(self) -> bool:
        was_leader = super().resign()
        if was_leader:
            self._coordinator.wake()  # the session thread releases the leadership now
        return was_leader

    # ----------------------------------------------------------------- the session thread

    def _locked(self, read: Callable[[LeaseMachine], T]) -> T:
        with self._lock:
            return read(self._lease)

    def _run_session(self) -> None:
        """Session thread: keep a session, follow the group, claim and release leadership."""
        coordinator, lease = self._coordinator, self._lease
        opened = rejoin = False
        backoff = FIRST_BACKOFF
        settle_until = hold_until = vacant_since = 0.0
        failing = False
        try:
            while not self._closing.is_set():
                try:
                    if not opened or self._locked(lambda m: m.abandon):
                        if opened:
                            coordinator.close()
                            self._feed(lambda now: lease.on_lost(f"a new {self._service} session", now))
                        coordinator.open()
                        opened, rejoin = True, False
                        self._locked(lambda m: m.on_new_session())
                        settle_until = time.monotonic() + SETTLE
                    release = self._locked(lambda m: m.release_term)
                    if release is not None:
                        coordinator.release(release)
                        self._locked(lambda m: m.on_released())
                        rejoin, hold_until = True, time.monotonic() + RESIGN_HOLD
                    if rejoin and time.monotonic() >= hold_until:
                        coordinator.rejoin()
                        rejoin = False
                    sent = time.monotonic()
                    ttl, view = coordinator.renew()
                    self._feed(lambda now, s=sent, t=ttl, v=view: lease.on_view(s, t, v, now))  # type: ignore[misc]
                    if failing:
                        log.warning("%s %s: %s answers again", self.name, self.node_id, self._service)
                        failing, backoff = False, FIRST_BACKOFF
                    now = time.monotonic()
                    if view.leadership is not None:
                        vacant_since = 0.0
                    elif not vacant_since:
                        vacant_since = now
                    wait = self._renew_every
                    if view.leadership is None and not rejoin:
                        claim_at = self._claim_at(view, vacant_since, settle_until)
                        if now >= claim_at:
                            if coordinator.claim() is not None:
                                continue  # renew at once: the view makes this node leader
                        else:
                            wait = min(wait, claim_at - now)
                    if rejoin:
                        wait = min(wait, max(0.0, hold_until - now))
                    coordinator.wait(wait)
                except CoordinatorError as exc:
                    if isinstance(exc, SessionLost):
                        opened = False
                        self._feed(lambda now: lease.on_lost(f"the {self._service} session expired", now))
                    failing = self._report_session_error(exc, failing)
                    self._closing.wait(backoff)
                    backoff = min(backoff * 2, max(FIRST_BACKOFF, self._renew_every))
                except Exception as exc:  # a bug or an unexpected client error: never die silently
                    log.exception("error in the %s session thread", self._service)
                    self._report_error(exc, f"{self._service} session: {exc!r}")
                    opened = False
                    self._closing.wait(backoff)
                    backoff = min(backoff * 2, max(FIRST_BACKOFF, self._renew_every))
        finally:
            coordinator.close()  # a leader's node or key goes with its session

    def _claim_at(self, view: View, vacant_since: float, settle_until: float) -> float:
        """When this node may claim the vacant leadership: the best-ranked member at once
        (after the settle window of a new session), the others after a grace period."""
        best = view.members[0] if view.members else None
        if best is not None and best.node_id == self.node_id:
            return settle_until
        return max(settle_until, vacant_since + GRACE)

    def _report_session_error(self, exc: CoordinatorError, failing: bool) -> bool:
        """An ``error`` event for the first failure of a streak; the rest are logged."""
        text = f"{self._service}: {exc}"
        if not failing:
            log.warning("%s %s: %s (retrying)", self.name, self.node_id, text)
            self._report_error(exc, text)
        else:
            self._session_warn("session", "%s %s: %s (retrying)", self.name, self.node_id, text)
        return True
