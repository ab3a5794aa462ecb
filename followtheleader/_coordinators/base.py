"""Coordinator mode: the interface to a coordination service and the URL that names one.

A :class:`Coordinator` is what the session thread of a coordinated elector (see
:mod:`followtheleader._coordinators.backend`) talks to: ZooKeeper (:mod:`followtheleader._coordinators.zookeeper`,
through kazoo), etcd v3 (:mod:`followtheleader._coordinators.etcd`, through etcd3gw), the
in-process :mod:`followtheleader._coordinators.memory`, or a driver another package registers.
The URL's scheme picks the driver from :mod:`followtheleader._coordinators.registry`. Every
method blocks (bounded by the client's timeouts) and is called from that one thread only,
except :meth:`Coordinator.wake` (any thread).

A group's data in the service, under the URL's prefix (``/followtheleader`` by default)::

    <prefix>/<quoted group name>/leader                  the leadership, bound to the leader's session
    <prefix>/<quoted group name>/members/<id>.<priority>  one per live member, bound to its session

The term of a leadership is a number the server gives the ``leader`` node or key when it is
created (ZooKeeper: its creation zxid; etcd: its create revision); both only grow.

The client libraries are optional: a driver's module (and its client library) is imported when
a coordinator is made (:func:`make_coordinator`), and :func:`parse_coordinator` checks that the
library is installed, so that ``elect()`` fails early.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import json
import logging
import urllib.parse
from dataclasses import dataclass, field

from .._core.lease import View
from .._core.model import Member
from .registry import Driver, driver_for

__all__ = [
    "COORDINATOR_ENVIRONMENT_VARIABLE",
    "DEFAULT_PREFIX",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorError",
    "GroupInfo",
    "SessionLost",
    "make_coordinator",
    "member_from_json",
    "member_from_label",
    "member_json",
    "member_label",
    "parse_coordinator",
]

log = logging.getLogger(__name__)

COORDINATOR_ENVIRONMENT_VARIABLE = "FOLLOWTHELEADER_COORDINATOR"
"""Where the coordinator URL is read from when the ``coordinator`` option is not given."""
DEFAULT_PREFIX = "/followtheleader"


@dataclass(frozen=True)
class CoordinatorConfig:
    """A parsed coordinator URL.

    :ivar backend: the service's family: ``"zookeeper"``, ``"etcd"``, ``"memory"`` (or a
        registered driver's).
    :ivar hosts: the servers, as ``(host, port)``.
    :ivar prefix: the path (ZooKeeper) or key prefix (etcd) under which groups live.
    :ivar tls: True for the ``zookeepers://`` and ``etcds://`` schemes.
    :ivar username: from ``user:password@`` (ZooKeeper digest or SASL authentication).
    :ivar password: idem.
    :ivar query: the other settings of the URL's query (see the docs page "Beyond one subnet").
    :ivar url: the URL as given, password masked (for messages and logs).
    :ivar scheme: the URL's scheme, lower case: it names the driver in the registry
        (:mod:`followtheleader._coordinators.registry`).
    :ivar path: the URL's path, percent-decoded, without the slash that ends the servers
        ("" when none): what a driver whose :attr:`~followtheleader._coordinators.registry.Driver.path`
        is ``"database"`` names with it (PostgreSQL's database, Redis's database number),
        or, ``"socket"``, the Unix socket's path (with its leading slash).
    """

    backend: str
    hosts: tuple[tuple[str, int], ...]
    prefix: str = DEFAULT_PREFIX
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: tuple[tuple[str, str], ...] = ()
    url: str = ""
    scheme: str = ""
    path: str = ""

    def setting(self, name: str) -> str | None:
        """The value of query setting ``name``, or None."""
        return dict(self.query).get(name)


def parse_coordinator(url: str) -> CoordinatorConfig:
    """Check a coordinator URL and that its client library is installed.

    ``zookeeper://[user:password@]host[:port][,host[:port]...][/prefix][?settings]``, the same
    with ``zookeepers://`` for TLS; ``etcd://host[:port][,...][/prefix][?settings]`` and
    ``etcds://`` for TLS; ``memory://NAME`` (in this process only, for tests); or the scheme
    of a driver another package registers (:mod:`followtheleader._coordinators.registry`).

    :raises ValueError: for a malformed URL, an unknown scheme or setting, or a client
        library that is not installed (the message says which extra to install).
    """
    if not isinstance(url, str):
        raise TypeError(f"option 'coordinator' must be a URL string, not {type(url).__name__}")
    scheme_name, sep, rest = url.partition("://")
    if not sep:
        given = url if "@" not in url else "***@" + url.rpartition("@")[2]  # never a password in a message
        raise ValueError(
            f"option 'coordinator' must be a URL like zookeeper://host:2181/prefix or etcd://host:2379, not {given!r}"
        )
    driver = driver_for(scheme_name)  # raises ValueError naming the known schemes
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    username = password = None
    shown = url
    if "@" not in netloc and ("@" in path or "@" in query_text):
        # user:pa/ss@host: the host part ends at the raw '/', and the password would be read
        # as a host and a path (and shown in messages and logs): refuse, quoting nothing.
        raise ValueError(
            "option 'coordinator': the URL has an '@' after its host part; a '/', '?' or '#' in a "
            "user name or password must be percent-encoded (%2F, %3F, %23)"
        )
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        user, colon, secret = credentials.partition(":")
        if not user and not (colon and driver.backend == "redis"):  # redis://:password@ (requirepass)
            raise ValueError("option 'coordinator': credentials must be given as user:password@ or user@")
        if driver.refuse_credentials:
            raise ValueError(f"option 'coordinator': {driver.refuse_credentials}")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None  # user@: the client's own way (e.g. .pgpass)
        # The credentials are the start of what follows "://": mask the password as written
        # (percent-encoded or not), whatever characters it has.
        after = len(scheme_name) + len("://") + len(credentials)
        shown = f"{url[: len(scheme_name)]}://{user}:***{url[after:]}" if colon else url
    prefix, raw_path = DEFAULT_PREFIX, urllib.parse.unquote(path)
    if driver.path == "socket":  # unix:///path/to/socket: no server, a path
        if netloc:
            raise ValueError(f"option 'coordinator': a {scheme_name.lower()}:// URL names a socket, not a server")
        if not raw_path.strip("/"):
            raise ValueError(f"option 'coordinator': no socket path in {scheme_name.lower()}:// URL")
        hosts: tuple[tuple[str, int], ...] = ()
        raw_path = "/" + raw_path.lstrip("/")
    else:
        hosts = tuple(_parse_host(item, driver.default_port) for item in netloc.split(","))
        raw_path = raw_path.strip("/")
    if driver.one_name and (len(hosts) > 1 or any(port for _, port in hosts)):
        raise ValueError(f"option 'coordinator': a {scheme_name.lower()}:// URL names one store, without a port")
    if driver.path == "prefix":
        prefix = "/" + path.strip("/") if slash and path.strip("/") else DEFAULT_PREFIX
        if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
            raise ValueError(f"option 'coordinator': bad prefix {prefix!r}")
    query = tuple(urllib.parse.parse_qsl(query_text, keep_blank_values=True, strict_parsing=False))
    unknown = sorted({key for key, _ in query} - driver.query)
    if unknown:
        raise ValueError(
            f"option 'coordinator': unknown setting(s) {', '.join(unknown)} for {driver.backend}; "
            f"known: {', '.join(sorted(driver.query)) or 'none'}"
        )
    if driver.library is not None and importlib.util.find_spec(driver.library) is None:
        raise ValueError(
            f"option 'coordinator': {driver.backend} needs the {driver.library} package; install {_extra(driver)}"
        )
    return CoordinatorConfig(
        driver.backend, hosts, prefix, driver.tls, username, password, query, shown, driver.scheme, raw_path
    )


def _extra(driver: Driver) -> str:
    """What to install for a driver's client library: an extra of this package for the
    built-in drivers, the package a registered driver names otherwise."""
    if driver.extra is None:
        return driver.library or "?"
    return f"followtheleader[{driver.extra}]" if driver.target.startswith("followtheleader.") else driver.extra


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


def member_json(member: Member) -> str:
    """A member as the JSON a ``leader`` node or key holds (ZooKeeper and etcd)."""
    return json.dumps({"node_id": member.node_id, "priority": member.priority})


def member_from_json(data: bytes | str) -> Member | None:
    """The member that :func:`member_json` wrote, or None for data this library did not write."""
    try:
        fields = json.loads(data)
        return Member(str(fields["node_id"]), int(fields["priority"]))
    except (ValueError, KeyError, TypeError):
        return None


def quote_group(name: str) -> str:
    """A group name as one path component (no ``/``)."""
    return urllib.parse.quote(name, safe="")


def ranked(members: list[Member]) -> tuple[Member, ...]:
    """Best-ranked first, as the mDNS mode ranks them."""
    return tuple(sorted(members, key=lambda m: m.rank, reverse=True))


class Session(abc.ABC):
    """The session half of a driver, as etcd's ``concurrency/session.go``: one client session
    with the service (a ZooKeeper session, an etcd lease), kept alive by the session thread.
    Everything the election half writes is bound to it and goes when it ends or expires."""

    @abc.abstractmethod
    def open(self) -> None:
        """Open a new session (ending the one before, if any)."""

    @abc.abstractmethod
    def keep_alive(self) -> float:
        """Keep the session alive.

        :returns: the session's time to live granted by the server, counted from before this
            call was made (the server cannot expire the session earlier).
        :raises SessionLost: when the session is gone.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """End the session at once (its nodes or keys go with it). Idempotent; never raises."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> None:
        """Block until the group may have changed (a watch fired, a poll is due), :meth:`wake`
        is called, or ``timeout``."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Make :meth:`wait` return now. Any thread."""

    @abc.abstractmethod
    def connect_only(self) -> None:
        """Connect without opening a session (for ``status``)."""


class Election(abc.ABC):
    """The election half of a driver, as etcd's ``concurrency/election.go``: this member's
    part in one group, written with the :class:`Session`'s lifetime."""

    @abc.abstractmethod
    def join(self) -> None:
        """Register this member in a session just opened (and clear what an older session of
        this very node left: its leadership has lapsed locally, so it only makes others wait)."""

    @abc.abstractmethod
    def observe(self) -> View:
        """Read the group (and watch it for the next change, where the service can)."""

    def watched_view(self) -> View | None:
        """The group as a watch keeps it, without a request; None when the driver keeps no
        such view or cannot vouch for it now (then the session thread calls :meth:`observe`).

        A driver that returns a view must return one that includes its own writes (claim,
        release, rejoin) once they were acknowledged. The default: None."""
        return None

    @abc.abstractmethod
    def claim(self) -> int | None:
        """Try to take the vacant leadership (campaign); its term when this member won, else None."""

    @abc.abstractmethod
    def release(self, term: int) -> None:
        """Give up the leadership of ``term`` if this session still holds it (resign), and
        withdraw this member (so that the others do not wait for it); :meth:`rejoin` comes back."""

    @abc.abstractmethod
    def rejoin(self) -> None:
        """Register this member again after :meth:`release`."""

    @abc.abstractmethod
    def groups(self) -> list[GroupInfo]:
        """Every group under the prefix (for ``status``); needs
        :meth:`Session.connect_only` first."""


class Coordinator(Session, Election):
    """A coordinator driver: the session and the election with one service, for one member of
    one group. The session thread of a coordinated elector opens the session and joins, keeps
    it alive and observes the group, claims and releases; the policy of when to do what is
    :class:`followtheleader._core.coordination.SessionPolicy`'s.

    All methods but :meth:`wake` run on the elector's session thread. Every blocking call is
    bounded by ``timeout`` (connect) or by the session TTL (requests); errors are raised as
    :class:`CoordinatorError`.

    :param config: the parsed URL.
    :param group: the group name.
    :param me: this member.
    :param ttl: the session (ZooKeeper) or lease (etcd) time to live asked for, in seconds.
    """

    service = "the coordinator"
    """The service's name in messages and events ("ZooKeeper", "etcd")."""
    renew_fraction = 0.2
    """The session thread renews every ``renew_fraction * ttl`` seconds."""

    def __init__(self, config: CoordinatorConfig, group: str, me: Member, ttl: float) -> None:
        self.config = config
        self.group = group
        self.me = me
        self.ttl = ttl


def make_coordinator(config: CoordinatorConfig, group: str, me: Member, ttl: float) -> Coordinator:
    """The coordinator of ``config``'s scheme: its driver's class is imported here (and with
    it the client library), never when the registry is read.

    :raises ValueError: for a scheme no driver serves.
    :raises TypeError: when the driver's target is no :class:`Coordinator` subclass.
    """
    driver = driver_for(config.scheme or config.backend)
    module_name, _, class_name = driver.target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Coordinator)):
        raise TypeError(f"coordinator driver {driver.scheme!r}: {driver.target} is not a Coordinator subclass")
    return cls(config, group, me, ttl)
