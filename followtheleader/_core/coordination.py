"""The coordinator mode's policy: what a member's session thread does next, and when.

:class:`SessionPolicy` is to the session thread of a coordinated elector what
:class:`followtheleader._core.machine.Machine` is to the heartbeat threads: it decides, the
thread does the I/O. It holds the timing of the election through a coordination service:

* a new session waits :data:`SETTLE` before claiming a vacant leadership, so that the members
  started at the same time are registered and the best-ranked one gets it;
* the best-ranked member claims a vacant leadership at once (after the settle window); the
  others wait :data:`GRACE` for it, counted from when they first saw the vacancy;
* a member that released its leadership (``resign()``) stays out of the running, withdrawn
  from the members, for :data:`RESIGN_HOLD`, then rejoins;
* after an error the thread waits, :data:`FIRST_BACKOFF` first, doubled after each error up
  to the renewal period (a fifth of the TTL for etcd); the first error of a streak is
  reported, the rest are only logged, and the first successful renewal after an expected
  error ends the streak and resets the backoff;
* a session that was lost, or that the lease asks to replace (its proof lapsed), or that
  an unexpected error (a bug, not the service's) left in doubt, is opened anew; closing
  ends everything.

One round of the thread is: open the session if needed, release the leadership ``resign()``
gave up, rejoin after the hold, renew and read the group, claim if due, then wait. Usage::

    policy = SessionPolicy(node_id, renew_every)
    while True:
        do = policy.next(now, abandon=..., release_term=..., closing=...)
        # carry out do.op, then report: opened / released / rejoined / viewed / claimed /
        # waited, or failed when the operation raised
        if do.op is Op.CLOSE: break

Pure: no clock (``now`` is an argument), no I/O, no thread; not thread-safe (one session
thread drives it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .lease import View

__all__ = ["FIRST_BACKOFF", "GRACE", "RESIGN_HOLD", "SETTLE", "Decision", "Op", "SessionPolicy"]

SETTLE = 0.3
"""Seconds a new session waits before claiming a vacant leadership, so that the members
started at the same time are registered and the best-ranked one gets it."""
GRACE = 0.5
"""Seconds the other members wait for the best-ranked one to claim a vacant leadership."""
RESIGN_HOLD = 1.0
"""Seconds a member that resigned stays out of the running (alone, it then leads again)."""
FIRST_BACKOFF = 0.1
"""Seconds before the first retry after an error; doubled each time up to the renewal period."""


class Op(enum.Enum):
    """What the session thread must do next."""

    OPEN = "open"
    """Open a session and register this member; report :meth:`SessionPolicy.opened`."""
    REOPEN = "reopen"
    """Replace the current session (the lease lapsed, or an unexpected error came): report
    the session lost to the lease machine first, close it, then open a new one; report
    :meth:`SessionPolicy.opened`."""
    RELEASE = "release"
    """Release the leadership of :attr:`Decision.term`; report :meth:`SessionPolicy.released`."""
    REJOIN = "rejoin"
    """Register this member again; report :meth:`SessionPolicy.rejoined`."""
    RENEW = "renew"
    """Keep the session alive and read the group; report :meth:`SessionPolicy.viewed`."""
    CLAIM = "claim"
    """Try to take the vacant leadership; report :meth:`SessionPolicy.claimed`."""
    WAIT = "wait"
    """Wait up to :attr:`Decision.seconds` for a change of the group or a wake-up; report
    :meth:`SessionPolicy.waited`."""
    BACKOFF = "backoff"
    """Wait :attr:`Decision.seconds` after an error (only closing ends it early); report
    :meth:`SessionPolicy.waited`."""
    CLOSE = "close"
    """End the session and the thread."""


@dataclass(frozen=True)
class Decision:
    """One step for the session thread.

    :ivar op: what to do.
    :ivar term: for :attr:`Op.RELEASE`, the term of the leadership to release.
    :ivar seconds: for :attr:`Op.WAIT` and :attr:`Op.BACKOFF`, how long.
    """

    op: Op
    term: int | None = None
    seconds: float = 0.0


class _Phase(enum.Enum):
    START = "start"  # a new round: open if needed
    RELEASE = "release"
    REJOIN = "rejoin"
    RENEW = "renew"
    CLAIM = "claim"
    WAIT = "wait"
    BACKOFF = "backoff"


class SessionPolicy:
    """The election policy of one member in coordinator mode (see the module's text).

    :param node_id: this member's id (to know whether it is the best-ranked).
    :param renew_every: seconds between two renewals while nothing happens; also the longest
        backoff after errors.
    """

    def __init__(self, node_id: str, renew_every: float) -> None:
        self.node_id = node_id
        self.renew_every = renew_every
        self.opened = False
        """True while a session is open (as far as the policy knows)."""
        self.replace = False
        """True after an unexpected error: the open session is replaced by a new one."""
        self.failing = False
        """True during a streak of expected errors (the first one was reported)."""
        self.backoff = FIRST_BACKOFF
        self.rejoin_due = False
        """True while this member stays withdrawn after releasing a leadership."""
        self.settle_until = 0.0
        self.hold_until = 0.0
        self.vacant_since = 0.0
        """When this member first saw the leadership vacant (0: held when last read)."""
        self._phase = _Phase.START
        self._wait = 0.0

    # ----------------------------------------------------------------- the next step

    def next(
        self, now: float, *, abandon: bool = False, release_term: int | None = None, closing: bool = False
    ) -> Decision:
        """What to do now.

        :param abandon: the lease machine's :attr:`~followtheleader._core.lease.LeaseMachine.abandon`:
            its lease lapsed, the session must be replaced (read at the start of a round).
        :param release_term: the lease machine's
            :attr:`~followtheleader._core.lease.LeaseMachine.release_term` (read after opening).
        :param closing: the elector is stopping.
        """
        if closing:
            return Decision(Op.CLOSE)
        phase = self._phase
        if phase is _Phase.START:
            if not self.opened or abandon or self.replace:
                return Decision(Op.REOPEN if self.opened else Op.OPEN)
            phase = _Phase.RELEASE
        if phase is _Phase.RELEASE:
            if release_term is not None:
                self._phase = phase
                return Decision(Op.RELEASE, term=release_term)
            phase = _Phase.REJOIN
        if phase is _Phase.REJOIN:
            if self.rejoin_due and now >= self.hold_until:
                self._phase = phase
                return Decision(Op.REJOIN)
            phase = _Phase.RENEW
        self._phase = phase
        if phase is _Phase.RENEW:
            return Decision(Op.RENEW)
        if phase is _Phase.CLAIM:
            return Decision(Op.CLAIM)
        if phase is _Phase.WAIT:
            return Decision(Op.WAIT, seconds=self._wait)
        return Decision(Op.BACKOFF, seconds=self._wait)

    # ----------------------------------------------------------------- reports

    def opened_session(self, now: float) -> None:
        """The session was opened (after :attr:`Op.OPEN` or :attr:`Op.REOPEN`)."""
        self.opened, self.rejoin_due, self.replace = True, False, False
        self.settle_until = now + SETTLE
        self._phase = _Phase.RELEASE

    def released(self, now: float) -> None:
        """The leadership was released, and this member withdrawn until it rejoins."""
        self.rejoin_due, self.hold_until = True, now + RESIGN_HOLD
        self._phase = _Phase.REJOIN

    def rejoined(self) -> None:
        """This member is registered again."""
        self.rejoin_due = False
        self._phase = _Phase.RENEW

    def viewed(self, now: float, view: View) -> bool:
        """The session was renewed and the group read as ``view``.

        :returns: True when this ends a streak of errors (the thread says the service answers
            again).
        """
        recovered = self.failing
        if recovered:
            self.failing, self.backoff = False, FIRST_BACKOFF
        if view.leadership is not None:
            self.vacant_since = 0.0
        elif not self.vacant_since:
            self.vacant_since = now
        wait = self.renew_every
        self._phase = _Phase.WAIT
        if view.leadership is None and not self.rejoin_due:
            claim_at = self.claim_at(view)
            if now >= claim_at:
                self._phase = _Phase.CLAIM
            else:
                wait = min(wait, claim_at - now)
        if self.rejoin_due:
            wait = min(wait, max(0.0, self.hold_until - now))
        self._wait = wait
        return recovered

    def claim_at(self, view: View) -> float:
        """When this member may claim the vacant leadership of ``view``: the best-ranked member
        at once (after the settle window of a new session), the others after a grace period."""
        best = view.members[0] if view.members else None
        if best is not None and best.node_id == self.node_id:
            return self.settle_until
        return max(self.settle_until, self.vacant_since + GRACE)

    def claimed(self, won: bool) -> None:
        """The claim was made: won (renew at once: the view makes this member leader) or lost
        (someone else was first: wait for the group to change)."""
        if won:
            self._phase = _Phase.START
        else:
            self._phase, self._wait = _Phase.WAIT, self.renew_every

    def waited(self) -> None:
        """The wait (or the backoff) is over: a new round."""
        self._phase = _Phase.START

    def failed(self, *, lost: bool = False, expected: bool = True) -> bool:
        """The last operation raised.

        :param lost: the service says the session is gone (expired or replaced).
        :param expected: an error of the service or the network (a coordinator error), as
            opposed to a bug or an unexpected error of the client library, after which the
            session is opened anew and the error is always reported.
        :returns: True when the error must be reported (the ``error`` event): an unexpected one,
            or the first of a streak of expected ones.
        """
        report = True
        if expected:
            report = not self.failing
            self.failing = True
            if lost:
                self.opened = False
        else:
            # REOPEN, not OPEN: the lease machine must hear that the old session (and any
            # leadership it held) is gone before a new one is opened
            self.replace = True
        self._phase, self._wait = _Phase.BACKOFF, self.backoff
        self.backoff = min(self.backoff * 2, max(FIRST_BACKOFF, self.renew_every))
        return report
