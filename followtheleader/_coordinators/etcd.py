"""etcd v3 coordinator, through etcd3gw (the JSON gateway client).

Layout (see :mod:`followtheleader._coordinators.base`): ``<prefix>/<group>/leader`` holds the leader's id and
priority as JSON; its create revision is the term. ``<prefix>/<group>/members/<id>.<priority>``
are one key per member. Every key of a member is bound to its lease: when the lease expires
or is revoked, they go.

The leadership is claimed with one transaction (``create_revision(leader) == 0`` then put
it with this member's lease), as etcd's own ``concurrency.Election`` does for its keys.
etcd3gw talks to one endpoint; this client tries the URL's endpoints in turn.

etcd3gw's watches run on a thread pool that outlives any one client, so the group is read
by polling (:data:`POLL`); a read is one range request over the group's prefix.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.parse
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
    member_from_label,
    member_label,
    quote_group,
    ranked,
)

__all__ = ["POLL", "EtcdCoordinator"]

log = logging.getLogger(__name__)

POLL = 0.1
"""Seconds between two reads of the group while nothing else wakes the session thread."""


def _member_data(member: Member) -> str:
    return json.dumps({"node_id": member.node_id, "priority": member.priority})


def _decode_member(data: bytes | str) -> Member | None:
    try:
        fields = json.loads(data)
        return Member(str(fields["node_id"]), int(fields["priority"]))
    except (ValueError, KeyError, TypeError):
        return None


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

    def connect_only(self) -> None:
        self._make_clients()

    def open(self) -> None:
        self.close()
        self._make_clients()
        sent = time.monotonic()
        grant = self._post("/lease/grant", {"TTL": math.ceil(self.ttl), "ID": 0})
        self._lease_id = int(grant["ID"])
        self._granted, self._renewed_sent = float(grant.get("TTL", self.ttl)), sent

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
        if lease is not None:
            try:
                self._post("/kv/lease/revoke", {"ID": lease})  # its keys go at once
            except Exception:  # closing must never raise; the lease then expires by itself
                log.debug("could not revoke etcd lease %x", lease, exc_info=True)
        for client in self._clients:
            try:
                client.session.close()
            except Exception:
                log.debug("error while closing an etcd client", exc_info=True)
        self._clients = []

    def wait(self, timeout: float) -> None:
        self._wake.wait(min(timeout, POLL))
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    # ----------------------------------------------------------------- election

    def join(self) -> None:
        # Leftovers of an older lease of this node: its leadership has lapsed locally.
        for kv in self._range(self._leader_key):
            holder = _decode_member(etcd3gw.utils._decode(kv.get("value", "")))
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
                holder = _decode_member(etcd3gw.utils._decode(kv.get("value", "")))
                if holder is not None:
                    mine = self._lease_id is not None and int(kv.get("lease", 0)) == self._lease_id
                    leadership = Leadership(holder, int(kv["create_revision"]), mine)
            elif rest.startswith("members/"):
                member = member_from_label(rest[len("members/") :])
                if member is not None:
                    members.append(member)
        return View(leadership, ranked(members))

    def claim(self) -> int | None:
        key = _encode(self._leader_key)
        txn = {
            "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [
                {"request_put": {"key": key, "value": _encode(_member_data(self.me)), "lease": self._lease_id}}
            ],
            "failure": [],
        }
        result = self._post("/kv/txn", txn)
        if not result.get("succeeded"):
            return None
        return int(result["header"]["revision"])

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
        self._post("/kv/deleterange", {"key": _encode(self._my_key)})
        if self._lease_id is not None:  # only a leadership this very lease holds
            self._delete_if(self._leader_key, "CREATE", term, self._lease_id)

    def rejoin(self) -> None:
        self._post("/kv/put", {"key": _encode(self._my_key), "value": _encode(""), "lease": self._lease_id})

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
