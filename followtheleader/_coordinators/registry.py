"""Coordinator drivers by URL scheme: the built-in ones, and those other packages register.

A :class:`Driver` is what the library knows of a driver *before* importing it: the class as a
``"module:Class"`` path, and what :func:`followtheleader._coordinators.base.parse_coordinator`
needs to check a URL (default port, query settings, client library and the extra that
installs it). Importing this module imports no driver and no client library; the class is
imported by :func:`followtheleader._coordinators.base.make_coordinator` when an elector is
made.

Third-party drivers register through the entry-point group ``followtheleader.coordinators``.
The entry point's name is the URL scheme; it loads a :class:`Driver` (an object, not a class),
from a module that should itself import no client library. For example, in the driver
package's ``setup.cfg``::

    [options.entry_points]
    followtheleader.coordinators =
        consul = followtheleader_consul.registration:CONSUL

with, in ``followtheleader_consul/registration.py``::

    from followtheleader._coordinators.registry import Driver

    CONSUL = Driver(
        "consul", "followtheleader_consul.driver:ConsulCoordinator", default_port=8500,
        library="consul", extra="followtheleader-consul",
    )

and ``ConsulCoordinator`` a subclass of :class:`followtheleader._coordinators.base.Coordinator`.
A built-in scheme cannot be taken over; an entry point that fails to load, or loads something
else than a :class:`Driver` for its own name, is logged and skipped.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from dataclasses import dataclass, field

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "Driver", "driver_for", "drivers"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "followtheleader.coordinators"
"""The entry-point group through which other packages register coordinator drivers."""

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\Z")
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")


@dataclass(frozen=True)
class Driver:
    """A coordinator driver, as the registry lists it.

    :ivar scheme: the URL scheme (lower case), e.g. ``"zookeeper"`` or ``"etcds"``.
    :ivar target: the driver's :class:`~followtheleader._coordinators.base.Coordinator`
        subclass as ``"module:Class"``, imported only when a coordinator is made.
    :ivar default_port: the port of a server given without one.
    :ivar library: the client library's module, checked to be installed when a URL is parsed
        (None: the driver needs none).
    :ivar extra: the extra (or package) that installs the client library, for the message.
    :ivar tls: True for a scheme that asks for TLS (``zookeepers``, ``etcds``).
    :ivar query: the settings the URL's query may give.
    :ivar backend: the service's family, shared by a scheme and its TLS twin (defaults to the
        scheme); :attr:`followtheleader._coordinators.base.CoordinatorConfig.backend`.
    :ivar refuse_credentials: when not empty, ``user:password@`` is refused with this reason.
    :ivar one_name: the URL names one thing (a store), not servers: several hosts or a port
        are refused.
    :ivar path: what the URL's path names: ``"prefix"``, the key prefix under which groups
        live (ZooKeeper, etcd); ``"database"``, a database (PostgreSQL's name, Redis's
        number), kept as :attr:`~followtheleader._coordinators.base.CoordinatorConfig.path`;
        ``"socket"``, a Unix socket's path, and the URL names no server (``unix:///path``).
    """

    scheme: str
    target: str
    default_port: int = 0
    library: str | None = None
    extra: str | None = None
    tls: bool = False
    query: frozenset[str] = field(default_factory=frozenset)
    backend: str = ""
    refuse_credentials: str = ""
    one_name: bool = False
    path: str = "prefix"

    def __post_init__(self) -> None:
        if not _SCHEME.match(self.scheme):
            raise ValueError(f"a coordinator driver's scheme must be lower case letters, digits, +.-: {self.scheme!r}")
        if not _TARGET.match(self.target):
            raise ValueError(f"a coordinator driver's target must be 'module:Class', not {self.target!r}")
        if not 0 <= self.default_port < 65536:
            raise ValueError(f"bad default port {self.default_port} for scheme {self.scheme!r}")
        if self.path not in ("prefix", "database", "socket"):
            raise ValueError(f"a coordinator driver's path must be 'prefix', 'database' or 'socket', not {self.path!r}")
        object.__setattr__(self, "query", frozenset(self.query))
        if not self.backend:
            object.__setattr__(self, "backend", self.scheme)


_ZOOKEEPER_QUERY = frozenset({"ca", "certfile", "keyfile", "keyfile_password", "verify_certs", "sasl"})
_ETCD_QUERY = frozenset({"ca", "cert", "key", "api_path"})
_ETCD_NO_LOGIN = (
    "etcd3gw cannot log in with a user and password; use client certificates (etcds://...?cert=...&key=...)"
)
_POSTGRESQL_QUERY = frozenset(
    {
        # this library's: the schema and the tables' prefix (see the PostgreSQL driver)
        "schema",
        "table_prefix",
        # libpq's connection parameters, passed through to psycopg
        "application_name",
        "channel_binding",
        "connect_timeout",
        "gssencmode",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "options",
        "passfile",
        "requirepeer",
        "sslcert",
        "sslcrl",
        "sslkey",
        "sslmode",
        "sslpassword",
        "sslrootcert",
        "target_session_attrs",
        "tcp_user_timeout",
    }
)
_REDIS_QUERY = frozenset({"prefix", "db", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"})
_POSTGRESQL = "followtheleader._coordinators.postgresql:PostgreSQLCoordinator"
_REDIS = "followtheleader._coordinators.redis:RedisCoordinator"
_ZOOKEEPER = "followtheleader._coordinators.zookeeper:ZooKeeperCoordinator"
_ETCD = "followtheleader._coordinators.etcd:EtcdCoordinator"

BUILTIN: dict[str, Driver] = {
    driver.scheme: driver
    for driver in (
        Driver("zookeeper", _ZOOKEEPER, 2181, "kazoo", "zookeeper", False, _ZOOKEEPER_QUERY),
        Driver("zookeepers", _ZOOKEEPER, 2181, "kazoo", "zookeeper", True, _ZOOKEEPER_QUERY, "zookeeper"),
        Driver("etcd", _ETCD, 2379, "etcd3gw", "etcd", False, _ETCD_QUERY, refuse_credentials=_ETCD_NO_LOGIN),
        Driver("etcds", _ETCD, 2379, "etcd3gw", "etcd", True, _ETCD_QUERY, "etcd", _ETCD_NO_LOGIN),
        Driver("postgresql", _POSTGRESQL, 5432, "psycopg", "postgresql", False, _POSTGRESQL_QUERY, path="database"),
        Driver(
            "postgres",
            _POSTGRESQL,
            5432,
            "psycopg",
            "postgresql",
            False,
            _POSTGRESQL_QUERY,
            "postgresql",
            path="database",
        ),
        Driver("redis", _REDIS, 6379, "redis", "redis", False, _REDIS_QUERY, path="database"),
        Driver("rediss", _REDIS, 6379, "redis", "redis", True, _REDIS_QUERY, "redis", path="database"),
        Driver("unix", _REDIS, 0, "redis", "redis", False, _REDIS_QUERY, "redis", path="socket"),
        # the sentinels are named, and the path is SERVICE[/DB]: the primary is asked of them
        Driver("redis+sentinel", _REDIS, 26379, "redis", "redis", False, _REDIS_QUERY, "redis", path="database"),
        Driver(
            "memory",
            "followtheleader._coordinators.memory:MemoryCoordinator",
            refuse_credentials="the memory driver has no users",
            one_name=True,
        ),
    )
}
"""The drivers that come with the library (their client libraries are extras)."""


def _registered() -> dict[str, Driver]:
    """The drivers of other packages, from the entry-point group (read anew on each call:
    a package installed while the process runs is seen)."""
    found: dict[str, Driver] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        name = entry.name.lower()
        if name in BUILTIN:
            log.warning("ignored the coordinator driver %r of entry point %s: a built-in scheme", name, entry.value)
            continue
        if name in found:
            log.warning("ignored a second coordinator driver for scheme %r (%s)", name, entry.value)
            continue
        try:
            driver = entry.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the others
            log.warning("cannot load the coordinator driver %r (%s): %r", name, entry.value, exc)
            continue
        if not isinstance(driver, Driver) or driver.scheme != name:
            log.warning("ignored entry point %r (%s): it must load a Driver for scheme %r", name, entry.value, name)
            continue
        found[name] = driver
    return found


def drivers() -> dict[str, Driver]:
    """Every known driver by scheme: the built-in ones, then the registered ones."""
    return {**BUILTIN, **_registered()}


def driver_for(scheme: str) -> Driver:
    """The driver of URL scheme ``scheme`` (case-insensitive).

    :raises ValueError: for an unknown scheme; the message lists the known ones.
    """
    scheme = scheme.lower()
    driver = BUILTIN.get(scheme)  # no entry-point scan for the built-in schemes
    if driver is not None:
        return driver
    known = drivers()
    if scheme in known:
        return known[scheme]
    raise ValueError(f"option 'coordinator': unknown scheme {scheme!r}; use one of {', '.join(sorted(known))}")
