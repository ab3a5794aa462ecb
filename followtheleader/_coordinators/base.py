"""Coordinator mode: the interface to a coordination service and the URL that names one.

A :class:`Coordinator` is what the session thread of a coordinated elector (see
:mod:`._coordinated`) talks to: ZooKeeper (:mod:`followtheleader._coordinators.zookeeper`, through kazoo) or etcd v3
(:mod:`followtheleader._coordinators.etcd`, through etcd3gw). Every method blocks (bounded by the client's timeouts) and
is called from that one thread only, except :meth:`Coordinator.wake` (any thread).

A group's data in the service, under the URL's prefix (``/followtheleader`` by default)::

    <prefix>/<quoted group name>/leader                  the leadership, bound to the leader's session
    <prefix>/<quoted group name>/members/<id>.<priority>  one per live member, bound to its session

The term of a leadership is a number the server gives the ``leader`` node or key when it is
created (ZooKeeper: its creation zxid; etcd: its create revision); both only grow.

The client libraries are optional: they are imported when a coordinator is made, and
:func:`parse_coordinator` checks that they are installed, so that ``elect()`` fails early.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
import urllib.parse
from dataclasses import dataclass, field

from .._core.lease import View
from .._core.model import Member

__all__ = [
    "COORDINATOR_ENVIRONMENT_VARIABLE",
    "DEFAULT_PREFIX",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorError",
    "GroupInfo",
    "SessionLost",
    "make_coordinator",
    "member_from_label",
    "member_label",
    "parse_coordinator",
]

log = logging.getLogger(__name__)

COORDINATOR_ENVIRONMENT_VARIABLE = "FOLLOWTHELEADER_COORDINATOR"
"""Where the coordinator URL is read from when the ``coordinator`` option is not given."""
DEFAULT_PREFIX = "/followtheleader"


@dataclass(frozen=True)
class _Scheme:
    backend: str
    default_port: int
    library: str
    extra: str
    tls: bool
    query: frozenset[str]


_ZOOKEEPER_QUERY = frozenset({"ca", "certfile", "keyfile", "keyfile_password", "verify_certs", "sasl"})
_ETCD_QUERY = frozenset({"ca", "cert", "key", "api_path"})
_SCHEMES = {
    "zookeeper": _Scheme("zookeeper", 2181, "kazoo", "zookeeper", False, _ZOOKEEPER_QUERY),
    "zookeepers": _Scheme("zookeeper", 2181, "kazoo", "zookeeper", True, _ZOOKEEPER_QUERY),
    "etcd": _Scheme("etcd", 2379, "etcd3gw", "etcd", False, _ETCD_QUERY),
    "etcds": _Scheme("etcd", 2379, "etcd3gw", "etcd", True, _ETCD_QUERY),
}


@dataclass(frozen=True)
class CoordinatorConfig:
    """A parsed coordinator URL.

    :ivar backend: ``"zookeeper"`` or ``"etcd"``.
    :ivar hosts: the servers, as ``(host, port)``.
    :ivar prefix: the path (ZooKeeper) or key prefix (etcd) under which groups live.
    :ivar tls: True for the ``zookeepers://`` and ``etcds://`` schemes.
    :ivar username: from ``user:password@`` (ZooKeeper digest or SASL authentication).
    :ivar password: idem.
    :ivar query: the other settings of the URL's query (see the docs page "Beyond one subnet").
    :ivar url: the URL as given, password masked (for messages and logs).
    """

    backend: str
    hosts: tuple[tuple[str, int], ...]
    prefix: str = DEFAULT_PREFIX
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: tuple[tuple[str, str], ...] = ()
    url: str = ""

    def setting(self, name: str) -> str | None:
        """The value of query setting ``name``, or None."""
        return dict(self.query).get(name)


def parse_coordinator(url: str) -> CoordinatorConfig:
    """Check a coordinator URL and that its client library is installed.

    ``zookeeper://[user:password@]host[:port][,host[:port]...][/prefix][?settings]``, the same
    with ``zookeepers://`` for TLS; ``etcd://host[:port][,...][/prefix][?settings]`` and
    ``etcds://`` for TLS.

    :raises ValueError: for a malformed URL, an unknown scheme or setting, or a client
        library that is not installed (the message says which extra to install).
    """
    if not isinstance(url, str):
        raise TypeError(f"option 'coordinator' must be a URL string, not {type(url).__name__}")
    scheme_name, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"option 'coordinator' must be a URL like zookeeper://host:2181/prefix or etcd://host:2379, not {url!r}"
        )
    scheme = _SCHEMES.get(scheme_name.lower())
    if scheme is None:
        raise ValueError(
            f"option 'coordinator': unknown scheme {scheme_name!r}; use one of {', '.join(sorted(_SCHEMES))}"
        )
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        user, colon, secret = credentials.partition(":")
        if not user or not colon:
            raise ValueError("option 'coordinator': credentials must be given as user:password@")
        if scheme.backend == "etcd":
            raise ValueError(
                "option 'coordinator': etcd3gw cannot log in with a user and password; use client "
                "certificates (etcds://...?cert=...&key=...)"
            )
        username, password = urllib.parse.unquote(user), urllib.parse.unquote(secret)
    hosts = tuple(_parse_host(item, scheme.default_port) for item in netloc.split(","))
    prefix = "/" + path.strip("/") if slash and path.strip("/") else DEFAULT_PREFIX
    if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
        raise ValueError(f"option 'coordinator': bad prefix {prefix!r}")
    query = tuple(urllib.parse.parse_qsl(query_text, keep_blank_values=True, strict_parsing=False))
    unknown = sorted({key for key, _ in query} - scheme.query)
    if unknown:
        raise ValueError(
            f"option 'coordinator': unknown setting(s) {', '.join(unknown)} for {scheme.backend}; "
            f"known: {', '.join(sorted(scheme.query))}"
        )
    if importlib.util.find_spec(scheme.library) is None:
        raise ValueError(
            f"option 'coordinator': {scheme.backend} needs the {scheme.library} package; "
            f"install followtheleader[{scheme.extra}]"
        )
    shown = (
        url
        if password is None
        else url.replace(f":{urllib.parse.quote(password)}@", ":***@").replace(f":{password}@", ":***@")
    )
    return CoordinatorConfig(scheme.backend, hosts, prefix, scheme.tls, username, password, query, shown)


def _parse_host(item: str, default_port: int) -> tuple[str, int]:
    item = item.strip()
    if not item:
        raise ValueError("option 'coordinator': the URL names no server (or an empty one between commas)")
    if item.startswith("["):  # [IPv6]:port
        host, _, port_text = item[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"option 'coordinator': no host in {item!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"option 'coordinator': bad port in {item!r}")
    return host, int(port_text)


class CoordinatorError(OSError):
    """The coordination service could not be reached or refused a request."""


class SessionLost(CoordinatorError):
    """The session expired or was replaced: its nodes or keys are gone."""


@dataclass(frozen=True)
class GroupInfo:
    """One group under a prefix, for ``followtheleader status``."""

    name: str
    view: View


def member_label(member: Member) -> str:
    """The name of a member's node or key: ``<node id>.<priority>`` (node ids have no dot)."""
    return f"{member.node_id}.{member.priority}"


def member_from_label(label: str) -> Member | None:
    """The member a label names, or None for a label this library did not write."""
    node_id, dot, priority = label.rpartition(".")
    try:
        return Member(node_id, int(priority)) if dot and node_id else None
    except ValueError:
        return None


def quote_group(name: str) -> str:
    """A group name as one path component (no ``/``)."""
    return urllib.parse.quote(name, safe="")


def ranked(members: list[Member]) -> tuple[Member, ...]:
    """Best-ranked first, as the mDNS mode ranks them."""
    return tuple(sorted(members, key=lambda m: m.rank, reverse=True))


class Coordinator(abc.ABC):
    """One client session with a coordination service, for one member of one group.

    All methods but :meth:`wake` run on the elector's session thread. Every blocking call is
    bounded by ``timeout`` (connect) or by the session TTL (requests); errors are raised as
    :class:`CoordinatorError`.

    :param config: the parsed URL.
    :param group: the group name.
    :param me: this member.
    :param ttl: the session (ZooKeeper) or lease (etcd) time to live asked for, in seconds.
    """

    renew_fraction = 0.2
    """The session thread renews every ``renew_fraction * ttl`` seconds."""

    def __init__(self, config: CoordinatorConfig, group: str, me: Member, ttl: float) -> None:
        self.config = config
        self.group = group
        self.me = me
        self.ttl = ttl

    @abc.abstractmethod
    def open(self) -> None:
        """Open a new session (a ZooKeeper session, an etcd lease) and register this member."""

    @abc.abstractmethod
    def renew(self) -> tuple[float, View]:
        """Keep the session alive and read the group.

        :returns: the session's time to live granted by the server, counted from before this
            call was made (the server cannot expire the session earlier), and the group.
        """

    @abc.abstractmethod
    def claim(self) -> int | None:
        """Try to take the vacant leadership; its term when this member won, else None."""

    @abc.abstractmethod
    def release(self, term: int) -> None:
        """Give up the leadership of ``term`` if this session still holds it, and withdraw
        this member (so that the others do not wait for it); :meth:`rejoin` comes back."""

    @abc.abstractmethod
    def rejoin(self) -> None:
        """Register this member again after :meth:`release`."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the session at once (its nodes or keys go with it). Idempotent; never raises."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> None:
        """Block until the group may have changed, :meth:`wake` is called, or ``timeout``."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Make :meth:`wait` return now. Any thread."""

    @abc.abstractmethod
    def groups(self) -> list[GroupInfo]:
        """Every group under the prefix (for ``status``); needs :meth:`connect_only` first."""

    @abc.abstractmethod
    def connect_only(self) -> None:
        """Connect without registering a member (for ``status``)."""


def make_coordinator(config: CoordinatorConfig, group: str, me: Member, ttl: float) -> Coordinator:
    """The coordinator for ``config``'s backend (imports its client library here)."""
    if config.backend == "zookeeper":
        from .zookeeper import ZooKeeperCoordinator

        return ZooKeeperCoordinator(config, group, me, ttl)
    from .etcd import EtcdCoordinator

    return EtcdCoordinator(config, group, me, ttl)
