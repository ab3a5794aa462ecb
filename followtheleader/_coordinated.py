"""The coordinator backend: leadership held in ZooKeeper or etcd.

:class:`CoordinatorBackend` is the :class:`~followtheleader._runtime.backend.Backend` the
facade composes when the options name a coordinator. It opens no mDNS socket and no heartbeat
port. Its thread (a daemon thread, gone after :meth:`CoordinatorBackend.close`):

* ``followtheleader-session-<name>``: :meth:`CoordinatorBackend._run_session`, the only thread
  that talks to the service (through :class:`followtheleader._coordinators.base.Coordinator`): it opens the
  session, renews it, reads the group, claims a vacant leadership, releases it on
  ``resign()``, and ends the session on ``stop()``. It reports to the
  :class:`followtheleader._core.lease.LeaseMachine` through the facade's feed
  (:attr:`CoordinatorBackend._feed`), as the heartbeat threads do on the LAN.
* the client library's own threads (kazoo's connection and watcher threads; none for etcd3gw).

The facade's threads serve it as they serve every backend: the ticker ends the local lease at
its deadline, even while the session thread waits for an answer that does not come; the
callback thread runs the user's callbacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from ._coordinators.base import Coordinator, CoordinatorError, SessionLost, make_coordinator, parse_coordinator
from ._core.lease import LeaseMachine, View
from ._core.machine import Action
from ._core.model import Member, State
from ._options import Options
from ._runtime.backend import Description, Feeder
from ._runtime.logs import RateLimitedWarning

__all__ = ["CoordinatorBackend"]

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


class CoordinatorBackend:
    """Leadership held in a coordination service, for the one :class:`~followtheleader.Elector`.

    :param options: the elector's options (``coordinator`` set).
    :param feeder: the facade's way into the state machine.
    """

    tick_period = 1.0
    """Seconds the ticker waits before it retries a tick that raised."""

    def __init__(self, options: Options, feeder: Feeder) -> None:
        assert options.coordinator is not None
        self.name = options.name
        self.node_id = options.node_id
        self._feeder = feeder
        self._feed = feeder.feed
        self._report_error = feeder.report_error
        self._ttl = options.coordinator_ttl
        config = parse_coordinator(options.coordinator)
        me = Member(options.node_id, options.priority)
        ttl = options.coordinator_ttl
        self._coordinator: Coordinator = make_coordinator(config, options.name, me, ttl)
        self._service = "ZooKeeper" if config.backend == "zookeeper" else "etcd"
        self._renew_every = ttl * self._coordinator.renew_fraction
        # The lease ends a fifth of the TTL before the server could expire the session: up to
        # three renewals in a row may fail before it does.
        self._lease = LeaseMachine(options.name, me, self._service, margin=ttl / 5)
        self._session: threading.Thread | None = None
        self._closing = threading.Event()
        self._session_warn = RateLimitedWarning(log)

    @property
    def machine(self) -> LeaseMachine:
        """The lease machine (the facade calls and reads it under the state lock)."""
        return self._lease

    @property
    def port(self) -> int:
        """No heartbeat port: 0."""
        return 0

    def describe(self) -> Description:
        """``coordinator URL``, the password masked. Any thread."""
        url = self._coordinator.config.url
        return Description(f"coordinator {url}", {"coordinator": url}, self._service)

    def counters(self) -> dict[str, int]:
        """No datagrams, no records: nothing counted."""
        return {}

    # ----------------------------------------------------------------- life cycle (facade's threads)

    def open(self) -> None:
        """Start the machine and the session thread (under the life-cycle lock)."""
        self._feed(self._lease.start)
        self._session = threading.Thread(
            target=self._run_session, name=f"followtheleader-session-{self.name}", daemon=True
        )
        self._session.start()

    def decided(self, actions: Sequence[Action]) -> list[Action]:
        """The lease machine decides nothing but events: nothing to carry out."""
        return []

    def carry_out(self, actions: Sequence[Action]) -> None:
        """Nothing to send: the session thread talks to the service."""

    def after_resign(self) -> None:
        """Wake the session thread: it releases the leadership now."""
        self._coordinator.wake()

    def close(self) -> None:
        """End the session (a leader's node or key goes at once). Idempotent."""
        self._closing.set()
        self._coordinator.wake()
        session = self._session
        if session is not None and session is not threading.current_thread():
            session.join(self._ttl + 5.0)
            if session.is_alive():
                log.warning("the %s session thread did not finish", self._service)

    def disown_after_fork(self) -> None:
        """In a forked child: a stopped machine; the parent's session is forgotten."""
        self._lease.state = State.STOPPED
        self._lease.leader = None
        self._session = None  # the parent's; its client's sockets are the parent's too

    # ----------------------------------------------------------------- the session thread

    def _locked(self, read: Callable[[LeaseMachine], T]) -> T:
        """Any thread: ``read`` the lease machine under the facade's state lock."""
        return self._feeder.locked(lambda: read(self._lease))

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
