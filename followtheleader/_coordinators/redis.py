"""Redis coordinator, through redis-py: ``redis://``, ``rediss://`` (TLS), ``unix://`` and
``redis+sentinel://`` (the primary of a Sentinel service).

One Redis primary holds the group; this is not Redlock (several independent primaries
voting): Redlock's safety rests on bounded clock drift and process pauses, which this
library does not assume, and it gives no fencing token. Here a fencing token comes from one
counter on the one primary, so a stale leader's writes can be refused (see the docs page
"Beyond one subnet").

Keys, under the URL's ``prefix`` setting (``/followtheleader`` by default)::

    <prefix>/<quoted group>/leader    "<term> <session> <label>", with a TTL (PX)
    <prefix>/<quoted group>/fence     the fencing counter: each claim INCRs it
    <prefix>/<quoted group>/members   sorted set: "<label> <session>" -> its expiry (server time in ms)
    <prefix>/<quoted group>/events    pub/sub channel: a message on each claim, release and join

A Redis "session" is a random id made by :meth:`RedisCoordinator.open`: the leader key names
it, and only that session may renew (PEXPIRE) or release (DEL) the key, each checked in one
Lua script. A member's entry is scored with its expiry, the server's time at its last
renewal plus its TTL; past it, the member is dead to the others (expired entries are removed
on claims and joins).

The term (fencing token) is the fence counter after INCR, in the same script as the SET NX
that takes the leadership. It never repeats, even when Redis restarts without persistence and
loses the counter: a missing counter is seeded from the server's ``TIME`` in microseconds, so
a new token is greater than any token given before, as long as the server's clock did not go
back and fewer than one claim per microsecond was made since the counter was first seeded.

With ``redis+sentinel://HOST:26379[,HOST...]/SERVICE[/DB]`` the client asks the sentinels for
the service's primary (redis-py's ``Sentinel.master_for``) on every new connection, so after a
failover the next request, which fails on the old primary, reconnects to the promoted
replica. Replication is asynchronous: a claim or renewal the old primary acknowledged may be
missing on the replica promoted. Two things follow (see the docs page "Beyond one subnet"):
a leader whose key was lost leads on by its local lease beside a successor, and the fence
counter may be behind. Against the second, a claim through Sentinel sets the counter to the
server's ``TIME`` in microseconds when that is greater than the counter plus one: a token is
then the claim's time, which grows across a failover as long as the promoted replica's clock
is not behind the old primary's by more than the time between the two claims.

Idle cost: one renewal is one ``EVALSHA`` running ``TIME``, ``ZRANGE`` (the live entries,
among which this member's must be: an expired entry is not renewed), ``ZADD``, ``GET`` (and
``PEXPIRE`` for the leader): 5 (6) commands in ``INFO stats`` ``total_commands_processed``,
which counts the commands a script runs too. The session thread renews every
``renew_fraction`` (0.6) of the TTL: at most 0.83 (1.0) commands per second per member at
the default TTL of 10 s (the pub/sub connection costs nothing while the group is quiet). The local lease
ends a fifth of the TTL before the server's key could expire, so a failed renewal leaves a
fifth of the TTL (2 s by default) for the retries (the first after 0.1 s, then doubling).

Changes are pushed: :meth:`RedisCoordinator.wait` blocks on the pub/sub connection and on a
socket pair that :meth:`RedisCoordinator.wake` writes to. redis-py reconnects on the next
command after the server restarts; the subscription is made again with the connection.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import select
import socket
import time
import urllib.parse
from typing import Any

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._core.lease import Leadership, View
from .._core.model import Member
from .base import (
    Coordinator,
    CoordinatorConfig,
    CoordinatorError,
    GroupInfo,
    SessionLost,
    member_from_label,
    member_label,
    quote_group,
    ranked,
)

__all__ = ["FRESH", "SENTINEL_SCHEME", "RedisCoordinator"]

log = logging.getLogger(__name__)

FRESH = 0.05
"""Seconds after a renewal during which :meth:`RedisCoordinator.observe` returns the group as
the renewal read it (the session thread observes right after renewing) instead of reading it
again: one script per round."""

SENTINEL_SCHEME = "redis+sentinel"
"""The scheme whose URL names sentinels and a service, not the primary."""

# KEYS: leader, members. ARGV: my label, my leader value ("" when I hold nothing), ttl ms.
# Returns {my entry was there (0/1), leader value or false, live member labels}.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local live = redis.call('ZRANGE', KEYS[2], now, '+inf', 'BYSCORE')
local present = 0
if ARGV[1] ~= '' then
  for _, entry in ipairs(live) do
    if entry == ARGV[1] then present = 1 end
  end
  if present == 1 then redis.call('ZADD', KEYS[2], 'XX', now + ttl, ARGV[1]) end
end
local leader = redis.call('GET', KEYS[1])
if leader and ARGV[2] ~= '' and leader == ARGV[2] then redis.call('PEXPIRE', KEYS[1], ttl) end
return {present, leader, live}
"""

# KEYS: leader, fence, members, channel. ARGV: session, label, ttl ms, "clock" or "".
# Returns the new term, or false when the leadership is held. With "clock" (Sentinel), the
# term is at least the server's TIME in microseconds: a replica promoted with a stale
# counter still gives a greater token than the old primary gave (its clock permitting).
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. now)
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local micros = t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
if ARGV[4] == 'clock' then
  local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
  if fence == nil or fence + 1 < tonumber(micros) then
    redis.call('SET', KEYS[2], string.format('%d', tonumber(micros) - 1))
  end
elseif redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], micros)
end
local term = redis.call('INCR', KEYS[2])
local value = string.format('%d', term) .. ' ' .. ARGV[1] .. ' ' .. ARGV[2]
if not redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[3]) then return false end
redis.call('PUBLISH', KEYS[4], 'claim')
return term
"""

# KEYS: leader, members, channel. ARGV: my leader value ("" for none), my label.
_RELEASE = """
redis.call('ZREM', KEYS[2], ARGV[2])
local released = 0
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
redis.call('PUBLISH', KEYS[3], 'release')
return released
"""

# KEYS: leader, members, channel. ARGV: my label, my node id, ttl ms, my session.
# Registers this member; drops a leadership an older session of this very node left.
_JOIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
local leader = redis.call('GET', KEYS[1])
if leader then
  local _, _, session, label = string.find(leader, '^%d+ (%S+) (.*)$')
  if session and session ~= ARGV[4] and string.sub(label, 1, #ARGV[2] + 1) == ARGV[2] .. '.' then
    redis.call('DEL', KEYS[1])
  end
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PUBLISH', KEYS[3], 'join')
return 1
"""


def _members(entries: list[bytes]) -> tuple[Member, ...]:
    """The members of the sorted set's entries ``"<label> <session>"``, once each, best-ranked
    first (entries this library did not write are skipped)."""
    found = {}
    for entry in entries:
        label = entry.decode(errors="replace").rpartition(" ")[0]
        member = member_from_label(label)
        if member is not None:
            found[label] = member
    return ranked(list(found.values()))


def _leadership(value: bytes | str | None, session: str | None) -> Leadership | None:
    """The leadership a leader key's value names, or None (vacant, or not this library's)."""
    if not value:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    term, _, rest = text.partition(" ")
    holder_session, _, label = rest.partition(" ")
    member = member_from_label(label)
    if member is None or not term.isdigit():
        return None
    return Leadership(member, int(term), session is not None and holder_session == session)


class RedisCoordinator(Coordinator):
    """One member's part in one group on a Redis primary (see
    :class:`followtheleader._coordinators.base.Coordinator`). All methods but :meth:`wake`
    run on the elector's session thread."""

    service = "Redis"
    renew_fraction = 0.6

    def __init__(self, config: CoordinatorConfig, group: str, me: Member, ttl: float) -> None:
        super().__init__(config, group, me, ttl)
        prefix = config.setting("prefix") or config.prefix
        self._prefix = "/" + prefix.strip("/")
        base = f"{self._prefix}/{quote_group(group)}"
        self._leader_key, self._fence_key = f"{base}/leader", f"{base}/fence"
        self._members_key, self._channel = f"{base}/members", f"{base}/events"
        self._label = member_label(me)
        self._ttl_ms = max(1, int(ttl * 1000))
        self._timeout = max(1.0, ttl / 4)
        self._service_name = ""
        """The Sentinel service (its master name) of a ``redis+sentinel://`` URL, else ""."""
        path = config.path if config.scheme != "unix" else ""
        if config.scheme == SENTINEL_SCHEME:
            self._service_name, _, path = path.partition("/")
            if not self._service_name:
                raise ValueError(
                    f"option 'coordinator': a {SENTINEL_SCHEME}:// URL names the Sentinel service after the "
                    f"sentinels: {SENTINEL_SCHEME}://HOST:26379[,HOST:26379...]/SERVICE[/DB]"
                )
            if tls_settings := sorted(key for key, _ in config.query if key.startswith("ssl_")):
                raise ValueError(
                    f"option 'coordinator': {SENTINEL_SCHEME}:// talks to the sentinels and the primary "
                    f"without TLS; it takes no {', '.join(tls_settings)}"
                )
        db_text = config.setting("db") or path or "0"
        if not db_text.isdigit():
            raise ValueError(f"option 'coordinator': a Redis database is a number, not {db_text!r}")
        self._db = int(db_text)
        self._client: redis.Redis | None = None
        self._sentinel: redis.sentinel.Sentinel | None = None
        """The sentinels' clients (``redis+sentinel://`` only), closed with the client."""
        self._pubsub: Any = None
        self._scripts: dict[str, Any] = {}
        self._session: str | None = None
        self._holding = ""
        """The leader key's value while this session holds it (as far as it knows), else ""."""
        self._joined = False
        self._renewed_sent = 0.0
        self._view: View | None = None
        """The group as the last renewal read it, for the :meth:`observe` that follows it."""
        self._view_at = 0.0
        self._wake_pair: tuple[socket.socket, socket.socket] | None = None
        """Written by :meth:`wake`, watched by :meth:`wait`; open between open() and close()."""

    # ----------------------------------------------------------------- connection

    def _connect(self) -> redis.Redis:
        """A client for the URL (no request is made yet)."""
        config = self.config
        common: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "username": config.username,
            "password": config.password,
            "client_name": f"followtheleader-{self.me.node_id}"[:100].replace(" ", "_"),
            # no retries of redis-py's own: the session policy retries, and an error is seen at once
            "retry": Retry(NoBackoff(), 0),
        }
        common["db"] = self._db
        if self._service_name:
            # One client per sentinel; each new connection of the primary's pool asks them
            # (in turn, each bounded by the timeout) for the service's primary.
            self._sentinel = redis.sentinel.Sentinel(
                list(config.hosts),
                sentinel_kwargs={
                    "socket_timeout": self._timeout,
                    "socket_connect_timeout": self._timeout,
                    "retry": Retry(NoBackoff(), 0),
                },
                **common,
            )
            primary: redis.Redis = self._sentinel.master_for(self._service_name)
            return primary
        if config.scheme == "unix":
            return redis.Redis(unix_socket_path=config.path, **common)
        host, port = config.hosts[0]
        if config.tls:
            common.update(
                ssl=True,
                ssl_ca_certs=config.setting("ssl_ca_certs"),
                ssl_certfile=config.setting("ssl_certfile"),
                ssl_keyfile=config.setting("ssl_keyfile"),
                ssl_cert_reqs=config.setting("ssl_cert_reqs") or "required",
            )
        return redis.Redis(host=host, port=port, **common)

    def _call(self, what: str, request: Any) -> Any:
        """Run ``request(client)``; redis-py's errors become :class:`CoordinatorError`."""
        if self._client is None:
            self._client = self._connect()
            for name, text in (("renew", _RENEW), ("claim", _CLAIM), ("release", _RELEASE), ("join", _JOIN)):
                self._scripts[name] = self._client.register_script(text)
        try:
            return request(self._client)
        except redis.RedisError as exc:
            raise CoordinatorError(f"{what}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise CoordinatorError(f"{what}: {exc}") from exc

    def _entry(self) -> str:
        """This member's entry in the sorted set: its label and its session."""
        return f"{self._label} {self._session}"

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self._call(name, lambda _client: self._scripts[name](keys=keys, args=args))

    def _subscribe(self) -> None:
        """Subscribe to the group's channel (idempotent; errors are left to the next wait)."""
        if self._pubsub is not None or self._client is None:
            return
        pubsub = self._client.pubsub()
        try:
            pubsub.subscribe(self._channel)
        except (redis.RedisError, OSError):
            log.debug("Redis: cannot subscribe to %s yet", self._channel, exc_info=True)
            pubsub.close()
            return
        self._pubsub = pubsub

    # ----------------------------------------------------------------- session

    def connect_only(self) -> None:
        self._call("connect", lambda client: client.ping())

    def open(self) -> None:
        self.close()
        self._call("connect", lambda client: client.ping())
        self._session = secrets.token_hex(8)
        self._holding, self._joined, self._view = "", False, None
        self._renewed_sent = time.monotonic()
        if self._wake_pair is None:
            pair = socket.socketpair()
            for sock in pair:
                sock.setblocking(False)
            self._wake_pair = pair
        self._subscribe()

    def keep_alive(self) -> float:
        started = time.monotonic()
        self._view = None
        if self._session is None:
            raise CoordinatorError("no Redis session")
        if self._joined and started - self._renewed_sent > self.ttl:
            raise SessionLost(f"no renewal reached Redis for more than the TTL ({self.ttl:g} s)")
        label = self._entry() if self._joined else ""
        present, leader, live = self._run(
            "renew", [self._leader_key, self._members_key], [label, self._holding, self._ttl_ms]
        )
        if self._joined and not present:
            raise SessionLost("this member's entry is gone from Redis (expired or removed)")
        self._renewed_sent = started
        leadership = _leadership(leader, self._session)
        if self._holding and (leadership is None or not leadership.mine):
            self._holding = ""
        self._view, self._view_at = View(leadership, _members(live)), time.monotonic()
        return self.ttl

    def close(self) -> None:
        if self._session is not None and self._client is not None:
            try:  # what etcd's lease revoke does: the leadership and the entry go at once
                keys = [self._leader_key, self._members_key, self._channel]
                self._run("release", keys, [self._holding, self._entry()])
            except CoordinatorError:  # closing must never raise; the key then expires by itself
                log.debug("could not release in Redis on close", exc_info=True)
        self._session, self._holding, self._joined, self._view = None, "", False, None
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # closing must never raise
                log.debug("error while closing the Redis subscription", exc_info=True)
        client, self._client = self._client, None
        sentinel, self._sentinel = self._sentinel, None
        clients = [client] if client is not None else []
        clients += sentinel.sentinels if sentinel is not None else []
        for each in clients:
            try:
                each.close()
                each.connection_pool.disconnect()
            except Exception:
                log.debug("error while closing a Redis client", exc_info=True)

        pair, self._wake_pair = self._wake_pair, None
        if pair is not None:
            for sock in pair:
                sock.close()

    def wait(self, timeout: float) -> None:
        """Block until a message on the group's channel, :meth:`wake`, or ``timeout``."""
        deadline = time.monotonic() + timeout
        self._subscribe()
        if self._wake_pair is None:
            raise CoordinatorError("no Redis session")
        wake_r = self._wake_pair[0]
        while not self._drain():
            watched: list[Any] = [wake_r]
            connection = self._pubsub.connection if self._pubsub is not None else None
            if connection is not None and connection._sock is not None:
                watched.append(connection._sock)
            left = deadline - time.monotonic()
            readable, _, _ = select.select(watched, [], [], max(0.0, left))
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while wake_r.recv(512):
                        pass
                return
            if not readable or left <= 0:
                return

    def _drain(self) -> bool:
        """Read the pending messages of the subscription: True when one was about the group
        (its content does not matter: the group is read next) or the connection broke, False
        for none or only the subscription's confirmations."""
        pubsub, changed = self._pubsub, False
        if pubsub is None:
            return False
        try:
            while (message := pubsub.get_message(timeout=0)) is not None:
                changed = changed or message.get("type") == "message"
        except (redis.RedisError, OSError):
            self._lost_subscription()
            return True  # the server went away, or restarted: read the group now
        return changed

    def _lost_subscription(self) -> None:
        """The pub/sub connection broke (the server restarted?): subscribe again at the next wait."""
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                log.debug("error while closing the Redis subscription", exc_info=True)

    def wake(self) -> None:
        pair = self._wake_pair
        if pair is None:
            return  # no session: nothing waits
        with contextlib.suppress(OSError):  # already woken (the buffer is full), or closed
            pair[1].send(b"w")

    # ----------------------------------------------------------------- election

    def join(self) -> None:
        self._view = None
        self._run(
            "join",
            [self._leader_key, self._members_key, self._channel],
            [self._entry(), self.me.node_id, self._ttl_ms, self._session or ""],
        )
        self._joined = True

    def observe(self) -> View:
        view, self._view = self._view, None
        if view is not None and time.monotonic() - self._view_at < FRESH:
            return view
        self._joined, joined = False, self._joined  # a read only: no renewal
        try:
            self.keep_alive()
        finally:
            self._joined = joined
        view, self._view = self._view, None
        assert view is not None
        return view

    def claim(self) -> int | None:
        self._view = None
        term = self._run(
            "claim",
            [self._leader_key, self._fence_key, self._members_key, self._channel],
            [self._session or "", self._label, self._ttl_ms, "clock" if self._service_name else ""],
        )
        if not term:
            return None
        self._holding = f"{int(term)} {self._session} {self._label}"
        return int(term)

    def release(self, term: int) -> None:
        self._view = None
        holding = self._holding if self._holding.startswith(f"{term} ") else ""
        self._run("release", [self._leader_key, self._members_key, self._channel], [holding, self._entry()])
        self._holding, self._joined = "", False

    def rejoin(self) -> None:
        self.join()

    def groups(self) -> list[GroupInfo]:
        prefix = self._prefix + "/"

        def read(client: Any) -> list[GroupInfo]:
            pattern = _glob_escape(prefix) + "*/leader"
            quoted_names = {key.decode()[len(prefix) :].rsplit("/", 1)[0] for key in client.scan_iter(match=pattern)}
            pattern = _glob_escape(prefix) + "*/members"
            quoted_names |= {key.decode()[len(prefix) :].rsplit("/", 1)[0] for key in client.scan_iter(match=pattern)}
            found = []
            for quoted in sorted(q for q in quoted_names if "/" not in q):
                base = f"{prefix}{quoted}"
                now_s, now_us = client.time()
                now = now_s * 1000 + now_us // 1000
                live = client.zrange(f"{base}/members", now, "+inf", byscore=True)
                view = View(_leadership(client.get(f"{base}/leader"), None), _members(live))
                found.append(GroupInfo(urllib.parse.unquote(quoted), view))
            return found

        result: list[GroupInfo] = self._call("groups", read)
        return result


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
