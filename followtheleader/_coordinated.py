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
from ._core.coordination import Op, SessionPolicy
from ._core.lease import LeaseMachine
from ._core.model import Member
from ._elector import Elector
from ._options import Options
from ._runtime.logs import RateLimitedWarning
from ._runtime.ticker import Ticker

__all__ = ["CoordinatedElector"]

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        """Session thread: carry out what the policy (:class:`.SessionPolicy`) decides, one
        step at a time, and report each outcome to it and to the lease machine."""
        coordinator, lease = self._coordinator, self._lease
        policy = SessionPolicy(self.node_id, self._renew_every)
        try:
            while True:
                abandon, release_term = self._locked(lambda m: (m.abandon, m.release_term))
                do = policy.next(
                    time.monotonic(), abandon=abandon, release_term=release_term, closing=self._closing.is_set()
                )
                if do.op is Op.CLOSE:
                    return
                try:
                    if do.op is Op.OPEN or do.op is Op.REOPEN:
                        if do.op is Op.REOPEN:
                            coordinator.close()
                            self._feed(lambda now: lease.on_lost(f"a new {self._service} session", now))
                        coordinator.open()
                        coordinator.join()
                        policy.opened_session(time.monotonic())
                        self._locked(lambda m: m.on_new_session())
                    elif do.op is Op.RELEASE:
                        assert do.term is not None
                        coordinator.release(do.term)
                        self._locked(lambda m: m.on_released())
                        policy.released(time.monotonic())
                    elif do.op is Op.REJOIN:
                        coordinator.rejoin()
                        policy.rejoined()
                    elif do.op is Op.RENEW:
                        sent = time.monotonic()
                        ttl = coordinator.keep_alive()
                        view = coordinator.observe()
                        self._feed(lambda now, s=sent, t=ttl, v=view: lease.on_view(s, t, v, now))  # type: ignore[misc]
                        if policy.viewed(time.monotonic(), view):
                            log.warning("%s %s: %s answers again", self.name, self.node_id, self._service)
                    elif do.op is Op.CLAIM:
                        policy.claimed(coordinator.claim() is not None)
                    elif do.op is Op.WAIT:
                        coordinator.wait(do.seconds)
                        policy.waited()
                    else:  # Op.BACKOFF, after an error
                        self._closing.wait(do.seconds)
                        policy.waited()
                except CoordinatorError as exc:
                    lost = isinstance(exc, SessionLost)
                    if lost:
                        self._feed(lambda now: lease.on_lost(f"the {self._service} session expired", now))
                    self._report_session_error(exc, first=policy.failed(lost=lost))
                except Exception as exc:  # a bug or an unexpected client error: never die silently
                    log.exception("error in the %s session thread", self._service)
                    self._report_error(exc, f"{self._service} session: {exc!r}")
                    policy.failed(expected=False)
        finally:
            coordinator.close()  # a leader's node or key goes with its session

    def _report_session_error(self, exc: CoordinatorError, first: bool) -> None:
        """An ``error`` event for the first failure of a streak; the rest are logged."""
        text = f"{self._service}: {exc}"
        if first:
            log.warning("%s %s: %s (retrying)", self.name, self.node_id, text)
            self._report_error(exc, text)
        else:
            self._session_warn("session", "%s %s: %s (retrying)", self.name, self.node_id, text)
