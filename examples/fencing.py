"""Fencing tokens: a shared resource that refuses the writes of a stale leader.

::

    python examples/fencing.py sqlite /shared/fencing.db
    python examples/fencing.py redis redis://localhost:6379/0     # or unix:///run/redis.sock
    python examples/fencing.py file /shared/fencing.txt
    python examples/fencing.py postgresql postgresql://db.example/app  # elects through it too

A leader can lose its role in the middle of its work and not know it yet: its process was
paused (SIGSTOP, a garbage collection, a frozen virtual machine), or its host was cut off.
Meanwhile another node leads and writes. When the old leader resumes and writes, the shared
resource must refuse it. Each guard here stores the :attr:`FencingToken.key
<followtheleader.FencingToken.key>` of the last leadership that wrote, and accepts a write only
when the writer's key is not less than the stored one, in one atomic step:

* :class:`SqliteGuard`: one SQL statement (an upsert whose update has a ``WHERE``); the same
  statement runs on PostgreSQL;
* :class:`PostgreSQLEpochGuard`: for a group whose coordinator is PostgreSQL, the same
  statement on the epoch alone (the token's term), which that database gives out once per
  leadership;
* :class:`RedisGuard`: a Lua script, which Redis runs atomically;
* :class:`FileGuard`: a lock file (``flock``) around read, compare and an atomic rename.

Keys are 104 lowercase hex digits that sort, byte by byte, as the tokens do: greater for a
later term, and distinct for every leadership, including two leaders of one term on the two
sides of a partition. Equal keys are one leadership writing again, which is allowed.

The command line runs a demonstration: join group ``FTL_GROUP`` and, while leading, every
``JOB_PERIOD`` seconds do ``WORK_SECONDS`` of (simulated) work, then write through the guard.
Start it on several hosts against one resource, pause the leader (``kill -STOP``) during its
work until another node leads and writes, then resume it (``kill -CONT``): its write is
refused. With ``postgresql URL`` the group is elected through that database as well (its
coordinator, with a TTL of ``COORDINATOR_TTL`` seconds, default 10), so that the guard's
epoch is the group's. It needs the ``redis`` package for the Redis guard only, and
``psycopg`` for the PostgreSQL one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import sqlite3
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from followtheleader import Elector, Event, FencingToken, State, elect

if TYPE_CHECKING:
    import redis

__all__ = ["FileGuard", "PostgreSQLEpochGuard", "RedisGuard", "SqliteGuard"]

log = logging.getLogger("fencing")

GROUP = os.environ.get("FTL_GROUP", "fencing-example")
JOB_PERIOD = float(os.environ.get("JOB_PERIOD", "5"))
WORK_SECONDS = float(os.environ.get("WORK_SECONDS", "1"))
COORDINATOR_TTL = float(os.environ.get("COORDINATOR_TTL", "10"))


def _checked_key(token: FencingToken) -> str:
    """The token's key, checked, so that nothing but a key ever reaches the resource."""
    key = token.key
    FencingToken.from_key(key)  # raises ValueError for anything that is not a key
    return key


# --------------------------------------------------------------------- SQL


class SqliteGuard:
    """A row ``name`` of table ``fenced`` in an SQLite database, written only by the newest leadership.

    Each call opens its own connection, so any thread may call it. SQLite compares ``TEXT``
    with the ``BINARY`` collation (byte by byte) unless told otherwise, as the keys need.

    :param path: the database file (created if needed).
    :param name: the row (one per guarded resource).
    """

    CREATE = """
        CREATE TABLE IF NOT EXISTS fenced (
            name      TEXT PRIMARY KEY,
            fence_key TEXT NOT NULL CHECK (length(fence_key) = 104),
            value     TEXT NOT NULL
        )
    """
    WRITE = """
        INSERT INTO fenced (name, fence_key, value) VALUES (:name, :key, :value)
        ON CONFLICT (name) DO UPDATE SET fence_key = excluded.fence_key, value = excluded.value
        WHERE fenced.fence_key <= excluded.fence_key
    """
    """Insert the row, or update it if the stored key is not greater: one atomic statement.
    When the ``WHERE`` is false, nothing changes and the statement reports 0 rows."""

    def __init__(self, path: str | os.PathLike[str], name: str = "singleton") -> None:
        self.path = os.fspath(path)
        self.name = name
        with self._connect() as db:
            db.execute(self.CREATE)

    def _connect(self) -> contextlib.closing[sqlite3.Connection]:
        return contextlib.closing(sqlite3.connect(self.path, timeout=30))

    def write(self, token: FencingToken, value: str) -> bool:
        """Store ``value`` unless a greater token has written; True if it was written."""
        with self._connect() as db, db:  # the inner ``with db`` commits, or rolls back on error
            cursor = db.execute(self.WRITE, {"name": self.name, "key": _checked_key(token), "value": value})
            return cursor.rowcount == 1

    def read(self) -> tuple[str, str] | None:
        """``(key, value)`` of the last accepted write, or None before any."""
        with self._connect() as db:
            row = db.execute("SELECT fence_key, value FROM fenced WHERE name = ?", (self.name,)).fetchone()
        return None if row is None else (row[0], row[1])


class PostgreSQLEpochGuard:
    """A row ``name`` of table ``fenced_epoch`` in PostgreSQL, written only by the newest
    leadership: for a group whose coordinator is PostgreSQL, the fence is the epoch (the
    token's term), in the same database as the coordinator's tables if you like.

    ``dsn`` is a libpq connection string or URL; each call opens its own connection (any
    thread). The statement is one atomic compare-and-set in autocommit, so it works through
    pgbouncer in transaction mode.

    Only the term is compared: two tokens of one term count as one leadership. That holds for
    a PostgreSQL group, whose epoch grows with every claim, but not for mDNS or listed peers,
    where two sides of a partition can lead with one term: fence those by key
    (:class:`SqliteGuard`'s statement runs on PostgreSQL too).
    """

    CREATE = """
        CREATE TABLE IF NOT EXISTS fenced_epoch (
            name  text PRIMARY KEY,
            epoch bigint NOT NULL,
            value text NOT NULL
        )
    """
    WRITE = """
        INSERT INTO fenced_epoch (name, epoch, value) VALUES (%(name)s, %(epoch)s, %(value)s)
        ON CONFLICT (name) DO UPDATE SET epoch = excluded.epoch, value = excluded.value
        WHERE fenced_epoch.epoch <= excluded.epoch
    """
    """Insert the row, or update it if the stored epoch is not greater: 0 rows when fenced."""

    def __init__(self, dsn: str, name: str = "singleton") -> None:
        import psycopg  # only this guard needs the package

        self._psycopg = psycopg
        self.dsn = dsn
        self.name = name
        for attempt in range(3):  # copies starting at once can race on CREATE TABLE IF NOT EXISTS
            try:
                with self._connect() as db:
                    db.execute(self.CREATE)
                return
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                if attempt == 2:
                    raise

    def _connect(self) -> Any:
        return self._psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None)

    def write(self, token: FencingToken, value: str) -> bool:
        """Store ``value`` unless a greater epoch has written; True if it was written."""
        with self._connect() as db:
            cursor = db.execute(self.WRITE, {"name": self.name, "epoch": int(token.term), "value": value})
            return bool(cursor.rowcount == 1)

    def read(self) -> tuple[int, str] | None:
        """``(epoch, value)`` of the last accepted write, or None before any."""
        with self._connect() as db:
            row = db.execute("SELECT epoch, value FROM fenced_epoch WHERE name = %s", (self.name,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))


# --------------------------------------------------------------------- Redis


class RedisGuard:
    """A Redis hash ``name`` (fields ``fence_key`` and ``value``), written only by the newest leadership.

    The comparison and the write run in one Lua script, which Redis runs atomically. The
    script refuses anything that is not a key, so other clients (in any language) may call it
    with ``EVAL`` or ``EVALSHA`` too.

    :param client: a ``redis.Redis`` client (thread-safe: it has a connection pool).
    :param name: the Redis key of the hash.
    """

    SCRIPT = """
        local key = ARGV[1]
        if #key ~= 104 or string.find(key, '[^0-9a-f]') then
            return redis.error_reply('ERR not a fencing token key')
        end
        local stored = redis.call('HGET', KEYS[1], 'fence_key')
        if stored and key < stored then
            return 0
        end
        redis.call('HSET', KEYS[1], 'fence_key', key, 'value', ARGV[2])
        return 1
    """
    """KEYS[1]: the hash; ARGV[1]: the writer's key; ARGV[2]: the value. Returns 1 when written.
    ``HGET`` gives false for a missing field: the first write is always accepted. Lua compares
    strings with ``strcoll``; keys are one width and only digits and ``a``-``f``, whose order
    is the same in every locale."""

    def __init__(self, client: redis.Redis, name: str = "fenced:singleton") -> None:
        self.client = client
        self.name = name
        self._script = client.register_script(self.SCRIPT)  # EVALSHA, loading the script when needed

    def write(self, token: FencingToken, value: str) -> bool:
        """Store ``value`` unless a greater token has written; True if it was written."""
        return bool(self._script(keys=[self.name], args=[_checked_key(token), value]))

    def read(self) -> tuple[str, str] | None:
        """``(key, value)`` of the last accepted write, or None before any."""
        found: list[Any] = self.client.hmget(self.name, ["fence_key", "value"])
        key, value = (item.decode() if isinstance(item, bytes) else item for item in found)
        return None if key is None else (key, value)


# --------------------------------------------------------------------- a plain file


class FileGuard:
    """A file that holds the key of the last leadership that wrote (first line) and its value.

    A write takes an exclusive ``flock`` on ``PATH.lock``, reads the stored key, and when the
    writer's key is not less, writes ``PATH.tmp``, flushes it to disk and renames it over
    ``PATH``. Writers on one host are serialised by the lock; readers need no lock, since
    the rename replaces the whole file at once, and a crash leaves the old file or the new one,
    never half of one. On a network file system this holds only as far as its locks do (see
    the recipe's page).

    :param path: the data file; ``PATH.lock`` and ``PATH.tmp`` are created beside it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._tmp_path = self.path.with_name(self.path.name + ".tmp")

    def write(self, token: FencingToken, value: str) -> bool:
        """Store ``value`` unless a greater token has written; True if it was written.

        :raises ValueError: when the file exists but does not start with a key.
        """
        key = _checked_key(token)
        with open(self.lock_path, "a") as lock:  # "a": create it, never truncate it
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            stored = self.read()
            if stored is not None and key < stored[0]:
                return False
            with open(self._tmp_path, "w", encoding="utf-8") as tmp:
                tmp.write(f"{key}\n{value}")
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(self._tmp_path, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename itself reaches the disk
            finally:
                os.close(directory)
        return True

    def read(self) -> tuple[str, str] | None:
        """``(key, value)`` of the last accepted write, or None before any.

        :raises ValueError: when the file exists but does not start with a key.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        key, _, value = text.partition("\n")
        FencingToken.from_key(key)
        return key, value


# --------------------------------------------------------------------- the demonstration

Guard = SqliteGuard | RedisGuard | FileGuard | PostgreSQLEpochGuard


def libpq_url(coordinator_url: str) -> str:
    """``coordinator_url`` without followtheleader's own settings (``schema``,
    ``table_prefix``), which libpq would refuse."""
    base, _, query = coordinator_url.partition("?")
    kept = [
        (k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if k not in ("schema", "table_prefix")
    ]
    return f"{base}?{urllib.parse.urlencode(kept)}" if kept else base


def make_guard(kind: str, target: str) -> Guard:
    """The guard of the command line: ``sqlite PATH``, ``redis URL``, ``file PATH`` or
    ``postgresql URL``."""
    if kind == "sqlite":
        return SqliteGuard(target)
    if kind == "file":
        return FileGuard(target)
    if kind == "redis":
        import redis  # only this guard needs the package

        return RedisGuard(redis.Redis.from_url(target))
    if kind == "postgresql":  # the coordinator URL; its own settings (schema...) are not libpq's
        return PostgreSQLEpochGuard(libpq_url(target))
    raise ValueError(f"unknown guard {kind!r}: use sqlite, redis, file or postgresql")


def stored_term(stored: tuple[str, str] | tuple[int, str] | None) -> int | None:
    """The term of a guard's :meth:`read`: a key's term, or the epoch itself."""
    if stored is None:
        return None
    fence = stored[0]
    return fence if isinstance(fence, int) else FencingToken.from_key(fence).term


def do_work(elector: Elector, guard: Guard, token: FencingToken) -> None:
    """One round of the singleton work under ``token``; a write a newer leader fenced off is refused."""
    log.info("job: working (term %d, token %s)", token.term, token.key)
    if elector.join(timeout=WORK_SECONDS):  # the work itself; stop early if the elector stops
        return
    # No is_leader check here on purpose: however late the last check, a pause can come right
    # after it. The resource itself refuses a write from an older leadership.
    value = f"written by {elector.node_id} at {socket.gethostname()} in term {token.term}"
    if guard.write(token, value):
        log.info("job: wrote (term %d, token %s)", token.term, token.key)
    else:
        newer = stored_term(guard.read())
        log.info(
            "job: refused (term %d, token %s): term %s wrote since",
            token.term,
            token.key,
            "?" if newer is None else newer,
        )


def log_role(event: Event) -> None:
    """Elector callback for every role event; on the elector's callback thread: keep it short."""
    if event.kind == "leader":
        assert event.fencing_token is not None
        log.info("leading now, term %d, token %s", event.term, event.fencing_token.key)
    elif event.kind == "follower" and event.leader is not None:
        log.info("following %s, term %d", event.leader.node_id, event.term)
    if event.kind != "leader" and event.previous_state is State.LEADER:
        log.info("not leading any more: %s", event.reason)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")
    if len(argv) != 2:
        print("usage: fencing.py sqlite PATH | redis URL | file PATH | postgresql URL", file=sys.stderr)
        return 2
    kind, target = argv
    guard = make_guard(kind, target)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    if kind == "postgresql":  # the epoch guard fences with the group's own epoch: elect through that database
        elector = elect(GROUP, coordinator=target, coordinator_ttl=COORDINATOR_TTL)
    else:
        elector = elect(GROUP)
    for event_kind in ("leader", "follower", "reelection"):
        elector.on(event_kind, log_role)
    with elector:
        log.info("joined group %r as node %s", GROUP, elector.node_id)
        while not elector.join(timeout=JOB_PERIOD):
            token = elector.fencing_token  # read first: never newer than the leadership checked next
            if token is not None and elector.is_leader:
                do_work(elector, guard, token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
