"""The state of a coordinated elector: what the server said, held against the local clock.

:class:`LeaseMachine` plays the part :class:`followtheleader._core.machine.Machine` plays in mDNS mode, with the
same inputs the elector calls (``start``, ``stop``, ``resign``, ``tick``, ``next_deadline``,
``is_leader``, ``members``) and the same attributes it reads (``state``, ``term``, ``leader``,
``token``, ``me``, ``boot``), plus the session thread's reports (:meth:`on_view`,
:meth:`on_lost`). It does no I/O and takes the time as an argument, so unit tests drive it
with a fake clock. Not thread-safe: the elector serialises calls under its lock.

The local lease: a report from the session thread carries the monotonic time at which the
request that proved the session alive was *sent*; the server cannot expire the session (and
let another node lead) less than its TTL after that, so this node may count on
``sent + ttl - margin``. When that passes without a newer proof, :meth:`tick` demotes the
node (``reelection``) and asks the session thread to replace the session (:attr:`abandon`),
so that a later leadership of this node gets a new, greater term.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .machine import Action, Notify
from .model import Event, FencingToken, Member, State

__all__ = ["Leadership", "LeaseMachine", "View"]


@dataclass(frozen=True)
class Leadership:
    """The ``leader`` node or key of a group.

    :ivar leader: who holds it.
    :ivar term: the server's number for it (creation zxid or create revision).
    :ivar mine: True when it is bound to this client's own session or lease.
    """

    leader: Member
    term: int
    mine: bool


@dataclass(frozen=True)
class View:
    """A group as read from the server in one go.

    :ivar leadership: the current leadership, or None when vacant.
    :ivar members: the live members (their session holds), best-ranked first.
    """

    leadership: Leadership | None
    members: tuple[Member, ...]


@dataclass
class LeaseMachine:
    """The election state of one coordinated node.

    :param group: the group name.
    :param me: this node.
    :param service: the service's name for reasons ("ZooKeeper", "etcd").
    :param margin: seconds the local lease ends before the server's TTL could.
    """

    group: str
    me: Member
    service: str
    margin: float
    boot: int = 0
    state: State = State.STOPPED
    term: int = 0
    leader: Member | None = None
    token: FencingToken | None = None
    lease_until: float | None = None
    """The end of the local lease (monotonic), None when no session is proven alive."""
    known_members: tuple[Member, ...] = ()
    abandon: bool = False
    """Set when the lease lapsed: the session thread must replace the session."""
    release_term: int | None = None
    """Set by :meth:`resign`: the session thread must release this leadership."""
    _actions: list[Action] = field(default_factory=list)

    # ----------------------------------------------------------------- elector inputs

    def start(self, now: float) -> list[Action]:
        """Begin: electing until the session thread reports."""
        self._set_state(State.ELECTING, now, "started")
        return self._flush()

    def stop(self, now: float) -> list[Action]:
        """Leave: the session thread deletes this node's nodes or keys as it closes."""
        self.lease_until = None
        self._set_state(State.STOPPED, now, "stopped")
        return self._flush()

    def resign(self, now: float) -> list[Action]:
        """Step down if leading; the session thread releases the leadership at once."""
        if self.state is State.LEADER:
            self.release_term = self.term
            self._set_state(State.ELECTING, now, "resigned")
        return self._flush()

    def tick(self, now: float) -> list[Action]:
        """The lease: demote when no proof of a live session came for its whole length."""
        if self.state in (State.LEADER, State.FOLLOWER) and self.lease_until is not None and now >= self.lease_until:
            self.lease_until = None
            self.abandon = True
            self._set_state(State.ELECTING, now, f"lost contact with {self.service}: its session may expire")
        return self._flush()

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must run next: the end of the lease while leading or following."""
        return self.lease_until if self.state in (State.LEADER, State.FOLLOWER) else None

    def is_leader(self, now: float) -> bool:
        """Leading, and the lease still holds by the monotonic clock."""
        return self.state is State.LEADER and self.lease_until is not None and now < self.lease_until

    def members(self, now: float) -> tuple[Member, ...]:
        """The live members the server listed last (this node alone while it knows none)."""
        return self.known_members or (self.me,)

    # ----------------------------------------------------------------- session thread reports

    def on_view(self, sent: float, ttl: float, view: View, now: float) -> list[Action]:
        """The session was alive when a request sent at ``sent`` reached the server, and the
        group looked like ``view``."""
        if self.state is State.STOPPED or self.abandon:
            return self._flush()
        lease = sent + ttl - self.margin
        if lease <= now:  # the proof came too late to count
            return self.tick(now) if self.lease_until is not None else self._flush()
        self.lease_until = max(lease, self.lease_until or lease)
        self.known_members = view.members
        held = view.leadership
        if held is None or (held.leader.node_id == self.me.node_id and not held.mine):
            # vacant, or still held by an older session of this node, which has lapsed
            if self.state in (State.LEADER, State.FOLLOWER):
                self._set_state(State.ELECTING, now, "the leader left")
        elif held.mine:
            if self.release_term == held.term:
                return self._flush()  # being released
            if self.state is State.LEADER and self.term != held.term:
                self._set_state(State.ELECTING, now, "new term")
            self.term, self.leader = held.term, self.me
            self._set_state(State.LEADER, now, f"won the leadership in {self.service}")
        else:
            changed = self.term != held.term or self.leader != held.leader
            self.term, self.leader = held.term, held.leader
            self._set_state(State.FOLLOWER, now, f"following {held.leader.node_id}", force=changed)
        return self._flush()

    def on_lost(self, reason: str, now: float) -> list[Action]:
        """The session ended (expired, closed by the server, or replaced)."""
        self.lease_until = None
        self.known_members = ()
        if self.state is not State.STOPPED:
            self._set_state(State.ELECTING, now, reason)
        return self._flush()

    def on_new_session(self) -> None:
        """The session thread replaced the session (after :attr:`abandon` or a loss)."""
        self.abandon = False

    def on_released(self) -> None:
        """The session thread released the leadership :meth:`resign` asked to give up."""
        self.release_term = None

    # ----------------------------------------------------------------- internals

    def _set_state(self, new: State, now: float, reason: str, force: bool = False) -> None:
        previous = self.state
        if new is previous and not force:
            return
        self.state = new
        if new is State.LEADER:
            self.token = FencingToken(self.term, self.me.priority, self.me.node_id, 0)
        elif new is State.FOLLOWER and self.leader is not None:
            self.token = FencingToken(self.term, self.leader.priority, self.leader.node_id, 0)
        kind = {State.LEADER: "leader", State.FOLLOWER: "follower"}.get(new)
        if kind is None and previous in (State.LEADER, State.FOLLOWER):
            kind = "reelection"
        if kind is not None:
            leader = self.leader if new in (State.LEADER, State.FOLLOWER) else None
            self._actions.append(
                Notify(Event(kind, self.me.node_id, new, previous, self.term, leader, reason, now, None, self.token))
            )

    def _flush(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions
