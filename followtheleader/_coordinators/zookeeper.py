"""ZooKeeper coordinator, through kazoo.

The renewal is a ``sync`` (which the ensemble's leader answers, so that it fails on a server
cut off from the leader), then a read of the group only if a watch fired; the session may
count as alive from when the sync was sent.

Layout (see :mod:`followtheleader._coordinators.base`): ``<prefix>/<group>/leader`` is an ephemeral znode that
holds the leader's id and priority as JSON; its creation zxid (``czxid``) is the term.
``<prefix>/<group>/members/<id>.<priority>`` are ephemeral znodes, one per member. All are
bound to the member's ZooKeeper session: when the session expires or is closed, they go.

The group is watched, not polled: a read of the group (one round trip: ``get`` and
``exists`` of the leader znode, ``get_children`` of the members) sets kazoo watches on the
leader znode and the members' list, and the view read is kept until one of them fires (or the
connection state changes, or this member writes); the renewal then costs one request, the
``sync``. An event of the leader znode that the last read already shows (see :func:`_stale`)
does not count, and a claim sends its ``create`` and the reads in one round trip (its own
creation event does not count either): the successor of a leader that left reads the group
once, then claims, and needs no read after the claim.

kazoo runs its own threads (connection, and one that calls watchers and state listeners);
here those only set a flag and an Event. Every request is made on the session thread with kazoo's
asynchronous API and a bounded wait.

The session timeout the server grants may be less than the one asked for (it is clamped to
the server's ``minSessionTimeout`` and ``maxSessionTimeout``); kazoo keeps the granted value
only in a log message, so :class:`_GrantedTimeout` reads it from there.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import urllib.parse
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import EventType, WatchedEvent
from kazoo.security import make_digest_acl

from .._core.lease import Leadership, View
from .._core.model import Member
from .base import (
    Coordinator,
    CoordinatorConfig,
    CoordinatorError,
    GroupInfo,
    SessionLost,
    member_from_json,
    member_from_label,
    member_json,
    member_label,
    quote_group,
    ranked,
)

__all__ = ["ZooKeeperCoordinator"]

log = logging.getLogger(__name__)


class _GrantedTimeout(logging.LoggerAdapter):  # type: ignore[type-arg]
    """kazoo's logger, reading the negotiated session timeout from kazoo's own log call."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("kazoo.client"), {})
        self.seconds: float | None = None

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith("Session created") and len(args) >= 3:
            with contextlib.suppress(TypeError, ValueError):
                self.seconds = float(args[2]) / 1000.0  # type: ignore[arg-type]
        super().log(level, msg, *args, **kwargs)


def _member_data(member: Member) -> bytes:
    return member_json(member).encode()


class ZooKeeperCoordinator(Coordinator):
    """One member's ZooKeeper session (see :class:`followtheleader._coordinators.base.Coordinator`)."""

    service = "ZooKeeper"
    renew_fraction = 0.2
    """As etcd: one ``sync`` every fifth of the TTL (the view comes from the watches). The
    ensemble's leader learns of a session's requests from the server the client is connected
    to with a lag (at most its next ping, half a tickTime), which the lease's margin (a fifth
    of the TTL) covers."""

    def __init__(self, config: CoordinatorConfig, group: str, me: Member, ttl: float) -> None:
        super().__init__(config, group, me, ttl)
        self._client: KazooClient | None = None
        self._session_id: int | None = None
        self._granted: _GrantedTimeout | None = None
        self._changed = threading.Event()
        self._lost = False
        self._cached: View | None = None  # the last view read, while no watch has fired since
        self._dirty = True
        self._own_create = False  # a claim is under way or done: its own CREATED event tells nothing
        self._events = threading.Lock()  # the flags above against kazoo's thread
        self._reading = False  # observe() is waiting for its reads
        self._present = False  # whether the leader znode existed when the cached view was read
        self._read_during: list[str] = []  # leader znode events that came while it waited
        self._claimed: tuple[int, int | None] | None = None  # (term, session id) of this session's claim
        self._synced_sent: float | None = None  # when the last sync that succeeded was sent
        base = f"{config.prefix}/{quote_group(group)}"
        self._leader_path = f"{base}/leader"
        self._members_path = f"{base}/members"
        self._my_path = f"{self._members_path}/{member_label(me)}"
        self._request_timeout = max(1.0, ttl / 2)

    # ----------------------------------------------------------------- session

    def _new_client(self) -> KazooClient:
        config = self.config
        kwargs: dict[str, Any] = {
            "hosts": ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in config.hosts),
            "timeout": self.ttl,
            "logger": self._granted,
        }
        if config.tls:
            kwargs["use_ssl"] = True
            kwargs["verify_certs"] = config.setting("verify_certs") not in ("0", "false", "no")
            for name in ("ca", "certfile", "keyfile", "keyfile_password"):
                if config.setting(name):
                    kwargs[name] = config.setting(name)
        if config.username is not None:
            mechanism = config.setting("sasl")
            if mechanism:
                kwargs["sasl_options"] = {
                    "mechanism": mechanism,
                    "username": config.username,
                    "password": config.password,
                }
            else:
                kwargs["auth_data"] = [("digest", f"{config.username}:{config.password}")]
                # the nodes this member creates are for this user alone (the group shares it)
                kwargs["default_acl"] = [make_digest_acl(config.username, config.password or "", all=True)]
        client = KazooClient(**kwargs)
        client.add_listener(self._on_state)
        return client

    def _on_state(self, state: str) -> None:
        """kazoo's thread: the connection state changed."""
        if state == KazooState.LOST:
            self._lost = True
        self._dirty = True
        self._changed.set()

    def _watch(self, event: WatchedEvent) -> None:
        """kazoo's thread: a watched znode changed.

        The creation of the leader znode by this member's own claim is no change: the claim
        put it in the cached view already (:meth:`claim`). Only one such event can come per
        claim (the watch read set fires once), and only while the claim is under way or won;
        any later event of the leader znode is a deletion or a change."""
        with self._events:
            if event.path == self._leader_path:
                if self._own_create and event.type == EventType.CREATED:
                    self._own_create = False
                    return
                if self._reading:
                    self._read_during.append(event.type)  # judged by what the reads return
                elif self._cached is not None and _stale(event.type, self._present):
                    return
                else:
                    self._dirty = True
            else:
                self._dirty = True
        self._changed.set()

    def _connect(self) -> KazooClient:
        self.close()
        self._dirty, self._cached, self._synced_sent = True, None, None
        self._own_create, self._claimed = False, None
        self._granted = _GrantedTimeout()
        self._lost = False
        client = self._new_client()
        try:
            client.start(timeout=max(1.0, min(self.ttl, 10.0)))
        except Exception as exc:
            _close_client(client)
            hosts = ",".join(f"{h}:{p}" for h, p in self.config.hosts)
            raise CoordinatorError(f"cannot connect to ZooKeeper at {hosts}: {exc or type(exc).__name__}") from exc
        self._client = client
        client_id = client.client_id
        self._session_id = client_id[0] if client_id else None
        return client

    def connect_only(self) -> None:
        self._connect()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            _close_client(client)

    def wait(self, timeout: float) -> None:
        self._changed.wait(timeout)
        self._changed.clear()

    def wake(self) -> None:
        self._changed.set()

    def open(self) -> None:
        self._connect()

    def keep_alive(self) -> float:
        """A ``sync``, unless one was sent less than TTL/10 ago (a round a watch woke soon
        after a renewal): the TTL left is then counted from that sync's send time."""
        client = self._live_client()
        started = time.monotonic()
        if self._synced_sent is None or started - self._synced_sent >= self.ttl / 10:
            # A sync goes to the ensemble's leader, which expires sessions: a server cut off
            # from it (it may go on answering reads for syncLimit ticks) makes it fail.
            self._call(client.sync_async(self._leader_path))
            self._synced_sent = started
        granted = self._granted.seconds if self._granted is not None else None
        return (granted if granted is not None else self.ttl) - (started - self._synced_sent)

    # ----------------------------------------------------------------- election

    def join(self) -> None:
        client = self._client
        if client is None:
            raise CoordinatorError("not connected to ZooKeeper")
        self._dirty = True
        self._call(client.create_async(self._members_path, b"", makepath=True), exists_ok=True)
        # Leftovers of an older session of this node (it lost contact, or it was restarted):
        # its leadership has lapsed locally, so they only make the others wait.
        held = self._read_leader(client, watch=False)
        if held is not None and held[0].leader.node_id == self.me.node_id and not held[0].mine:
            self._delete(client, self._leader_path, held[1])
        self._register(client)

    def _register(self, client: KazooClient) -> None:
        try:
            self._call(client.create_async(self._my_path, _member_data(self.me), ephemeral=True))
        except _Exists:
            stat = self._call(client.exists_async(self._my_path))
            if stat is not None and stat.ephemeralOwner != self._session_id:
                self._delete(client, self._my_path, stat.version)
            self._call(client.create_async(self._my_path, _member_data(self.me), ephemeral=True), exists_ok=True)

    def observe(self) -> View:
        return self._read_group(self._live_client())[0]

    def _read_group(self, client: KazooClient, claim: bool = False) -> tuple[View, Any]:
        """Read the group in one round trip (``get`` and ``exists`` of the leader znode,
        ``get_children`` of the members, all with watches), after a ``create`` of the leader
        znode when ``claim``: the view, and the pending result of that ``create`` (or None).

        The watches' events that come while the reads are under way are judged by what the
        reads return (:func:`_stale`); the claim's own creation event is not news."""
        with self._events:  # before the reads: a watch that fires during them makes it True
            self._dirty, self._own_create = False, claim
            self._reading, self._read_during = True, []
        created = None
        try:
            if claim:
                created = client.create_async(
                    self._leader_path, _member_data(self.me), ephemeral=True, include_data=True
                )
            # The exists() watches the leader znode's creation when it is vacant (when it is
            # held, it sets the watch get() sets)
            leader = client.get_async(self._leader_path, watch=self._watch)
            exists = client.exists_async(self._leader_path, watch=self._watch)
            children = client.get_children_async(self._members_path, watch=self._watch)
            held = self._read_leader(client, watch=True, sent=leader, exists=exists)
            present = self._call(exists) is not None  # (what the watches set here send depends on it)
            labels = self._call(children)
            self._check_session()
        except BaseException:
            with self._events:
                self._dirty, self._reading, self._own_create = True, False, False
            raise
        members = ranked([m for m in map(member_from_label, labels) if m is not None])
        view = View(held[0] if held else None, members)
        with self._events:
            self._cached, self._present, self._reading = view, present, False
            if present != leader.successful() or any(not _stale(kind, present) for kind in self._read_during):
                self._dirty = True  # changed between the two reads, or an event that may be news
        return view, created

    def watched_view(self) -> View | None:
        """The view last read, while none of the watches its reads set has fired since."""
        cached = self._cached
        if self._dirty or cached is None:
            return None
        self._check_session()
        return cached

    def claim(self) -> int | None:
        """Create the leader znode and read the group in the same round trip (the reads go
        after the ``create``, so they show its outcome): won or lost, the cached view is
        current after the claim, and no read follows it."""
        client = self._live_client()
        view, created = self._read_group(client, claim=True)
        try:
            _, stat = self._call(created)
        except _Exists:
            self._own_create = False
            self._changed.set()  # the session thread takes the view read here, at once
            return None
        except BaseException:
            with self._events:
                self._own_create, self._dirty = False, True
            raise
        term = int(stat.czxid)
        self._claimed = (term, self._session_id)
        held = view.leadership
        if held is None or not held.mine or held.term != term:  # gone already: read again
            self._dirty = True
            self._changed.set()
        return term

    def release(self, term: int) -> None:
        """The member znode and (if this session holds the leadership of ``term``) the leader
        znode go in one transaction: the others' watches fire at once for both."""
        client = self._live_client()
        self._dirty, self._own_create = True, False
        if self._claimed == (term, self._session_id):
            # this very session created the leader znode of ``term`` and has not deleted it
            # (nothing else deletes it while the session lives): no need to read it first
            self._claimed = None
            transaction = client.transaction()
            transaction.delete(self._my_path)
            transaction.delete(self._leader_path, version=0)  # never written after its creation
            results = self._call(transaction.commit_async())
            if not any(isinstance(result, Exception) for result in results):
                return
        held = self._read_leader(client, watch=False)
        if held is not None and held[0].mine and held[0].term == term:
            transaction = client.transaction()
            transaction.delete(self._my_path)
            transaction.delete(self._leader_path, version=held[1])
            results = self._call(transaction.commit_async())
            if not any(isinstance(result, Exception) for result in results):
                return
            self._delete(client, self._leader_path, held[1])  # the member znode was gone: one by one
        self._delete(client, self._my_path)

    def rejoin(self) -> None:
        self._dirty = True
        self._register(self._live_client())

    def groups(self) -> list[GroupInfo]:
        client = self._live_client()
        try:
            names = self._call(client.get_children_async(self.config.prefix))
        except _Missing:
            return []
        found = []
        for quoted in sorted(names):
            leader = self._read_leader_at(client, f"{self.config.prefix}/{quoted}/leader")
            try:
                labels = self._call(client.get_children_async(f"{self.config.prefix}/{quoted}/members"))
            except _Missing:
                labels = []
            members = ranked([m for m in map(member_from_label, labels) if m is not None])
            found.append(GroupInfo(urllib.parse.unquote(quoted), View(leader, members)))
        return found

    # ----------------------------------------------------------------- helpers

    def _live_client(self) -> KazooClient:
        if self._client is None:
            raise CoordinatorError("not connected to ZooKeeper")
        self._check_session()
        return self._client

    def _check_session(self) -> None:
        client = self._client
        client_id = client.client_id if client is not None else None
        if self._lost or (client_id is not None and client_id[0] != self._session_id):
            raise SessionLost("the ZooKeeper session expired")
        if client_id is None:
            raise CoordinatorError("not connected to ZooKeeper (kazoo is reconnecting)")

    def _read_leader(
        self, client: KazooClient, watch: bool, sent: Any = None, exists: Any = None
    ) -> tuple[Leadership, int] | None:
        """The leadership and its znode's data version, or None (then watched for creation).

        :param sent: the pending result of the ``get`` (with the watch) if already sent.
        :param exists: the pending result of an ``exists`` with the watch sent after it."""
        if sent is None:
            sent = client.get_async(self._leader_path, watch=self._watch if watch else None)
        try:
            data, stat = self._call(sent)
        except _Missing:
            # vacant: be told when someone claims it (claimed in between: look again at once)
            if exists is None and watch:
                exists = client.exists_async(self._leader_path, watch=self._watch)
            if exists is not None and self._call(exists) is not None:
                self._dirty = True
                self._changed.set()
            return None
        if exists is not None:
            self._call(exists)  # (its watch is the one get() set)
        leader = member_from_json(data)
        if leader is None:
            log.warning("ignored the unreadable ZooKeeper node %s", self._leader_path)
            return None
        return Leadership(leader, int(stat.czxid), stat.ephemeralOwner == self._session_id), int(stat.version)

    def _read_leader_at(self, client: KazooClient, path: str) -> Leadership | None:
        try:
            data, stat = self._call(client.get_async(path))
        except _Missing:
            return None
        leader = member_from_json(data)
        return None if leader is None else Leadership(leader, int(stat.czxid), False)

    def _delete(self, client: KazooClient, path: str, version: int = -1) -> None:
        try:
            self._call(client.delete_async(path, version=version))
        except (_Missing, CoordinatorError) as exc:
            if not isinstance(exc, _Missing):
                raise

    def _call(self, result: Any, exists_ok: bool = False) -> Any:
        """Wait for one asynchronous kazoo request; kazoo errors become CoordinatorError."""
        try:
            return result.get(timeout=self._request_timeout)
        except NoNodeError as exc:
            raise _Missing(str(exc)) from exc
        except NodeExistsError as exc:
            if exists_ok:
                return None
            raise _Exists(str(exc)) from exc
        except SessionExpiredError as exc:
            raise SessionLost("the ZooKeeper session expired") from exc
        except KazooTimeoutError as exc:
            raise CoordinatorError(f"ZooKeeper did not answer within {self._request_timeout:g} s") from exc
        except KazooException as exc:
            raise CoordinatorError(f"ZooKeeper: {type(exc).__name__} {exc}".rstrip()) from exc


def _stale(kind: str, present: bool) -> bool:
    """Whether an event of the leader znode is about a change the last read already shows.

    The watch the last read set on the leader znode sends only its deletion or change when
    the znode was ``present``, only its creation when it was not; an event of the other kind
    comes from an older watch, for a change made before that read. (A deletion while present
    is never stale: it may come from the new watch.)"""
    if present:
        return bool(kind == EventType.CREATED)
    return kind in (EventType.DELETED, EventType.CHANGED)


class _Missing(CoordinatorError):
    """No such znode (internal)."""


class _Exists(CoordinatorError):
    """The znode exists (internal)."""


def _close_client(client: KazooClient) -> None:
    """End a kazoo session (closing it deletes its ephemeral znodes) and its threads."""
    try:
        client.stop()
        client.close()
    except Exception:  # closing must never raise
        log.debug("error while closing a ZooKeeper client", exc_info=True)
