"""PostgreSQL coordinator, through psycopg 3.

Layout: two tables in the URL's ``schema`` (default ``public``), their names prefixed with
``table_prefix`` (default ``followtheleader_``):

* ``<prefix>leader``: one row per group: the holder, its session, the ``epoch`` (a bigint that
  grows with every new leadership: the term and the fencing token) and the expiry. A released
  or lapsed leadership keeps its row (expiry ``-infinity``), so an epoch never repeats.
* ``<prefix>member``: one row per member of a group, with its session and expiry.

Every expiry is computed by the server's clock (``clock_timestamp()``): the members' clocks
play no part. Acquire, renew and release are each one compare-and-set statement; the driver
uses no advisory lock, no transaction spanning statements and no prepared statement
(``prepare_threshold=None``), so it works through pgbouncer in transaction mode.

Handovers are pushed by ``NOTIFY`` (sent by the release and claim statements themselves) to a
second connection that ``LISTEN``\\ s. When that connection cannot hear its own probe (behind
a transaction pooler LISTEN does not work), the driver logs it once at INFO and reads the
group at every renewal instead, and also just after another holder's row expires (its
remaining time computed by the server: ``expires - clock_timestamp()``) and, while the
leadership is vacant, soon after each read (to learn the successor's claim): a crashed
leader's successor is agreed on within the TTL and a few round trips, at no extra request
while the leader is alive.

Epochs rest on the durability of the commit: keep ``synchronous_commit`` on.

Threads: every method runs on the elector's session thread, but :meth:`wake` (any thread).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import selectors
import socket
import time
import urllib.parse
import uuid
from typing import Any

import psycopg
from psycopg import sql

from .._core.lease import Leadership, View
from .._core.model import Member
from .base import Coordinator, CoordinatorConfig, CoordinatorError, GroupInfo, SessionLost, ranked

__all__ = ["PostgreSQLCoordinator", "schema_sql"]

log = logging.getLogger(__name__)

_OWN_SETTINGS = frozenset({"schema", "table_prefix"})
_PROBE_WAIT = 1.0
"""Seconds the listening connection is given to hear its own probe notification."""

_VACANT_POLL = 0.05
"""Polling mode: seconds from a read that found the leadership vacant to the next read,
doubled at each vacant read up to the renewal period (a vacancy that lasts costs no more)."""

_polling_logged = False

_GROUP_ROWS = (
    " UNION ALL SELECT 'L', holder, priority, epoch, session,"
    " extract(epoch FROM expires - clock_timestamp())::float8 FROM {leader}"
    " WHERE grp = %(g)s AND expires > clock_timestamp()"
    " UNION ALL SELECT 'M', node_id, priority, 0::bigint, session, 0::float8 FROM {member}"
    " WHERE grp = %(g)s AND active AND expires > clock_timestamp()"
)
"""The rows of a group's read, after the first (``'S'``: whether this member's row was
renewed): ``'L'`` the live leadership, with the seconds it has left by the server's clock,
and ``'M'`` each active member."""


def schema_sql(schema: str = "public", table_prefix: str = "followtheleader_") -> list[sql.Composed]:
    """The statements that create the driver's tables (idempotent), for users who manage
    migrations themselves (see the docs page "Beyond one subnet")."""
    leader = sql.Identifier(schema, table_prefix + "leader")
    member = sql.Identifier(schema, table_prefix + "member")
    statements = []
    if schema != "public":
        statements.append(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    statements.append(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " grp text PRIMARY KEY, holder text NOT NULL, priority integer NOT NULL,"
            " session text NOT NULL, epoch bigint NOT NULL, expires timestamptz NOT NULL)"
        ).format(leader)
    )
    statements.append(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " grp text NOT NULL, node_id text NOT NULL, priority integer NOT NULL,"
            " session text NOT NULL, expires timestamptz NOT NULL, active boolean NOT NULL,"
            " PRIMARY KEY (grp, node_id))"
        ).format(member)
    )
    return statements


class PostgreSQLCoordinator(Coordinator):
    """One member's rows in PostgreSQL (see :class:`followtheleader._coordinators.base.Coordinator`)."""

    service = "PostgreSQL"

    def __init__(self, config: CoordinatorConfig, group: str, me: Member, ttl: float) -> None:
        super().__init__(config, group, me, ttl)
        self._schema = config.setting("schema") or "public"
        self._table_prefix = config.setting("table_prefix") or "followtheleader_"
        self._leader = sql.Identifier(self._schema, self._table_prefix + "leader")
        self._member = sql.Identifier(self._schema, self._table_prefix + "member")
        digest = hashlib.sha1(f"{self._schema}.{self._table_prefix}.{group}".encode()).hexdigest()[:20]
        self._channel = f"followtheleader_{digest}"
        self._timeout = max(1.0, ttl / 4)
        self._conn: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_works = True
        self._session = ""
        self._tables_ready = False
        self._view: View | None = None
        self._viewed_at = 0.0
        self._dirty = True
        self._fresh = False
        """True from :meth:`keep_alive` to the next :meth:`observe`, which returns its view."""
        self._poll_at: float | None = None
        """Polling mode: the monotonic time of the next read before the renewal period's
        (another holder's row expires, or the leadership was vacant); :meth:`wait` ends then."""
        self._vacant_poll = _VACANT_POLL
        self._wake_pair: tuple[socket.socket, socket.socket] | None = None
        """A socket pair that :meth:`wake` writes to and :meth:`wait` selects on; made by
        :meth:`open`, closed by :meth:`close`."""

    @staticmethod
    def _make_wake_pair() -> tuple[socket.socket, socket.socket]:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        return reader, writer

    # ----------------------------------------------------------------- connections

    def _connect(self) -> psycopg.Connection[Any]:
        config = self.config
        params: dict[str, Any] = {key: value for key, value in config.query if key not in _OWN_SETTINGS}
        params.setdefault("connect_timeout", str(max(2, round(self._timeout))))
        params.setdefault("tcp_user_timeout", str(int(self._timeout * 1000)))
        params.setdefault("keepalives_idle", str(max(1, int(self._timeout))))
        params.setdefault("keepalives_interval", "1")
        params.setdefault("keepalives_count", "3")
        params.setdefault("application_name", "followtheleader")
        if config.tls:
            params.setdefault("sslmode", "require")
        try:
            return psycopg.connect(
                # A percent-encoded host such as %2Fvar%2Frun%2Fpostgresql is a Unix-socket
                # directory, as in libpq's own URIs.
                host=",".join(urllib.parse.unquote(host) for host, _ in config.hosts),
                port=",".join(str(port) for _, port in config.hosts),
                dbname=config.path or None,
                user=config.username,
                password=config.password,
                autocommit=True,
                prepare_threshold=None,
                **params,
            )
        except psycopg.Error as exc:
            raise CoordinatorError(f"cannot connect to PostgreSQL: {_describe(exc)}") from exc

    def _execute(self, query: sql.SQL | sql.Composed, args: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """One statement in autocommit; a dead connection is replaced on the next call."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        if not self._tables_ready:
            self._create_tables(self._conn)
        try:
            cursor = self._conn.execute(query, args)
            return cursor.fetchall() if cursor.description is not None else []
        except psycopg.OperationalError as exc:
            self._drop(self._conn)
            self._conn = None
            raise CoordinatorError(f"PostgreSQL: {_describe(exc)}") from exc
        except psycopg.Error as exc:
            raise CoordinatorError(f"PostgreSQL: {_describe(exc)}") from exc

    def _create_tables(self, conn: psycopg.Connection[Any]) -> None:
        """``CREATE ... IF NOT EXISTS``; two members racing on a new database may collide on
        the catalog's unique index: the loser tries again, and then finds the tables."""
        for attempt in range(3):
            try:
                for statement in schema_sql(self._schema, self._table_prefix):
                    conn.execute(statement)
                self._tables_ready = True
                return
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
                if attempt == 2:
                    raise
            except psycopg.OperationalError as exc:
                self._drop(conn)
                self._conn = None
                raise CoordinatorError(f"PostgreSQL: {_describe(exc)}") from exc
            except psycopg.Error as exc:
                raise CoordinatorError(f"cannot create the tables: {_describe(exc)}") from exc

    @staticmethod
    def _drop(conn: psycopg.Connection[Any] | None) -> None:
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing must never raise
                log.debug("error while closing a PostgreSQL connection", exc_info=True)

    def _listen(self) -> None:
        """Open the listening connection and check that it hears its own probe; else poll."""
        global _polling_logged
        if not self._listen_works or self._listener is not None:
            return
        try:
            listener = self._connect()
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            probe = f"probe {self._session}"
            self._execute(sql.SQL("SELECT pg_notify(%(c)s, %(p)s)"), {"c": self._channel, "p": probe})
            deadline = time.monotonic() + _PROBE_WAIT
            heard = False
            while not heard and time.monotonic() < deadline:
                heard = any(n.payload == probe for n in listener.notifies(timeout=0.1, stop_after=1))
        except (psycopg.Error, CoordinatorError):
            log.debug("could not listen on PostgreSQL", exc_info=True)
            return
        if heard:
            listener.pgconn.nonblocking = 1
            self._listener = listener
            return
        self._drop(listener)
        self._listen_works = False
        if not _polling_logged:
            _polling_logged = True
            log.info(
                "%s: notifications do not arrive (a transaction pooler?): reading the group every %.1f s",
                self.config.url,
                self.ttl * self.renew_fraction,
            )

    # ----------------------------------------------------------------- session

    def connect_only(self) -> None:
        self._execute(sql.SQL("SELECT 1"))

    def open(self) -> None:
        self.close()
        self._wake_pair = self._make_wake_pair()
        self._session = uuid.uuid4().hex
        self._execute(sql.SQL("SELECT 1"))
        self._listen()

    def keep_alive(self) -> float:
        """Renew this member's row (and its leadership's) and read the group: one statement,
        sent only when a notification came, a fifth of the TTL has passed or the leadership
        was vacant (the claim must rest on a fresh view)."""
        started = time.monotonic()
        self._fresh = False
        view = self._view
        vacant = view is None or view.leadership is None
        if not vacant and not self._dirty and started - self._viewed_at < self.ttl * self.renew_fraction:
            self._fresh = True
            return self._viewed_at + self.ttl - started
        query = sql.SQL(
            "WITH m AS (UPDATE {member} SET expires = clock_timestamp() + %(ttl)s * interval '1 second'"
            " WHERE grp = %(g)s AND node_id = %(n)s AND session = %(s)s AND expires > clock_timestamp()"
            " RETURNING 1),"
            " l AS (UPDATE {leader} SET expires = clock_timestamp() + %(ttl)s * interval '1 second'"
            " WHERE grp = %(g)s AND session = %(s)s AND expires > clock_timestamp() RETURNING 1)"
            " SELECT 'S', '', (SELECT count(*) FROM m)::integer, 0::bigint, '', 0::float8" + _GROUP_ROWS
        ).format(member=self._member, leader=self._leader)
        self._dirty = False
        self._poll_at = None
        rows = self._execute(query, self._args())
        if self._listen_works and self._listener is None:
            self._listen()  # it died with the server: listen again
        view, alive = self._read_view(rows)
        if not alive:
            self._view = None
            raise SessionLost("this member's PostgreSQL row expired")
        self._view, self._viewed_at, self._fresh = view, started, True
        return self.ttl

    def _schedule_poll(self, view: View, expires_in: float | None) -> None:
        """Polling mode: when to read again before the renewal period, after reading ``view``
        (``expires_in``: the seconds its leadership had left, by the server's clock). The row
        was read before now, so it has expired ``expires_in`` seconds after now."""
        if self._listen_works:
            return
        now = time.monotonic()
        leadership = view.leadership
        self._poll_at = None
        if leadership is None:
            self._poll_at = now + self._vacant_poll
            self._vacant_poll = min(2 * self._vacant_poll, self.ttl * self.renew_fraction)
            return
        self._vacant_poll = _VACANT_POLL
        if not leadership.mine and expires_in is not None:
            self._poll_at = now + max(0.0, expires_in)

    def _args(self) -> dict[str, Any]:
        return {
            "ttl": self.ttl,
            "g": self.group,
            "n": self.me.node_id,
            "p": self.me.priority,
            "s": self._session,
            "c": self._channel,
        }

    def _read_view(self, rows: list[tuple[Any, ...]]) -> tuple[View, bool]:
        """The view in ``rows`` (of :data:`_GROUP_ROWS`), and whether this member's row was
        renewed; schedules the next early poll (:meth:`_schedule_poll`)."""
        alive = True
        leadership = None
        expires_in = None
        members = []
        for kind, name, priority, epoch, session, remaining in rows:
            if kind == "S":
                alive = priority > 0
            elif kind == "L":
                mine = bool(self._session) and session == self._session
                leadership = Leadership(Member(name, int(priority)), int(epoch), mine)
                expires_in = float(remaining)
            else:
                members.append(Member(name, int(priority)))
        view = View(leadership, ranked(members))
        self._schedule_poll(view, expires_in)
        return view, alive

    def close(self) -> None:
        """Delete this member's row and end its leadership (one statement), then disconnect."""
        if self._session and self._conn is not None and not self._conn.closed:
            try:
                self._release_statement(None)
            except CoordinatorError:  # the rows then expire by themselves
                log.debug("could not delete this member's PostgreSQL rows", exc_info=True)
        self._session = ""
        self._view = None
        self._dirty = True
        self._poll_at = None
        self._vacant_poll = _VACANT_POLL
        self._drop(self._listener)
        self._listener = None
        self._drop(self._conn)
        self._conn = None
        pair, self._wake_pair = self._wake_pair, None
        if pair is not None:
            pair[0].close()
            pair[1].close()

    def wait(self, timeout: float) -> None:
        """Wait for a notification of the group, a :meth:`wake`, an early poll (polling mode:
        :meth:`_schedule_poll`) or ``timeout`` seconds."""
        listener, pair, poll_at = self._listener, self._wake_pair, self._poll_at
        if pair is None:
            time.sleep(timeout)  # not open: nothing to wait for
            return
        if poll_at is not None:
            timeout = max(0.0, min(timeout, poll_at - time.monotonic()))
        with selectors.DefaultSelector() as selector:
            selector.register(pair[0], selectors.EVENT_READ)
            if listener is not None:
                selector.register(listener.fileno(), selectors.EVENT_READ)
            ready = selector.select(timeout)
        if poll_at is not None and time.monotonic() >= poll_at:
            self._dirty = True  # the next keep_alive reads the group
        for key, _ in ready:
            if key.fileobj is pair[0]:
                try:
                    while pair[0].recv(64):
                        pass
                except BlockingIOError:
                    pass
                self._dirty = True
        if listener is not None and ready:
            try:
                listener.pgconn.consume_input()
                while listener.pgconn.notifies() is not None:
                    self._dirty = True
            except psycopg.Error:
                log.debug("the PostgreSQL listening connection died", exc_info=True)
                self._drop(listener)
                self._listener = None
                self._dirty = True

    def wake(self) -> None:
        pair = self._wake_pair
        if pair is not None:
            with contextlib.suppress(OSError):  # already woken (a full buffer), or closed
                pair[1].send(b"x")

    # ----------------------------------------------------------------- election

    def join(self) -> None:
        """End what an older session of this node left (its leadership has lapsed locally),
        then register: one statement each."""
        query = sql.SQL(
            "UPDATE {leader} SET expires = '-infinity', session = ''"
            " WHERE grp = %(g)s AND holder = %(n)s AND session <> %(s)s AND expires > clock_timestamp()"
        ).format(leader=self._leader)
        self._execute(query, self._args())
        self.rejoin()

    def observe(self) -> View:
        """The view :meth:`keep_alive` has just read, or a read of the group (one statement)."""
        fresh, self._fresh = self._fresh, False
        if fresh and self._view is not None:
            return self._view
        query = sql.SQL("SELECT 'S', '', 1, 0::bigint, '', 0::float8" + _GROUP_ROWS).format(
            member=self._member, leader=self._leader
        )
        view, _ = self._read_view(self._execute(query, self._args()))
        return view

    def claim(self) -> int | None:
        """Take the leadership if it is vacant or lapsed: one statement; the epoch grows."""
        query = sql.SQL(
            "WITH c AS (INSERT INTO {leader} AS l (grp, holder, priority, session, epoch, expires)"
            " SELECT %(g)s, %(n)s, %(p)s, %(s)s, 1, clock_timestamp() + %(ttl)s * interval '1 second'"
            " WHERE EXISTS (SELECT 1 FROM {member} WHERE grp = %(g)s AND node_id = %(n)s"
            " AND session = %(s)s AND active AND expires > clock_timestamp())"
            " ON CONFLICT (grp) DO UPDATE SET holder = excluded.holder, priority = excluded.priority,"
            " session = excluded.session, epoch = l.epoch + 1, expires = excluded.expires"
            " WHERE l.expires <= clock_timestamp() RETURNING l.epoch)"
            " SELECT epoch, pg_notify(%(c)s, 'claim') FROM c"
        ).format(leader=self._leader, member=self._member)
        rows = self._execute(query, self._args())
        self._dirty = True
        return int(rows[0][0]) if rows else None

    def _release_statement(self, term: int | None) -> None:
        """End this member's leadership (of ``term``, or any) and withdraw (``term`` given) or
        delete (``None``: closing) its row: one statement."""
        change = "UPDATE {member} SET active = false" if term is not None else "DELETE FROM {member}"
        query = sql.SQL(
            "WITH d AS (" + change + " WHERE grp = %(g)s AND node_id = %(n)s AND session = %(s)s),"
            " u AS (UPDATE {leader} SET expires = '-infinity', session = ''"
            " WHERE grp = %(g)s AND session = %(s)s AND (%(t)s::bigint IS NULL OR epoch = %(t)s::bigint)"
            " RETURNING 1)"
            " SELECT pg_notify(%(c)s, 'release')"
        ).format(leader=self._leader, member=self._member)
        self._execute(query, {**self._args(), "t": term})

    def release(self, term: int) -> None:
        self._release_statement(term)
        self._dirty = True

    def rejoin(self) -> None:
        query = sql.SQL(
            "INSERT INTO {member} (grp, node_id, priority, session, expires, active)"
            " VALUES (%(g)s, %(n)s, %(p)s, %(s)s, clock_timestamp() + %(ttl)s * interval '1 second', true)"
            " ON CONFLICT (grp, node_id) DO UPDATE SET priority = excluded.priority,"
            " session = excluded.session, expires = excluded.expires, active = true"
            " RETURNING pg_notify(%(c)s, 'join')"
        ).format(member=self._member)
        self._execute(query, self._args())
        self._dirty = True

    def groups(self) -> list[GroupInfo]:
        query = sql.SQL(
            "SELECT 'L', grp, holder, priority, epoch FROM {leader} WHERE expires > clock_timestamp()"
            " UNION ALL SELECT 'M', grp, node_id, priority, 0 FROM {member}"
            " WHERE active AND expires > clock_timestamp()"
        ).format(leader=self._leader, member=self._member)
        leaders: dict[str, Leadership] = {}
        members: dict[str, list[Member]] = {}
        for kind, grp, name, priority, epoch in self._execute(query):
            members.setdefault(grp, [])
            if kind == "L":
                leaders[grp] = Leadership(Member(name, int(priority)), int(epoch), False)
            else:
                members[grp].append(Member(name, int(priority)))
        return [GroupInfo(grp, View(leaders.get(grp), ranked(found))) for grp, found in sorted(members.items())]


def _describe(exc: BaseException) -> str:
    """A few words on a psycopg error (its first line)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no detail'}"
