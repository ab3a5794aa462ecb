"""etcd v3 coordinator, through etcd3gw (the JSON gateway client).

Layout (see :mod:`followtheleader._coordinators.base`): ``<prefix>/<group>/leader`` holds the leader's id and
priority as JSON; its create revision is the term. ``<prefix>/<group>/members/<id>.<priority>``
are one key per member. Every key of a member is bound to its lease: when the lease expires
or is revoked, they go.

The leadership is claimed with one transaction (``create_revision(leader) == 0`` then put
it with this member's lease), as etcd's own ``concurrency.Election`` does for its keys.
etcd3gw talks to one endpoint; this client tries the URL's endpoints in turn.

The group is watched, not polled: :class:`GroupWatch` (thread ``followtheleader-watch-<group>``)
reads the group's prefix once, then keeps that view current from one long-lived ``/v3/watch``
stream of the gateway, and wakes the session thread on every change. etcd3gw's own watches
run on a thread pool that outlives any one client, so the stream is read here with requests.
A stream that breaks is opened again after a full read; an idle stream is replaced by a full
read every :data:`RESYNC` seconds (a safety net). The session thread's :meth:`EtcdCoordinator.wait`
is woken by the watch only (it never polls): at every change, and whenever the watched view
becomes current or stops being so; while the stream is down, the session thread reads the
group itself at each renewal (and when woken), and the watch thread wakes it once the stream
is current again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import etcd3gw
import requests
from etcd3gw.client import DEFAULT_API_PATH
from etcd3gw.utils import _encode, _increment_last_byte

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

__all__ = ["RESYNC", "EtcdCoordinator", "GroupWatch", "parse_watch_message"]

log = logging.getLogger(__name__)

RESYNC = 30.0
"""Seconds an idle watch stream runs before a full read replaces it (at least the TTL)."""


class EtcdCoordinator(Coordinator):
    """One member's etcd lease (see :class:`followtheleader._coordinators.base.Coordinator`)."""

    service = "etcd"

    def __init__(self, config: CoordinatorConfig, group: str, me: Member, ttl: float) -> None:
        super().__init__(config, group, me, ttl)
        self._clients: list[etcd3gw.Etcd3Client] = []
        self._current = 0
        self._lease_id: int | None = None
        self._granted = 0.0
        self._renewed_sent = 0.0
        self._wake = threading.Event()
        self._watch: GroupWatch | None = None
        # this member's acknowledged writes, (revision, what it did to the group's keys:
        # encoded key -> new key-value, or None when deleted; None when not known), for a
        # watched view that has not seen them yet
        self._wrote: list[tuple[int, dict[str, dict[str, Any] | None] | None]] = []
        self._base = f"{config.prefix}/{quote_group(group)}"
        self._leader_key = f"{self._base}/leader"
        self._members_prefix = f"{self._base}/members/"
        self._my_key = self._members_prefix + member_label(me)
        self._timeout = max(1.0, ttl / 4)

    # ----------------------------------------------------------------- requests

    def _make_clients(self) -> None:
        config = self.config
        api_path = config.setting("api_path")
        self._clients = [
            etcd3gw.Etcd3Client(
                host=host,
                port=port,
                protocol="https" if config.tls else "http",
                session=self._session(),
                timeout=self._timeout,
                api_path=api_path or DEFAULT_API_PATH,
            )
            for host, port in config.hosts
        ]

    def _session(self) -> requests.Session:
        """The HTTP session of one endpoint: TLS files from the URL.

        With ``ca=``, requests would still prefer ``$REQUESTS_CA_BUNDLE`` and
        ``$CURL_CA_BUNDLE`` to the session's own CA file; the session then ignores the
        environment (its proxy settings too).
        """
        session = requests.Session()
        ca, cert, key = self.config.setting("ca"), self.config.setting("cert"), self.config.setting("key")
        if ca:
            session.verify = ca
            session.trust_env = False
        if cert and key:
            session.cert = (cert, key)
        return session

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        """One request to the first endpoint that answers; the endpoint is kept for the next."""
        if not self._clients:
            self._make_clients()
        errors = []
        for attempt in range(len(self._clients)):
            index = (self._current + attempt) % len(self._clients)
            client = self._clients[index]
            try:
                result = client.post(client.get_url(path), json=body)
            except Exception as exc:  # noqa: BLE001 - requests' and etcd3gw's errors alike: next endpoint
                errors.append(f"{client.host}:{client.port}: {_describe(exc)}")
                continue
            self._current = index
            return result
        raise CoordinatorError("etcd did not answer: " + "; ".join(errors))

    def _range(self, prefix: str) -> list[dict[str, Any]]:
        result = self._post("/kv/range", {"key": _encode(prefix), "range_end": _encode(_increment_last_byte(prefix))})
        return list(result.get("kvs", []))

    # ----------------------------------------------------------------- session

    def _note_written(
        self, result: Any, wrote: bool = True, changes: dict[str, dict[str, Any] | None] | None = None
    ) -> Any:
        """Remember the revision a write that changed a key of the group was acknowledged
        at, and ``changes``, what it did (encoded key: new key-value, or None when deleted):
        until the watch has seen that revision, the watched view is the watch's with these
        changes applied (without ``changes``, no watched view until then). A request that
        changed nothing is not noted: the watch would see no event of its revision."""
        if wrote:
            with _suppress_bad_revision():
                revision = int(result["header"]["revision"])
                self._wrote.append((revision, changes))
        return result

    def connect_only(self) -> None:
        self._make_clients()

    def open(self) -> None:
        self.close()
        self._make_clients()
        sent = time.monotonic()
        grant = self._post("/lease/grant", {"TTL": math.ceil(self.ttl), "ID": 0})
        self._lease_id = int(grant["ID"])
        self._granted, self._renewed_sent = float(grant.get("TTL", self.ttl)), sent
        self._wrote = []
        self._watch = GroupWatch(self, self._base + "/", self._wake.set)
        self._watch.start()

    def keep_alive(self) -> float:
        started = time.monotonic()
        if self._lease_id is None:
            raise CoordinatorError("no etcd lease")
        if started - self._renewed_sent >= self.ttl / 5:
            result = self._post("/lease/keepalive", {"ID": self._lease_id})
            ttl = int(result.get("result", {}).get("TTL", -1))
            if ttl <= 0:
                raise SessionLost("the etcd lease expired")
            self._granted, self._renewed_sent = float(ttl), started
        return self._renewed_sent + self._granted - started

    def close(self) -> None:
        lease, self._lease_id = self._lease_id, None
        if lease is not None:  # first: the others are told at once, before the watch ends
            try:
                self._post("/kv/lease/revoke", {"ID": lease})  # its keys go at once
            except Exception:  # closing must never raise; the lease then expires by itself
                log.debug("could not revoke etcd lease %x", lease, exc_info=True)
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        for client in self._clients:
            try:
                client.session.close()
            except Exception:
                log.debug("error while closing an etcd client", exc_info=True)
        self._clients = []

    def wait(self, timeout: float) -> None:
        """Until the watch reports a change (or that its view became current, or stopped
        being so), :meth:`wake`, or ``timeout``: pushed, never a poll."""
        self._wake.wait(timeout)
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    # ----------------------------------------------------------------- election

    def join(self) -> None:
        # Leftovers of an older lease of this node: its leadership has lapsed locally.
        for kv in self._range(self._leader_key):
            holder = member_from_json(etcd3gw.utils._decode(kv.get("value", "")))
            if holder is not None and holder.node_id == self.me.node_id and int(kv.get("lease", 0)) != self._lease_id:
                self._delete_if(self._leader_key, "MOD", int(kv["mod_revision"]))
        self.rejoin()

    def observe(self) -> View:
        return self._view(self._range(self._base + "/"), self._base + "/")

    def _view(self, kvs: list[dict[str, Any]], base: str) -> View:
        leadership = None
        members = []
        for kv in kvs:
            key = etcd3gw.utils._decode(kv["key"]).decode()
            rest = key[len(base) :]
            if rest == "leader":
                holder = member_from_json(etcd3gw.utils._decode(kv.get("value", "")))
                if holder is not None:
                    mine = self._lease_id is not None and int(kv.get("lease", 0)) == self._lease_id
                    leadership = Leadership(holder, int(kv["create_revision"]), mine)
            elif rest.startswith("members/"):
                member = member_from_label(rest[len("members/") :])
                if member is not None:
                    members.append(member)
        return View(leadership, ranked(members))

    def watched_view(self) -> View | None:
        """The watch's view, with this member's acknowledged writes that the watch has not
        seen yet applied to it (a claim's leadership, a release's deletions, a rejoin); None
        while the watch is not current, or after a write whose effect is not known."""
        watch = self._watch
        current = watch.current() if watch is not None else None
        if current is None:
            return None
        revision, kvs = current
        self._wrote = [(r, changes) for r, changes in self._wrote if r > revision]  # not seen yet
        if any(changes is None for _, changes in self._wrote):
            return None
        # the watch's view, with what this member wrote since (in order) applied to it
        by_key = {kv["key"]: kv for kv in kvs}
        for _, changes in sorted(self._wrote, key=lambda item: item[0]):
            for key, kv in (changes or {}).items():
                if kv is None:
                    by_key.pop(key, None)
                else:
                    by_key[key] = kv
        return self._view(list(by_key.values()), self._base + "/")

    def claim(self) -> int | None:
        key = _encode(self._leader_key)
        txn = {
            "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": key, "value": _encode(member_json(self.me)), "lease": self._lease_id}}],
            "failure": [],
        }
        result = self._post("/kv/txn", txn)
        if not result.get("succeeded"):
            return None
        term = int(result["header"]["revision"])
        kv = {"key": key, "value": _encode(member_json(self.me)), "create_revision": str(term)}
        self._note_written(result, changes={key: {**kv, "mod_revision": str(term), "lease": str(self._lease_id)}})
        return term

    def _delete_if(self, key: str, target: str, revision: int, lease: int | None = None) -> bool:
        """Delete ``key`` if its create (``CREATE``) or mod (``MOD``) revision is ``revision``
        and, with ``lease``, it is bound to that lease: one compare-and-set transaction."""
        encoded = _encode(key)
        field = "create_revision" if target == "CREATE" else "mod_revision"
        compare = [{"key": encoded, "result": "EQUAL", "target": target, field: str(revision)}]
        if lease is not None:
            compare.append({"key": encoded, "result": "EQUAL", "target": "LEASE", "lease": str(lease)})
        txn = {"compare": compare, "success": [{"request_delete_range": {"key": encoded}}], "failure": []}
        return bool(self._post("/kv/txn", txn).get("succeeded"))

    def release(self, term: int) -> None:
        """One transaction: the member key goes, and with it the leadership of ``term`` if
        this very lease holds it, so that the others learn of both from one watch event."""
        leader, mine = _encode(self._leader_key), _encode(self._my_key)
        if self._lease_id is None:  # no lease, no leadership of this member's to give up
            result = self._post("/kv/deleterange", {"key": mine})
            self._note_written(result, wrote=int(result.get("deleted") or 0) > 0)
            return
        compare = [
            {"key": leader, "result": "EQUAL", "target": "CREATE", "create_revision": str(term)},
            {"key": leader, "result": "EQUAL", "target": "LEASE", "lease": str(self._lease_id)},
        ]
        txn = {
            "compare": compare,
            "success": [{"request_delete_range": {"key": mine}}, {"request_delete_range": {"key": leader}}],
            "failure": [{"request_delete_range": {"key": mine}}],
        }
        result = self._post("/kv/txn", txn)
        succeeded = bool(result.get("succeeded"))
        changes: dict[str, dict[str, Any] | None] = {mine: None, leader: None} if succeeded else {mine: None}
        self._note_written(result, wrote=succeeded or _deleted_any(result), changes=changes)

    def rejoin(self) -> None:
        key, value = _encode(self._my_key), _encode("")
        result = self._post("/kv/put", {"key": key, "value": value, "lease": self._lease_id})
        self._note_written(result, changes={key: {"key": key, "value": value, "lease": str(self._lease_id)}})

    def groups(self) -> list[GroupInfo]:
        prefix = self.config.prefix + "/"
        by_group: dict[str, list[dict[str, Any]]] = {}
        for kv in self._range(prefix):
            key = etcd3gw.utils._decode(kv["key"]).decode()
            quoted = key[len(prefix) :].split("/", 1)[0]
            by_group.setdefault(quoted, []).append(kv)
        return [
            GroupInfo(urllib.parse.unquote(quoted), self._view(kvs, f"{prefix}{quoted}/"))
            for quoted, kvs in sorted(by_group.items())
        ]


def _describe(exc: BaseException) -> str:
    """A few words on an error of requests or etcd3gw (some of whose errors have no text)."""
    text = str(exc).strip() or " ".join(str(a) for a in getattr(exc, "args", ()) if a)
    detail = getattr(exc, "detail_text", None)
    return f"{type(exc).__name__}: {text or detail or 'no detail'}"


def _deleted_any(txn_result: Any) -> bool:
    """Whether a transaction's delete requests deleted a key."""
    with _suppress_bad_revision():
        for response in txn_result.get("responses") or []:
            if int(response.get("response_delete_range", {}).get("deleted") or 0) > 0:
                return True
    return False


@contextlib.contextmanager
def _suppress_bad_revision() -> Iterator[None]:
    with contextlib.suppress(KeyError, TypeError, ValueError):
        yield


@dataclass
class WatchMessage:
    """One message of a ``/v3/watch`` stream (see :func:`parse_watch_message`)."""

    revision: int
    """The store's revision when the message was sent (0 if not given)."""
    created: bool = False
    """The watch was created: the events from its start revision follow."""
    ended: bool = False
    """The server cancelled the watch (or its start revision was compacted): read again."""
    events: list[tuple[bool, dict[str, Any]]] = field(default_factory=list)
    """(deleted, key-value) in order; a put's key-value is the key's new one."""


def parse_watch_message(line: bytes | str) -> WatchMessage:
    """One line of the gateway's watch stream, as JSON ``{"result": {...}}``.

    :raises CoordinatorError: for an ``error`` message or a line that is no such JSON.
    """
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise CoordinatorError(f"etcd watch stream: not JSON: {line[:80]!r}") from exc
    if not isinstance(message, dict):
        raise CoordinatorError(f"etcd watch stream: unexpected message {line[:80]!r}")
    if "error" in message or "result" not in message:
        error = message.get("error", message)
        text = error.get("message", error) if isinstance(error, dict) else error
        raise CoordinatorError(f"etcd watch stream: {text}")
    result = message["result"]
    if not isinstance(result, dict):
        raise CoordinatorError(f"etcd watch stream: unexpected result {line[:80]!r}")
    revision = 0
    with _suppress_bad_revision():
        revision = int(result["header"]["revision"])
    events = []
    for event in result.get("events") or []:
        kv = event.get("kv") if isinstance(event, dict) else None
        if not isinstance(kv, dict) or "key" not in kv:
            raise CoordinatorError(f"etcd watch stream: unexpected event {event!r:.80}")
        events.append((event.get("type") in ("DELETE", 1), kv))
    compacted = int(result.get("compact_revision") or 0) > 0
    return WatchMessage(revision, bool(result.get("created")), bool(result.get("canceled")) or compacted, events)


class GroupWatch:
    """The group's keys, kept current by one ``/v3/watch`` stream of the gateway.

    Its thread ``followtheleader-watch-<group>`` reads the prefix once (a range request),
    then opens a watch from the next revision and applies its events, calling ``on_change``
    (the session thread's wake-up) after each message that changed the view and whenever the
    view becomes current or stops being so. When the stream breaks or ends, or runs idle for
    ``max(RESYNC, ttl)`` seconds, the view stops being current until the next full read.
    :meth:`stop` (the session thread) shuts the stream's socket down and joins the thread.

    :param owner: the coordinator (its endpoints, TLS settings and timeouts).
    :param prefix: the group's key prefix.
    :param on_change: called on the watch thread; must not block.
    """

    def __init__(self, owner: EtcdCoordinator, prefix: str, on_change: Callable[[], None]) -> None:
        self._prefix = prefix
        self._on_change = on_change
        self._clients = list(owner._clients)
        self._next = owner._current
        self._http = owner._session()
        self._timeout = owner._timeout
        self._idle = max(RESYNC, owner.ttl)
        self._longest_backoff = max(1.0, owner.ttl / 5)
        self._lock = threading.Lock()
        self._kvs: dict[str, dict[str, Any]] | None = None  # None: not current
        self._revision = 0
        self._response: requests.Response | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"followtheleader-watch-{owner.group}", daemon=True)

    def start(self) -> None:
        """Start the watch thread."""
        self._thread.start()

    def current(self) -> tuple[int, list[dict[str, Any]]] | None:
        """Any thread: (revision, key-values) while the view is current, else None."""
        with self._lock:
            if self._kvs is None:
                return None
            return self._revision, list(self._kvs.values())

    def stop(self) -> None:
        """End the stream and the thread (any thread but the watch thread). Idempotent."""
        self._stopping.set()
        with self._lock:
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.raw.shutdown()  # a blocked read returns
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self._timeout + 1.0)
            if self._thread.is_alive():
                log.warning("the etcd watch thread did not finish")
        with contextlib.suppress(Exception):
            self._http.close()

    # ----------------------------------------------------------------- the watch thread

    def _run(self) -> None:
        """Watch thread: read and follow the group until stopped; errors are logged, the view
        is marked not current (the session thread then reads the group itself), and the
        watch starts again after a backoff."""
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                if self._follow():
                    backoff = 0.05
                    continue
            except Exception as exc:  # noqa: BLE001 - every error of a stream: read again later
                if self._stopping.is_set():
                    break
                log.info("etcd watch of %s: %s (watching again)", self._prefix, _describe(exc))
            self._set(None, 0)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self._longest_backoff)
        self._set(None, 0)

    def _follow(self) -> bool:
        """Watch thread: one full read and one stream; True if the stream ran (idle or
        cancelled), False if it could not be opened."""
        # (get_url may ask the endpoint for its API path first: an error here is the loop's)
        base = self._clients[self._next % len(self._clients)].get_url("").rstrip("/")
        self._next += 1
        key, end = _encode(self._prefix), _encode(_increment_last_byte(self._prefix))
        reply = self._http.post(base + "/kv/range", json={"key": key, "range_end": end}, timeout=self._timeout)
        reply.raise_for_status()
        result = reply.json()
        revision = int(result["header"]["revision"])
        kvs = {kv["key"]: kv for kv in result.get("kvs", [])}
        create = {"key": key, "range_end": end, "start_revision": str(revision + 1)}
        response = self._http.post(
            base + "/watch", json={"create_request": create}, stream=True, timeout=(self._timeout, self._idle)
        )
        with self._lock:
            self._response = response
        try:
            if self._stopping.is_set():
                return True
            response.raise_for_status()
            self._next -= 1  # this endpoint answers: keep it
            return self._apply_stream(response.iter_lines(), kvs, revision)
        except requests.exceptions.ConnectionError as exc:
            if isinstance(exc.__context__, Exception) and "timed out" in str(exc):
                self._set(None, 0)
                return True  # idle for self._idle seconds: the full read again (safety net)
            raise
        finally:
            with self._lock:
                self._response = None
            response.close()

    def _apply_stream(self, lines: Iterator[bytes], kvs: dict[str, dict[str, Any]], revision: int) -> bool:
        """Watch thread: apply the stream's messages to ``kvs``; True when it ends."""
        for line in lines:
            if not line.strip():
                continue
            message = parse_watch_message(line)
            for deleted, kv in message.events:
                if deleted:
                    kvs.pop(kv["key"], None)
                else:
                    kvs[kv["key"]] = kv
            revision = max(revision, message.revision)
            if message.ended:
                return True
            if message.created or message.events:
                self._set(dict(kvs), revision)
        return True

    def _set(self, kvs: dict[str, dict[str, Any]] | None, revision: int) -> None:
        with self._lock:
            changed = kvs is not None or self._kvs is not None
            self._kvs, self._revision = kvs, revision
        if changed:
            self._on_change()
