"""The public elector: one class for every mode, composing one backend.

:func:`elect` parses the options and :func:`make_backend` builds the one backend they ask for
(:class:`~followtheleader._lan.backend.LanBackend` for mDNS or listed peers,
:class:`~followtheleader._coordinators.backend.CoordinatorBackend` for a coordinator); the
:class:`Elector` composes it through the seam of :mod:`followtheleader._runtime.backend`.
The backend has the mode's state machine, threads and sockets; the elector has what every
mode shares. Its own threads (daemon threads, all gone after :meth:`Elector.stop`):

* ``followtheleader-ticker-<name>``: runs :meth:`Elector._tick` at the machine's deadlines
  (pings, failure detection, leases, claims).
* ``followtheleader-callbacks-<name>``: the user's callbacks, one at a time, in order.

Every input (from the backend's threads, the ticker, or the user's calls) goes through
:meth:`Elector._feed`: the machine decides under ``self._lock`` (and the events it emits are
queued there, so their order is the order of the decisions); what the backend must do (send
datagrams) is done after the lock is released. No user code and no blocking call ever runs
under that lock.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from typing_extensions import Self


from ._coordinators.backend import CoordinatorBackend
from ._coordinators.base import parse_coordinator
from ._core.machine import Action, Notify
from ._core.model import Event, FencingToken, Member, State
from ._lan.backend import LanBackend
from ._lan.settings import LanSettings
from ._options import Options, parse_options
from ._runtime.backend import Backend, Description, Feeder, Step
from ._runtime.callbacks import EVENT_KINDS, Callback, CallbackThread
from ._runtime.leader_work import LeaderWork
from ._runtime.stats import Stats
from ._runtime.ticker import Ticker

__all__ = ["Elector", "elect", "make_backend"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def elect(*args: Any, **kwargs: Any) -> Elector:
    """Create an elector for a group; call :meth:`Elector.start` to join it.

    Accepts the group name, keywords, or one mapping of options (like the npm original)::

        elect("MyService")
        elect("MyService", priority=10, interval=0.1)
        elect("MyService", peers="dns:myservice-peers.default.svc.cluster.local")  # no multicast
        elect({"name": "MyService", "maxFailedResponses": 5})

    :raises TypeError: for a missing name, an unknown option or a value of the wrong type.
    :raises ValueError: for an option value outside what is allowed; the message names it.
    """
    return Elector(parse_options(*args, **kwargs))


def make_backend(options: Options, feeder: Feeder) -> Backend:
    """The one backend the options ask for: the only place, but for option parsing, that
    tells the modes apart. Opens nothing (see :meth:`.Backend.open`).

    :param options: the validated options.
    :param feeder: the elector's way into the backend's state machine.
    """
    if options.coordinator is not None:
        config = parse_coordinator(options.coordinator)
        me = Member(options.node_id, options.priority)
        return CoordinatorBackend(config, options.name, me, options.coordinator_ttl, feeder)
    settings = LanSettings(
        name=options.name,
        node_id=options.node_id,
        priority=options.priority,
        type=options.type,
        port=options.port,
        port_explicit=options.port_explicit,
        host=options.host,
        interval=options.interval,
        max_failed_responses=options.max_failed_responses,
        interfaces=options.interfaces,
        ip_version=options.ip_version,
        npm_compat=options.npm_compat,
        quorum=options.quorum,
        secret=options.secret,
        peers=options.peers,
    )
    return LanBackend(settings, feeder, LanBackend.listed_peers if options.peers is not None else LanBackend.mdns)


class Elector:
    """One node of a leader election group.

    Create it with :func:`elect`. Register callbacks with :meth:`on`, then :meth:`start`.
    All properties and methods are thread-safe and may be used from callbacks.
    """

    def __init__(self, options: Options) -> None:
        self._options = options
        name = options.name
        self._new_locks()
        self._callbacks = CallbackThread(f"followtheleader-callbacks-{name}", self._error_event)
        self._ticker: Ticker | None = None
        self._started = False
        self._stopping = False
        self._stats = Stats()
        self._backend = make_backend(options, Feeder(self._feed, self._locked, self._report_error))
        self._machine = self._backend.machine

    def _new_locks(self) -> None:
        """The locks and events (new ones after a fork: the parent may have held the old)."""
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._state_changed = threading.Condition(self._lock)
        self._lifecycle = threading.Lock()
        self._torn_down = threading.Event()
        self._leadership_end_signals: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        service = self._backend.describe().service
        suffix = f" ({service})" if service is not None else ""
        return f"<Elector {self.name!r} node_id={self.node_id!r} state={self.state.value} term={self.term}{suffix}>"

    # ----------------------------------------------------------------- callbacks

    @overload
    def on(self, kind: str) -> Callable[[Callback], Callback]: ...

    @overload
    def on(self, kind: str, callback: Callback) -> Callback: ...

    def on(self, kind: str, callback: Callback | None = None) -> Callback | Callable[[Callback], Callback]:
        """Call ``callback(event)`` on every event of ``kind``; usable as a decorator.

        ``kind`` is ``"leader"``, ``"follower"``, ``"reelection"`` or ``"error"``. Callbacks
        run on the elector's callback thread, one at a time, in the order of the events.

        :raises ValueError: for an unknown kind.
        :raises TypeError: when ``callback`` is not callable.
        """
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event {kind!r}; events are {', '.join(EVENT_KINDS)}")
        if callback is None:

            def decorator(function: Callback) -> Callback:
                self.on(kind, function)
                return function

            return decorator
        if not callable(callback):
            raise TypeError(f"callback for {kind!r} must be callable, not {type(callback).__name__}")
        self._callbacks.add(kind, callback)
        return callback

    def off(self, kind: str, callback: Callback) -> bool:
        """Stop calling ``callback`` for ``kind``; False if it was not registered."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event {kind!r}; events are {', '.join(EVENT_KINDS)}")
        return self._callbacks.remove(kind, callback)

    # ----------------------------------------------------------------- life cycle

    def start(self) -> Elector:
        """Join the group and return at once; the election goes on in the background.

        :raises RuntimeError: when started before.
        :raises OSError: when the heartbeat port cannot be bound (``HeartbeatPortError``) or
            mDNS cannot be started (``DiscoveryError``); the same error is reported through
            the ``error`` event.
        """
        with self._lifecycle:
            if self._started or self._stopping:
                raise RuntimeError("an elector starts only once; create a new one with elect()")
            self._started = True
            self._callbacks.start()
            self._stats.started(time.monotonic())
            try:
                self._open()
            except Exception as exc:
                self._stopping = True
                self._report_error(exc, str(exc))
                self._close_resources()
                self._callbacks.close()
                self._torn_down.set()
                raise
        _running.add(self)
        return self

    def _open(self) -> None:
        """Open the backend (it starts the machine), then the ticker. Life-cycle lock held."""
        self._backend.open()
        self._ticker = Ticker(
            f"followtheleader-ticker-{self.name}", self._tick, self._report_error, self._backend.tick_period
        )
        self._ticker.start()
        log.info("elector %r node %s started, %s", self.name, self.node_id, self._backend.describe().text)

    def stop(self, timeout: float = 5.0) -> bool:
        """Leave the group; a leader hands over at once (resign message and DNS-SD goodbye).

        Idempotent, callable before :meth:`start` and from a callback. Returns once every
        thread and socket of this elector is closed (from a callback: every one but the
        callback thread itself, which ends when the callback returns).

        :param timeout: how long to wait for the threads, in seconds.
        :returns: True if everything was closed in time.
        """
        with self._lifecycle:
            if not self._started or self._stopping:
                self._stopping = True  # stopping is irreversible, even before start()
                return self._wait_closed(timeout)
            self._stopping = True
            self._feed(self._machine.stop)
            self._close_resources()
            self._callbacks.close()
            self._torn_down.set()
        _running.discard(self)
        log.info("elector %r node %s stopped", self._options.name, self.node_id)
        return self._wait_closed(timeout)

    def _disown_after_fork(self) -> None:
        """In a forked child (fork hook): this running elector is the parent's, and the child
        has none of its threads. It becomes a stopped copy: ``is_leader`` False, ``stop()`` a
        no-op that sends nothing in the parent's name; the child's copies of its sockets are
        dropped (closing them does not close the parent's). Locks the parent's threads may have
        held at the fork are replaced."""
        self._new_locks()
        self._torn_down.set()
        self._stopping = True
        self._backend.disown_after_fork()
        self._ticker = None
        self._callbacks.forget_thread_after_fork()

    def _close_resources(self) -> None:
        """Ask the ticker to finish, close the backend (a coordinated leader releases its
        leadership there: first, so that the successor is not kept waiting for the ticker),
        then wait for the ticker. The machine is already stopped: a last tick decides nothing."""
        if self._ticker is not None:
            self._ticker.stop()
        self._backend.close()
        if self._ticker is not None and not self._ticker.join(5.0):
            log.warning("the ticker thread did not finish")
        with self._state_changed:
            self._state_changed.notify_all()

    def _wait_closed(self, timeout: float | None) -> bool:
        if self._callbacks.is_current_thread():
            return self._torn_down.is_set()
        return self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Block until the elector has stopped (True) or ``timeout`` seconds passed (False).

        :raises RuntimeError: when called from a callback (it would wait for itself).
        """
        if self._callbacks.is_current_thread():
            raise RuntimeError("join() cannot be called from a callback: it would wait for itself")
        if not self._started:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._torn_down.wait(timeout):
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._callbacks.join(remaining)

    def resign(self) -> bool:
        """Hand leadership over to the best other member; False if this node did not lead.

        This node does not stand as a candidate for one failure window, so another member
        takes over; alone, it leads again after that (with a new term).
        """
        with self._lock:
            was_leader = self._machine.state is State.LEADER
        if was_leader:
            self._feed(self._machine.resign)
            self._backend.after_resign()
        return was_leader

    def wait_for_leader(self, timeout: float | None = None) -> Member | None:
        """Block until this node leads or follows a leader; return the leader (None on timeout).

        Call it from a callback only with a short timeout: events wait behind it.
        """
        if not self._started:
            return None
        with self._state_changed:
            self._state_changed.wait_for(
                lambda: self._machine.state in (State.LEADER, State.FOLLOWER) or self._stopping, timeout
            )
            return self._machine.leader if self._machine.state in (State.LEADER, State.FOLLOWER) else None

    def __enter__(self) -> Self:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- properties

    @property
    def name(self) -> str:
        """The group name."""
        return self._options.name

    @property
    def node_id(self) -> str:
        """This node's identity in its group."""
        return self._options.node_id

    @property
    def options(self) -> Options:
        """The validated options."""
        return self._options

    @property
    def port(self) -> int:
        """The heartbeat port (the one actually bound once started); 0 with a coordinator,
        which needs none."""
        return self._backend.port

    def describe(self) -> Description:
        """Where this node meets its group: ``describe().text`` is ``heartbeat port 9001`` on
        the LAN (mDNS or listed peers) or ``coordinator etcd://host:2379/prefix`` (a password
        masked), ``describe().fields`` the same as JSON fields."""
        return self._backend.describe()

    @property
    def state(self) -> State:
        """The current :class:`State`."""
        with self._lock:
            return self._machine.state

    @property
    def is_leader(self) -> bool:
        """True while this node leads and its lease holds.

        The lease runs by the monotonic clock and only follower heartbeats renew it, so a
        leader that was paused or cut off reads False here before any other node can lead.
        """
        with self._lock:
            now = time.monotonic()
            self._signal_leadership_end(now)
            return self._machine.is_leader(now)

    @property
    def term(self) -> int:
        """The term of the leadership this node holds or follows (see :attr:`fencing_token` for
        a value unique across partitions, to fence shared resources with)."""
        with self._lock:
            return self._machine.term

    @property
    def fencing_token(self) -> FencingToken | None:
        """The :class:`FencingToken` of the leadership this node holds or follows (the last one
        while electing or stopped), None before any.

        Unique to one leadership across the whole group, partitions and one-way faults
        included, and ordered: pass its :attr:`~FencingToken.key` to a shared resource, which
        refuses a write whose key is less than the greatest it has seen.
        """
        with self._lock:
            return self._machine.token

    @property
    def leader(self) -> Member | None:
        """The current leader (this node's own :class:`Member` when it leads), or None."""
        with self._lock:
            return self._machine.leader if self._machine.state in (State.LEADER, State.FOLLOWER) else None

    @property
    def members(self) -> tuple[Member, ...]:
        """The group's live members as this node knows them, best-ranked first."""
        with self._lock:
            return self._machine.members(time.monotonic())

    @property
    def counters(self) -> dict[str, int]:
        """How often each kind of trouble (malformed datagram or record, send error) was seen,
        and ``npm-pings-answered``: how many ``PING`` of npm followers this node answered."""
        return self._backend.counters()

    # ----------------------------------------------------------------- inputs (various threads)

    def _feed(self, step: Step) -> float | None:
        """Run one machine step under the lock, then have the backend act outside it.

        Any thread (the backend's, the ticker, the user's). The events are queued under the
        lock; the backend takes the other actions there (:meth:`.Backend.decided`) and carries
        out what it returned under the send lock alone (:meth:`.Backend.carry_out`): the send
        lock is taken before the state lock is released, so datagrams go out in the order of
        the decisions.
        """
        with self._lock:
            now = time.monotonic()
            actions = step(now)
            self._signal_leadership_end(now)
            others: list[Action] = []
            for action in actions:
                if isinstance(action, Notify):
                    self._log_event(action.event)
                    self._stats.event(action.event)
                    self._callbacks.put(action.event)
                    self._state_changed.notify_all()
                else:
                    others.append(action)
            outgoing = self._backend.decided(others) if others else []
            deadline = self._machine.next_deadline()
            self._send_lock.acquire()
        try:
            if outgoing:
                self._backend.carry_out(outgoing)
        finally:
            self._send_lock.release()
        ticker = self._ticker
        if ticker is not None and deadline is not None and deadline < ticker.planned:
            ticker.wake()
        return deadline

    def _arm_leadership_end(self, signal: Callable[[], None]) -> bool:
        """Any thread: have ``signal()`` called once, as soon as this node's current leadership
        ends; False (and ``signal()`` called now) if it does not lead.

        ``signal`` runs under the state lock, on whichever thread first sees the leadership
        over: the ticker's step at the lease's end, an input's step, or a read of
        :attr:`is_leader`. So no thread reads ``is_leader`` False before ``signal`` has run.
        It must only signal (``threading.Event.set``, ``loop.call_soon_threadsafe``), never
        block or call back into the elector. Used by leader-only work (:meth:`run_while_leader`,
        :mod:`followtheleader.aio`).
        """
        with self._lock:
            if self._machine.is_leader(time.monotonic()):
                self._leadership_end_signals.append(signal)
                return True
        signal()
        return False

    def _signal_leadership_end(self, now: float) -> None:
        """State lock held: call the armed signals if this node no longer leads at ``now``."""
        if self._leadership_end_signals and not self._machine.is_leader(now):
            signals, self._leadership_end_signals = self._leadership_end_signals, []
            for signal in signals:
                try:
                    signal()
                except Exception as error:  # noqa: BLE001 - reported, never lost
                    log.error("a leadership-end signal failed: %r", error)

    def _locked(self, read: Callable[[], T]) -> T:
        """Any thread not holding the state lock: ``read()`` under it."""
        with self._lock:
            return read()

    def _tick(self) -> float | None:
        """Ticker thread."""
        return self._feed(self._machine.tick)

    # ----------------------------------------------------------------- errors and logs

    def _error_event(self, error: BaseException, reason: str) -> Event:
        """The ``error`` event. Any thread; takes no lock (it may run under the send lock), so
        state, term and leader are a snapshot that may straddle a change."""
        machine = self._machine
        state, term, leader = machine.state, machine.term, machine.leader
        leader = leader if state in (State.LEADER, State.FOLLOWER) else None
        return Event("error", self.node_id, state, state, term, leader, reason, time.monotonic(), error)

    def _report_error(self, error: BaseException, reason: str) -> None:
        """Any thread: report a problem through the ``error`` event."""
        self._callbacks.put(self._error_event(error, reason))

    def _log_event(self, event: Event) -> None:
        leader = event.leader.node_id if event.leader else None
        log.info(
            "%s node %s: %s (%s), term %d, leader %s",
            self._options.name,
            self.node_id,
            event.kind,
            event.reason,
            event.term,
            leader,
        )

    def stats(self) -> dict[str, Any]:
        """This node's figures as plain data (any thread): ``is_leader``, ``term``, ``members``
        (how many live members it knows), ``counters`` (as :attr:`counters`), ``io`` (datagrams
        sent and received, coordinator errors),
        ``leadership_changes`` (events by kind) and ``wait_for_leader`` (``election`` and
        ``failover`` histograms: ``count``, ``sum`` in seconds, cumulative ``buckets``)."""
        with self._lock:
            now = time.monotonic()
            figures: dict[str, Any] = {
                "is_leader": self._machine.is_leader(now),
                "term": self._machine.term,
                "members": len(self._machine.members(now)),
            }
        figures["counters"] = self._backend.counters()
        figures["io"] = self._backend.io.snapshot()
        figures.update(self._stats.snapshot())
        return figures

    # ----------------------------------------------------------------- leader-only work

    def run_while_leader(
        self, function: Callable[[FencingToken, threading.Event], Any], grace: float = 5.0
    ) -> LeaderWork:
        """Run ``function(token, demoted)`` on a thread of its own at each leadership.

        ``demoted`` (a :class:`threading.Event`) is set as soon as this node stops leading
        (``is_leader`` reads False or a ``reelection``/``follower`` event). A function still
        running ``grace`` seconds later is reported through the ``error`` event; it cannot be
        interrupted. Returns the :class:`~followtheleader._runtime.leader_work.LeaderWork`;
        its ``close()`` ends it. See :doc:`leader-work`.
        """
        work = LeaderWork(self, function, grace, self.name)
        for kind in ("leader", "follower", "reelection"):
            self.on(kind, work.on_event)
        token = self.fencing_token
        if self.is_leader and token is not None:
            work.begin(token)
        return work


_running: weakref.WeakSet[Elector] = weakref.WeakSet()


def _disown_running_electors_after_fork() -> None:
    """In a forked child: the running electors are the parent's; make them stopped copies."""
    for elector in list(_running):
        elector._disown_after_fork()
    _running.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_running_electors_after_fork)


@atexit.register
def _stop_running_electors() -> None:
    """At interpreter exit, stop every elector still running, so leaders hand over."""
    for elector in list(_running):
        try:
            elector.stop(timeout=2.0)
        except Exception:
            log.exception("error while stopping %r at exit", elector)
