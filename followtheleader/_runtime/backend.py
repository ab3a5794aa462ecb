"""The seam between the facade and a backend: what the one :class:`~followtheleader.Elector`
asks of the part that finds and holds leadership one way (mDNS, listed peers, a coordinator).

The facade (``followtheleader._elector``) owns what every mode shares: the options, the state
lock, the feed (decide under the lock, act outside it), the ticker, the callback thread, the
events and the life cycle. A backend owns what is particular to its mode: its state machine,
its threads and its sockets. They meet here:

* the facade lends the backend a :class:`Feeder` (three callables, any thread) through which
  every input of the backend's threads reaches the machine;
* the backend offers the facade a :class:`Backend`: its machine (an :class:`ElectionMachine`)
  and the hooks the facade calls at each point of the life cycle and of a decision.

Threads, in short: the facade calls :meth:`Backend.open`, :meth:`Backend.close`,
:meth:`Backend.after_resign` and :meth:`Backend.disown_after_fork` on the thread of the
user's ``start()``, ``stop()``, ``resign()`` (a callback's, possibly) or the fork; it calls
:meth:`Backend.decided` under the state lock and :meth:`Backend.carry_out` under the send lock
alone, on whichever thread fed the input; the backend's own threads call the :class:`Feeder`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from .._core.machine import Action
from .._core.model import FencingToken, Member, State
from .stats import IoCounts

__all__ = ["Backend", "Description", "ElectionMachine", "Feeder", "Locked", "Step"]

T = TypeVar("T")

Step = Callable[[float], list[Action]]
"""One decision of the machine: called with ``time.monotonic()`` under the state lock."""


class ElectionMachine(Protocol):
    """The face of a state machine the facade drives (``Machine`` on the LAN, ``LeaseMachine``
    with a coordinator). Not thread-safe: every call and read is made under the state lock
    (but for the snapshot of an ``error`` event, which takes no lock)."""

    @property
    def state(self) -> State: ...

    @property
    def term(self) -> int: ...

    @property
    def leader(self) -> Member | None: ...

    @property
    def token(self) -> FencingToken | None: ...

    @property
    def me(self) -> Member: ...

    def start(self, now: float) -> list[Action]: ...

    def stop(self, now: float) -> list[Action]: ...

    def resign(self, now: float) -> list[Action]: ...

    def tick(self, now: float) -> list[Action]: ...

    def next_deadline(self) -> float | None: ...

    def is_leader(self, now: float) -> bool: ...

    def members(self, now: float) -> tuple[Member, ...]: ...


class Locked(Protocol):
    """Runs ``read()`` under the state lock and returns its result (any thread; never from
    code that already holds the lock)."""

    def __call__(self, read: Callable[[], T]) -> T: ...


@dataclass(frozen=True)
class Feeder:
    """What the facade lends its backend; every callable may be called from any thread.

    :ivar feed: runs one :data:`Step` of the machine under the state lock, hands its actions
        to the backend (:meth:`Backend.decided`, then :meth:`Backend.carry_out` outside the
        lock) and the events to the callback thread; returns the machine's next deadline.
    :ivar locked: reads the machine (or anything the lock guards) under the state lock.
    :ivar report_error: reports a problem through the ``error`` event.
    """

    feed: Callable[[Step], float | None]
    locked: Locked
    report_error: Callable[[BaseException, str], None]


@dataclass(frozen=True)
class Description:
    """How a backend describes itself to people and to JSON readers.

    :ivar text: where the node meets its group, for a line of text: ``heartbeat port 9001``,
        ``coordinator etcd://host:2379/prefix`` (a password is masked).
    :ivar fields: the same for a JSON object: ``{"port": 9001}``, ``{"coordinator": URL}``.
    :ivar service: the coordination service's name (``ZooKeeper``, ``etcd``), or None on
        the LAN.
    """

    text: str
    fields: Mapping[str, object] = field(default_factory=dict)
    service: str | None = None


class Backend(Protocol):
    """One way to find and hold leadership, composed by the one ``Elector``.

    A backend is made by the facade's factory (``make_backend``) from the options and a
    :class:`Feeder`; it opens nothing until :meth:`open`.
    """

    @property
    def machine(self) -> ElectionMachine:
        """The state machine; the facade calls and reads it under the state lock only."""
        ...

    @property
    def io(self) -> IoCounts:
        """Counts of the backend's I/O, for :meth:`.Elector.stats`."""
        ...

    @property
    def port(self) -> int:
        """The heartbeat port (the one bound, once open), 0 for a backend without one. Any thread."""
        ...

    @property
    def tick_period(self) -> float:
        """Seconds the ticker waits before it retries a tick that raised."""
        ...

    def open(self) -> None:
        """Bind the sockets, feed the machine's ``start`` and start the backend's threads.

        Thread of ``start()``, under the facade's life-cycle lock. On an exception the facade
        reports it and calls :meth:`close`, which must cope with a half-open backend.

        :raises OSError: when a socket or service cannot be opened.
        """
        ...

    def decided(self, actions: Sequence[Action]) -> list[Action]:
        """Take the actions the machine just decided (all but the events, which the facade
        handles), under the state lock, on the thread that fed the input.

        Do here only what must follow the order of the state and never blocks (hand a DNS-SD
        record to zeroconf's loop); return what is to be carried out once the lock is released.
        """
        ...

    def carry_out(self, actions: Sequence[Action]) -> None:
        """Carry out what :meth:`decided` returned (send the datagrams), in the order of the
        decisions: under the facade's send lock, the state lock released, on the feeding thread."""
        ...

    def after_resign(self) -> None:
        """The machine was told to resign (the facade fed it): act on it now if the backend's
        threads would otherwise wait. Thread of ``resign()``, any lock released."""
        ...

    def close(self) -> None:
        """End the backend's threads and close its sockets, in reverse order of opening.

        Thread of ``stop()`` (possibly the callback thread, or the thread that failed to
        start), under the life-cycle lock, after the machine's ``stop`` was fed. Never joins
        the current thread; idempotent.
        """
        ...

    def disown_after_fork(self) -> None:
        """In a forked child: the backend's threads and sockets are the parent's. Put the
        machine in state ``stopped`` without a leader and drop every reference to them, so
        that nothing is sent or closed in the parent's name."""
        ...

    def describe(self) -> Description:
        """Where this node meets its group (:class:`Description`). Any thread."""
        ...

    def counters(self) -> dict[str, int]:
        """How often each kind of trouble was seen (see ``Elector.counters``). Any thread."""
        ...
