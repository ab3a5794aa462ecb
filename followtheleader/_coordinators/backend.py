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
* the driver's own threads: kazoo's connection and watcher threads; for etcd,
  ``followtheleader-watch-<name>`` (:class:`followtheleader._coordinators.etcd.GroupWatch`),
  which keeps the group's view current from a watch stream and wakes the session thread.

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

from .._core.coordination import Op, SessionPolicy
from .._core.lease import LeaseMachine
from .._core.machine import Action
from .._core.model import Member, State
from .._runtime.backend import Description, Feeder
from .._runtime.logs import RateLimitedWarning
from .._runtime.stats import IoCounts
from .base import Coordinator, CoordinatorConfig, CoordinatorError, SessionLost, make_coordinator

__all__ = ["CoordinatorBackend"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class CoordinatorBackend:
    """Leadership held in a coordination service, for the one :class:`~followtheleader.Elector`.

    :param config: the parsed coordinator URL.
    :param group: the group's name.
    :param me: this node (node id and priority).
    :param ttl: the session's (or lease's) time to live, in seconds.
    :param feeder: the facade's way into the state machine.
    """

    tick_period = 1.0
    """Seconds the ticker waits before it retries a tick that raised."""

    def __init__(self, config: CoordinatorConfig, group: str, me: Member, ttl: float, feeder: Feeder) -> None:
        self.name = group
        self.node_id = me.node_id
        self._feeder = feeder
        self._feed = feeder.feed
        self._report_error = feeder.report_error
        self.io = IoCounts()
        self._ttl = ttl
        self._coordinator: Coordinator = make_coordinator(config, group, me, ttl)
        self._service = self._coordinator.service
        self._renew_every = ttl * self._coordinator.renew_fraction
        # The lease ends a fifth of the TTL before the server could expire the session: up to
        # three renewals in a row may fail before it does.
        self._lease = LeaseMachine(group, me, self._service, margin=ttl / 5)
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
        """Session thread: carry out what the policy (:class:`.SessionPolicy`) decides, one
        step at a time, and report each outcome to it and to the lease machine.

        Nothing ends the thread but closing: an error of the service is the policy's to
        handle (a backoff, a new session); a bug anywhere in a round, even in deciding or in
        handling an error, is logged with its traceback, reported as an ``error`` event, and
        the next round comes after the renewal period."""
        policy = SessionPolicy(self.node_id, self._renew_every)
        try:
            while True:
                try:
                    if not self._round(policy):
                        return
                except Exception as exc:  # a bug: never die silently, never spin
                    log.exception("error in the %s session thread", self._service)
                    self._report_error(exc, f"{self._service} session: {exc!r}")
                    self._closing.wait(self._renew_every)
        finally:
            self._coordinator.close()  # a leader's node or key goes with its session

    def _round(self, policy: SessionPolicy) -> bool:
        """Session thread: one decision of the policy, carried out; False once closing."""
        coordinator, lease = self._coordinator, self._lease
        abandon, release_term = self._locked(lambda m: (m.abandon, m.release_term))
        do = policy.next(time.monotonic(), abandon=abandon, release_term=release_term, closing=self._closing.is_set())
        if do.op is Op.CLOSE:
            return False
        try:
            if do.op is Op.OPEN or do.op is Op.REOPEN:
                if do.op is Op.REOPEN:  # demoted first: the old session's leadership ends with it
                    self._feed(lambda now: lease.on_lost(f"a new {self._service} session", now))
                    coordinator.close()
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
                view = coordinator.watched_view() or coordinator.observe()
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
            self.io.add("coordinator-errors")
            lost = isinstance(exc, SessionLost)
            if lost:
                self._feed(lambda now: lease.on_lost(f"the {self._service} session expired", now))
            self._report_session_error(exc, first=policy.failed(lost=lost))
        except Exception as exc:  # an unexpected client error: a new session, after a backoff
            self.io.add("coordinator-errors")
            log.exception("error in the %s session thread", self._service)
            self._report_error(exc, f"{self._service} session: {exc!r}")
            policy.failed(expected=False)
        return True

    def _report_session_error(self, exc: CoordinatorError, first: bool) -> None:
        """An ``error`` event for the first failure of a streak; the rest are logged."""
        text = f"{self._service}: {exc}"
        if first:
            log.warning("%s %s: %s (retrying)", self.name, self.node_id, text)
            self._report_error(exc, text)
        else:
            self._session_warn("session", "%s %s: %s (retrying)", self.name, self.node_id, text)
