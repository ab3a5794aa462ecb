"""In-memory coordinator, ``memory://NAME``: a coordination service inside this process.

In the spirit of tooz's ``zake`` and hashicorp/raft's ``InmemTransport``: the electors of one
process that name the same ``memory://NAME`` elect among themselves exactly as they would
through ZooKeeper or etcd, with no server, no socket and no thread of its own. Tests use it
to check every behaviour of the facade that does not depend on a backend, without root.

The store keeps what a real service keeps:

* sessions, each with a TTL counted by :func:`time.monotonic` from its last renewal; a
  session not renewed in time expires, and its leadership and membership go with it (checked
  whenever the store is used, and by waiters at the moment of the next expiry);
* per group (under the URL's prefix), the leadership (holder, session, term) and the members;
* a revision that grows with every change: a leadership's term is the revision that created
  it, so terms only grow, as etcd's create revisions and ZooKeeper's zxids do.

One lock guards every store of the process; a :class:`threading.Condition` on it wakes every
waiting session thread at each change, so a change is seen at once. In a forked child the
stores start empty (they are the parent's: the child is another process) with a new lock.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from .._core.lease import Leadership, View
from .._core.model import Member
from .base import Coordinator, CoordinatorConfig, CoordinatorError, GroupInfo, SessionLost, ranked

__all__ = ["MemoryCoordinator"]

log = logging.getLogger(__name__)


@dataclass
class _Session:
    ttl: float
    expires: float


@dataclass
class _Group:
    leader: Member | None = None
    leader_session: int = 0
    term: int = 0
    members: dict[str, tuple[Member, int]] = field(default_factory=dict)
    """node id -> (member, session id)"""


@dataclass
class _Store:
    """One ``memory://NAME``: sessions and groups; only used under :data:`_lock`."""

    sessions: dict[int, _Session] = field(default_factory=dict)
    groups: dict[tuple[str, str], _Group] = field(default_factory=dict)
    """(prefix, group name) -> group"""
    revision: int = 0

    def changed(self) -> None:
        self.revision += 1
        _changed.notify_all()

    def expire(self, now: float) -> None:
        """End every session whose TTL ran out; their leaderships and memberships go."""
        for session_id in [s for s, session in self.sessions.items() if session.expires <= now]:
            self.end(session_id)

    def end(self, session_id: int) -> None:
        if self.sessions.pop(session_id, None) is None:
            return
        for key, group in list(self.groups.items()):
            if group.leader_session == session_id:
                group.leader, group.leader_session = None, 0
            for node_id in [n for n, (_, s) in group.members.items() if s == session_id]:
                del group.members[node_id]
            if group.leader is None and not group.members:
                del self.groups[key]
        self.changed()

    def next_expiry(self) -> float | None:
        return min((session.expires for session in self.sessions.values()), default=None)


_lock = threading.Lock()
_changed = threading.Condition(_lock)
_stores: dict[str, _Store] = {}
_session_ids = itertools.count(1)


def _after_fork_in_child() -> None:
    """The stores are the parent's, and its threads may have held the lock at the fork."""
    global _lock, _changed
    _lock = threading.Lock()
    _changed = threading.Condition(_lock)
    _stores.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class MemoryCoordinator(Coordinator):
    """One member's session with an in-process store (see :class:`.base.Coordinator`)."""

    service = "memory"

    def __init__(self, config: CoordinatorConfig, group: str, me: Member, ttl: float) -> None:
        super().__init__(config, group, me, ttl)
        self._name = config.hosts[0][0].lower()  # a host name: case does not matter
        self._key = (config.prefix, group)
        self._session_id: int | None = None
        self._seen = -1
        """The store's revision when this member last read the group."""
        self._woken = False

    def _store(self) -> _Store:
        """The store, its expired sessions ended (under the lock)."""
        store = _stores.setdefault(self._name, _Store())
        store.expire(time.monotonic())
        return store

    def _live(self) -> tuple[_Store, _Session]:
        """The store and this member's session (under the lock)."""
        store = self._store()
        if self._session_id is None:
            raise CoordinatorError("no memory session")
        session = store.sessions.get(self._session_id)
        if session is None:
            raise SessionLost("the memory session expired")
        return store, session

    # ----------------------------------------------------------------- session

    def connect_only(self) -> None:
        pass

    def open(self) -> None:
        self.close()
        with _changed:
            self._session_id = session_id = next(_session_ids)
            self._store().sessions[session_id] = _Session(self.ttl, time.monotonic() + self.ttl)

    def keep_alive(self) -> float:
        sent = time.monotonic()
        with _changed:
            _, session = self._live()
            session.expires = sent + session.ttl
            return session.ttl

    def close(self) -> None:
        session_id, self._session_id = self._session_id, None
        if session_id is not None:
            with _changed:
                self._store().end(session_id)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with _changed:
            while not self._woken:
                now = time.monotonic()
                store = self._store()
                if store.revision != self._seen or now >= deadline:
                    break
                expiry = store.next_expiry()
                _changed.wait(deadline - now if expiry is None else max(0.0, min(deadline, expiry) - now))
            self._woken = False

    def wake(self) -> None:
        with _changed:
            self._woken = True
            _changed.notify_all()

    # ----------------------------------------------------------------- election

    def join(self) -> None:
        with _changed:
            store, _ = self._live()
            group = store.groups.setdefault(self._key, _Group())
            if group.leader is not None and group.leader.node_id == self.me.node_id:
                # an older session of this node: its leadership has lapsed locally
                group.leader, group.leader_session = None, 0
            group.members[self.me.node_id] = (self.me, self._session_id or 0)
            store.changed()

    def observe(self) -> View:
        with _changed:
            store, _ = self._live()
            self._seen = store.revision
            return self._view(store.groups.get(self._key))

    def _view(self, group: _Group | None) -> View:
        if group is None:
            return View(None, ())
        held = None
        if group.leader is not None:
            held = Leadership(group.leader, group.term, group.leader_session == self._session_id)
        return View(held, ranked([member for member, _ in group.members.values()]))

    def claim(self) -> int | None:
        with _changed:
            store, _ = self._live()
            group = store.groups.setdefault(self._key, _Group())
            if group.leader is not None:
                return None
            store.changed()
            group.leader, group.leader_session, group.term = self.me, self._session_id or 0, store.revision
            return group.term

    def release(self, term: int) -> None:
        with _changed:
            store, _ = self._live()
            group = store.groups.get(self._key)
            if group is None:
                return
            group.members.pop(self.me.node_id, None)  # first, so that nobody waits for this member
            if group.leader_session == self._session_id and group.term == term:
                group.leader, group.leader_session = None, 0
            store.changed()

    def rejoin(self) -> None:
        with _changed:
            store, _ = self._live()
            store.groups.setdefault(self._key, _Group()).members[self.me.node_id] = (self.me, self._session_id or 0)
            store.changed()

    def groups(self) -> list[GroupInfo]:
        with _changed:
            store = self._store()
            return [
                GroupInfo(name, self._view(group))
                for (prefix, name), group in sorted(store.groups.items())
                if prefix == self.config.prefix
            ]
