"""The public elector: wires the state machine to its threads and to the user's callbacks.

Threads of one started elector (all daemon threads, all gone after :meth:`Elector.stop`):

* ``followtheleader-heartbeat-<name>``: ``HeartbeatServer.serve_forever``; the datagrams read
  in one wake-up go to :meth:`Elector._on_datagrams`, which decides on them in one step.
* ``followtheleader-ticker-<name>``: runs :meth:`Elector._tick` at the machine's deadlines
  (pings, failure detection, lease, claims).
* zeroconf's ServiceBrowser thread: runs :meth:`Elector._on_record`,
  :meth:`Elector._on_goodbye` and their npm counterparts; zeroconf's own event-loop thread
  publishes the records. In unicast mode (the ``peers`` option) there is no zeroconf at all:
  ``followtheleader-peers-<name>`` (only when the list holds names) runs
  :meth:`Elector._on_addresses`.
* ``followtheleader-callbacks-<name>``: the user's callbacks, one at a time, in order.

Every input goes through :meth:`Elector._feed`: the machine decides under ``self._lock`` (and
the events it emits are queued there, so their order is the order of the decisions); the
datagrams are sent after the lock is released. No user code and no blocking call ever runs
under that lock.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from typing_extensions import Self


from ._core.machine import Action, Machine, Notify, NpmPing, Publish, Send, Timing
from ._core.messages import ANYONE, Message, PeerRecord
from ._core.model import Event, FencingToken, Member, State
from ._lan.discovery import Discovery
from ._lan.heartbeat import HeartbeatServer, bind_heartbeat_server
from ._lan.peers import PeerDirectory, PeerSource, is_local_address
from ._options import Options, parse_options
from ._runtime.callbacks import EVENT_KINDS, Callback, CallbackThread
from ._runtime.logs import RateLimitedWarning
from ._runtime.ticker import Ticker
from ._wire.auth import MAX_CLOCK_SKEW, Authenticator
from ._wire.protocol import NPM_PING, NPM_PONG, decode_datagram, encode_message

__all__ = ["Elector", "elect"]

log = logging.getLogger(__name__)

_SERVE_POLL_INTERVAL = 0.1
"""How often the heartbeat server loop checks for shutdown (bounds how long stop() takes)."""


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


class Elector:
    """One node of a leader election group.

    Create it with :func:`elect`. Register callbacks with :meth:`on`, then :meth:`start`.
    All properties and methods are thread-safe and may be used from callbacks.
    """

    def __new__(cls, options: Options) -> Elector:  # noqa: PYI034 - may return the subclass
        """Make the coordinated elector (:mod:`._coordinated`) when the options name a coordinator."""
        if cls is Elector and options.coordinator is not None:
            from ._coordinated import CoordinatedElector

            cls = CoordinatedElector
        return super().__new__(cls)

    def __init__(self, options: Options) -> None:
        self._options = options
        name = options.name
        self._new_locks()
        self._warn = RateLimitedWarning(log)
        self._auth = Authenticator(options.secret, name) if options.secret is not None else None
        timing = Timing(options.interval, options.max_failed_responses)
        self._machine = Machine(
            name,
            Member(options.node_id, options.priority, "", options.port),
            timing,
            quorum=options.quorum,
            npm_compat=options.npm_compat,
            boot=time.time_ns() // 1000,
        )
        self._callbacks = CallbackThread(f"followtheleader-callbacks-{name}", self._error_event)
        self._server: HeartbeatServer | None = None
        self._server_thread: threading.Thread | None = None
        self._ticker: Ticker | None = None
        self._discovery: PeerSource | None = None
        self._started = False
        self._stopping = False
        self._npm_pings_answered = 0

    def _new_locks(self) -> None:
        """The locks and events (new ones after a fork: the parent may have held the old)."""
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._state_changed = threading.Condition(self._lock)
        self._lifecycle = threading.Lock()
        self._torn_down = threading.Event()

    def __repr__(self) -> str:
        return f"<Elector {self._options.name!r} node_id={self.node_id!r} state={self.state.value} term={self.term}>"

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
        name = self._options.name
        self._server = bind_heartbeat_server(
            self._options.host,
            self._options.port,
            self._options.port_explicit,
            self._on_datagrams,
            self._warn,
            self._report_error,
        )
        me = Member(self._options.node_id, self._options.priority, "", self._server.port)
        self._machine.me = me
        self._discovery = self._peer_source(me)
        self._feed(self._machine.start)  # before discovery, so that no early record is dropped
        self._discovery.start()
        self._server_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _SERVE_POLL_INTERVAL},
            name=f"followtheleader-heartbeat-{name}",
            daemon=True,
        )
        self._server_thread.start()
        self._ticker = Ticker(f"followtheleader-ticker-{name}", self._tick, self._report_error, self._options.interval)
        self._ticker.start()
        log.info("elector %r node %s started, heartbeat port %d", name, me.node_id, me.port)

    def _peer_source(self, me: Member) -> PeerSource:
        """Where peers are found: the ``peers`` list (unicast mode), else mDNS."""
        options = self._options
        if options.peers is not None:
            ipv6 = ":" in options.host
            return PeerDirectory(options.name, options.peers, ipv6, self._on_addresses, self._report_error)
        return Discovery(
            options,
            me,
            self._auth,
            self._on_record,
            self._on_goodbye,
            self._warn,
            self._report_error,
            on_npm_record=self._on_npm_record,
            boot=self._machine.boot,
        )

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
        self._machine.state = State.STOPPED
        self._machine.leader = None
        self._server = self._server_thread = self._ticker = self._discovery = None
        self._callbacks.forget_thread_after_fork()

    def _close_resources(self) -> None:
        """Close in reverse order of opening: ticker, discovery, heartbeat server."""
        if self._ticker is not None:
            self._ticker.stop()
            if not self._ticker.join(5.0):
                log.warning("the ticker thread did not finish")
        if self._discovery is not None:
            self._discovery.close()
        if self._server is not None:
            if self._server_thread is not None and self._server_thread.is_alive():
                self._server.shutdown()
                self._server_thread.join()
            self._server.server_close()
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
        """The heartbeat port (the one actually bound once started)."""
        return self._machine.me.port

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
            return self._machine.is_leader(time.monotonic())

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
        counts = dict(self._warn.counts)
        if self._npm_pings_answered:
            counts["npm-pings-answered"] = self._npm_pings_answered
        return counts

    # ----------------------------------------------------------------- inputs (various threads)

    def _feed(self, step: Callable[[float], list[Action]]) -> float | None:
        """Run one machine step under the lock, then carry out its actions outside it.

        Datagrams go out in the order of the decisions: the send lock is taken before the
        state lock is released, and the sends happen under the send lock alone.
        """
        with self._lock:
            actions = step(time.monotonic())
            sends: list[Send | NpmPing] = []
            for action in actions:
                if isinstance(action, (Send, NpmPing)):
                    sends.append(action)
                elif isinstance(action, Notify):
                    self._log_event(action.event)
                    self._callbacks.put(action.event)
                    self._state_changed.notify_all()
                elif isinstance(action, Publish) and self._discovery is not None:
                    self._discovery.publish(action.role, action.term, action.serve_npm)
            deadline = self._machine.next_deadline()
            self._send_lock.acquire()
        try:
            server = self._server
            if server is not None:
                encoded: dict[int, bytes] = {}  # a leader's heartbeat to all: encoded once, if unstamped
                for send in sends:
                    if isinstance(send, NpmPing):
                        data = NPM_PING
                    elif self._auth is not None:
                        data = self._encode(send.message, send.to)
                    else:
                        cached = encoded.get(id(send.message))
                        data = cached if cached is not None else encode_message(send.message)
                        encoded[id(send.message)] = data
                    server.send(data, send.address)
        finally:
            self._send_lock.release()
        ticker = self._ticker
        if ticker is not None and deadline is not None and deadline < ticker.planned:
            ticker.wake()
        return deadline

    def _tick(self) -> float | None:
        """Ticker thread."""
        return self._feed(self._machine.tick)

    def _on_datagrams(self, batch: list[tuple[bytes, tuple[str, int]]]) -> None:
        """Heartbeat thread: the datagrams read in one wake-up, decided on in one step."""
        steps: list[Callable[[float], list[Action]]] = []
        for data, source in batch:
            step = self._step_for(data, source)
            if step is not None:
                steps.append(step)
        if len(steps) == 1:
            self._feed(steps[0])
        elif steps:
            self._feed(lambda now: [action for step in steps for action in step(now)])

    def _step_for(self, data: bytes, source: tuple[str, int]) -> Callable[[float], list[Action]] | None:
        """Heartbeat thread: the machine step for one datagram, or None when it is answered
        here (an npm follower's ``PING``) or dropped (counted and logged, rate-limited)."""
        if data in (NPM_PING, NPM_PONG) and self._options.npm_compat:
            if data == NPM_PONG:  # the npm leader answers our PING
                return functools.partial(self._machine.on_npm_pong, source)
            if self._server is not None and self.is_leader:  # an npm follower of ours
                self._server.send(NPM_PONG, source)
                self._npm_pings_answered += 1  # heartbeat thread only
            return None
        if self._auth is not None:
            body = self._auth.open(data)
            if body is None:
                self._warn("unauthenticated", "dropped an unauthenticated heartbeat datagram from %s:%s", *source)
                return None
            data = body
        decoded = decode_datagram(data)
        if decoded is None:
            self._warn("bad-datagram", "ignored a malformed heartbeat datagram from %s:%s", *source)
            return None
        message, stamp = decoded
        if self._auth is not None:
            refusal = (
                "unstamped" if stamp is None else self._auth.refusal(message.sender, stamp, time.time(), self.node_id)
            )
            if refusal == "clock-skew":
                text = f"clocks differ by more than {MAX_CLOCK_SKEW:.0f} s with {source[0]}: its heartbeats are refused"
                if self._warn("clock-skew", "%s", text):
                    self._report_error(OSError(text), text)
                return None
            if refusal is not None:
                self._warn("replayed", "dropped a %s heartbeat datagram from %s:%s", refusal, *source)
                return None
        if message.sender == self.node_id and not (source[1] == self.port and is_local_address(source[0])):
            # Our own id from elsewhere: a replayed copy of one of our pings (or a node with
            # our id); it must not make us take that address for our own.
            self._warn("replayed", "dropped a datagram in this node's name from %s:%s", *source)
            return None
        if message.sender == self.node_id or (stamp is not None and stamp.to == ANYONE):
            # A ping to whoever is at an address (unicast mode, stamped ANYONE: only in an
            # authenticated group), or one of this node's own: answered, never taken as proof
            # of life (a copy may be replayed to any node).
            return functools.partial(self._machine.on_address_ping, message, source)
        return functools.partial(self._machine.on_message, message, source)

    def _encode(self, message: Message, to: str) -> bytes:
        """The datagram for ``message``: stamped and tagged in an authenticated group."""
        if self._auth is None:
            return encode_message(message)
        return self._auth.seal(encode_message(message, self._auth.next_stamp(time.time(), to)))

    def _on_record(self, record: PeerRecord) -> None:
        """Browser thread: a peer's DNS-SD record appeared or changed."""
        self._feed(lambda now: self._machine.on_discovered(record, now))

    def _on_goodbye(self, node_id: str) -> None:
        """Browser thread: a peer withdrew its DNS-SD record."""
        self._feed(lambda now: self._machine.on_goodbye(node_id, now))

    def _on_addresses(self, addresses: frozenset[tuple[str, int]]) -> None:
        """Peers thread (or the one of :meth:`start`): the addresses of the peer list changed."""
        self._feed(lambda now: self._machine.on_addresses(addresses, now))

    def _on_npm_record(self, host: str, port: int) -> None:
        """Browser or zeroconf loop thread: an npm leader's DNS-SD record appeared."""
        self._feed(lambda now: self._machine.on_npm_record(host, port, now))

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
