"""Options of an elector: defaults, aliases and validation.

Everything a user can pass to :func:`followtheleader.elect` is checked here, once, before any
socket or thread exists, so that a bad value fails at ``elect()`` with a message that names
the option and says what is allowed.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._coordinators.base import COORDINATOR_ENVIRONMENT_VARIABLE, parse_coordinator
from ._lan.peers import PEERS_ENVIRONMENT_VARIABLE, PeerEntry, parse_peers
from ._wire.auth import Secret

__all__ = [
    "ACCEPTED_SECRET_ENVIRONMENT_VARIABLE",
    "DEFAULT_PORT",
    "SECRET_ENVIRONMENT_VARIABLE",
    "Options",
    "parse_options",
]

SECRET_ENVIRONMENT_VARIABLE = "FOLLOWTHELEADER_SECRET"
"""Where the secret is read from when the ``secret`` option is not given."""
ACCEPTED_SECRET_ENVIRONMENT_VARIABLE = "FOLLOWTHELEADER_ACCEPTED_SECRET"
"""A second secret accepted (never used to sign) beside the first one, for rotations."""

DEFAULT_PORT = 9001
"""The npm original's heartbeat port; used when it is free and the user asked for no port."""

_NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SERVICE_LABEL_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,13}[A-Za-z0-9])?")
_IP_VERSIONS = ("v4", "v6", "all")

# Names the npm original (or a JavaScript habit) uses, mapped to ours.
_ALIASES = {"maxFailedResponses": "max_failed_responses", "nodeId": "node_id"}


@dataclass(frozen=True)
class Options:
    """The validated options of one elector.

    :ivar name: the group name; every node of one group uses the same one.
    :ivar type: the DNS-SD service label, ``"ftl"`` meaning ``_ftl._udp.local.``.
    :ivar port: UDP heartbeat port; 0 means any free port.
    :ivar port_explicit: True when the user chose the port, so it is not replaced when taken.
    :ivar host: the address the heartbeat socket binds to.
    :ivar max_failed_responses: heartbeats missed in a row before the leader counts as lost.
    :ivar interval: seconds between heartbeats.
    :ivar priority: higher is preferred when a leader is chosen; ties go by node id.
    :ivar node_id: this node's identity, unique in its group.
    :ivar interfaces: addresses for mDNS, or None for every interface.
    :ivar ip_version: ``"v4"``, ``"v6"`` or ``"all"`` for mDNS.
    :ivar npm_compat: share the group with nodes of the npm package: as leader, publish the
        records they look for and answer their ``PING``; follow an npm leader (off with a secret).
    :ivar quorum: the expected group size: lead only while seeing a strict majority of it
        (this node included); None (the default) for availability first.
    :ivar secret: the group's shared secrets (the first signs, all are accepted), or None for
        an open group.
    :ivar coordinator: the URL of a ZooKeeper or etcd cluster that holds the leadership
        instead of mDNS and heartbeats (``zookeeper://h1:2181,h2:2181/prefix``,
        ``etcd://h1:2379``), or None for mDNS mode; default ``$FOLLOWTHELEADER_COORDINATOR``.
    :ivar coordinator_ttl: with a coordinator: the session (ZooKeeper) or lease (etcd) time
        to live in seconds; a crashed leader is replaced about this long after it died.
    :ivar peers: unicast mode: where the group's nodes may be (addresses or DNS names), or
        None to find them by mDNS.
    """

    name: str
    type: str = "ftl"
    port: int = DEFAULT_PORT
    port_explicit: bool = False
    host: str = "0.0.0.0"
    max_failed_responses: int = 3
    interval: float = 0.2
    priority: int = 0
    node_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    interfaces: tuple[str, ...] | None = None
    ip_version: str = "v4"
    npm_compat: bool = True
    quorum: int | None = None
    secret: tuple[Secret, ...] | None = field(default=None, repr=False)
    coordinator: str | None = field(default=None, repr=False)  # it may hold a password
    coordinator_ttl: float = 10.0
    peers: tuple[PeerEntry, ...] | None = None

    @property
    def service_type(self) -> str:
        """The fully qualified DNS-SD type, e.g. ``_ftl._udp.local.``."""
        return f"_{self.type}._udp.local."


def parse_options(*args: Any, **kwargs: Any) -> Options:
    """Build :class:`Options` from what ``elect()`` was given.

    Accepts ``elect("name", ...)``, ``elect(name="name", ...)`` and ``elect({"name": ...})``,
    as the npm original accepts "arguments or an object".

    :raises TypeError: for a missing name, an unknown option or a value of the wrong type.
    :raises ValueError: for a value of the right type outside what is allowed.
    """
    given: dict[str, Any] = {}
    if len(args) > 1:
        raise TypeError("elect() takes the group name or one mapping of options as its only positional argument")
    if args:
        if isinstance(args[0], Mapping):
            given.update(args[0])
        else:
            given["name"] = args[0]
    for key, value in kwargs.items():
        if key in given:
            raise TypeError(f"option {key!r} given twice")
        given[key] = value
    for alias, canonical in _ALIASES.items():
        if alias in given:
            if canonical in given:
                raise TypeError(f"options {alias!r} and {canonical!r} are the same option; give one")
            given[canonical] = given.pop(alias)

    known = {f for f in Options.__dataclass_fields__ if f != "port_explicit"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    if "name" not in given:
        raise TypeError("option 'name' is required: the name of the group to elect a leader in")

    values: dict[str, Any] = {"name": _check_name(given.pop("name"))}
    if "port" in given and given["port"] is not None:
        values["port"] = _check_int("port", given.pop("port"), 0, 65535)
        values["port_explicit"] = True
    given.pop("port", None)
    checkers: dict[str, Callable[[Any], Any]] = {
        "type": _check_type,
        "host": _check_host,
        "max_failed_responses": _check_max_failed_responses,
        "interval": _check_interval,
        "priority": lambda v: _check_int("priority", v, -(2**31), 2**31 - 1),
        "node_id": _check_node_id,
        "interfaces": _check_interfaces,
        "ip_version": _check_ip_version,
        "npm_compat": lambda v: _check_bool("npm_compat", v),
        "secret": _check_secret,
        "quorum": lambda v: _check_int("quorum", v, 1, 1000),
        "coordinator": _check_coordinator,
        "coordinator_ttl": _check_coordinator_ttl,
        "peers": lambda v: parse_peers(v, DEFAULT_PORT),
    }
    for key, value in given.items():
        if value is None and key in ("node_id", "interfaces", "host", "secret", "quorum", "peers", "coordinator"):
            continue
        values[key] = checkers[key](value)
    if given.get("secret") is None and os.environ.get(SECRET_ENVIRONMENT_VARIABLE):
        accepted = os.environ.get(ACCEPTED_SECRET_ENVIRONMENT_VARIABLE)
        values["secret"] = _check_secret([os.environ[SECRET_ENVIRONMENT_VARIABLE], *([accepted] if accepted else [])])
    if given.get("coordinator") is None and os.environ.get(COORDINATOR_ENVIRONMENT_VARIABLE):
        values["coordinator"] = _check_coordinator(os.environ[COORDINATOR_ENVIRONMENT_VARIABLE])
    if given.get("peers") is None and os.environ.get(PEERS_ENVIRONMENT_VARIABLE):
        try:
            values["peers"] = parse_peers(os.environ[PEERS_ENVIRONMENT_VARIABLE], DEFAULT_PORT)
        except ValueError as exc:
            raise ValueError(f"{PEERS_ENVIRONMENT_VARIABLE}: {exc}") from None
    if values.get("peers") is not None:
        if given.get("npm_compat") is True:
            raise ValueError("option 'npm_compat' cannot be used with 'peers': npm nodes are found by mDNS only")
        values["npm_compat"] = False
        values["port_explicit"] = True  # peers expect it at the listed port: no fallback to a free one
        if "host" not in values and any(":" in entry.host for entry in values["peers"]):
            values["host"] = "::"  # an IPv6 peer needs an IPv6 (dual-stack) heartbeat socket
    if values.get("coordinator") is not None and values.get("peers") is not None:
        raise ValueError(
            "options 'coordinator' and 'peers' are two modes: give one (the environment may set"
            f" {COORDINATOR_ENVIRONMENT_VARIABLE} or {PEERS_ENVIRONMENT_VARIABLE})"
        )
    if values.get("secret") is not None:
        if given.get("npm_compat") is True:
            raise ValueError("option 'npm_compat' cannot be used with a secret: npm nodes cannot authenticate")
        values["npm_compat"] = False
    if "host" not in values and values.get("ip_version", "v4") != "v4":
        values["host"] = "::"  # dual-stack heartbeats when mDNS may hand out IPv6 addresses
    return Options(**values)


def _check_name(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"option 'name' must be a str, not {type(value).__name__}")
    if not value or len(value.encode()) > 63:
        raise ValueError("option 'name' must be 1 to 63 bytes of UTF-8 (a DNS-SD instance label)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("option 'name' must not contain control characters")
    return value


def _check_type(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"option 'type' must be a str, not {type(value).__name__}")
    label = value[1:] if value.startswith("_") else value
    if not _SERVICE_LABEL_PATTERN.fullmatch(label):
        raise ValueError(
            "option 'type' must be a DNS-SD service label: 1 to 15 letters, digits or inner hyphens "
            f"(like 'ftl'), not {value!r}"
        )
    return label


def _check_int(option: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"option {option!r} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"option {option!r} must be from {low} to {high}, not {value}")
    return value


def _check_max_failed_responses(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value == 1:
        raise ValueError(
            "option 'max_failed_responses' must be from 2 to 100, not 1: with one missed heartbeat "
            "the leader's lease would be shorter than the heartbeat interval"
        )
    return _check_int("max_failed_responses", value, 2, 100)


def _check_bool(option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"option {option!r} must be True or False, not {type(value).__name__}")
    return value


def _check_interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"option 'interval' must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or not 0.01 <= value <= 60:
        raise ValueError(f"option 'interval' must be from 0.01 to 60 seconds, not {value}")
    return float(value)


def _check_host(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"option 'host' must be a str, not {type(value).__name__}")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"option 'host' must be an IP address to bind to, like '0.0.0.0', not {value!r}") from None
    return value


def _check_node_id(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"option 'node_id' must be a str, not {type(value).__name__}")
    if not _NODE_ID_PATTERN.fullmatch(value):
        raise ValueError(f"option 'node_id' must be 1 to 32 letters, digits, '_' or '-', not {value!r}")
    if value.lower().startswith("npm-"):
        raise ValueError(f"option 'node_id' must not start with 'npm-' (it names npm leaders), not {value!r}")
    return value


def _check_interfaces(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError("option 'interfaces' must be a list of IP addresses, or None for all interfaces")
    addresses = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"option 'interfaces' must hold IP address strings, not {type(item).__name__}")
        try:
            ipaddress.ip_address(item.split("%")[0])
        except ValueError:
            raise ValueError(f"option 'interfaces' holds {item!r}, which is not an IP address") from None
        addresses.append(item)
    if not addresses:
        raise ValueError("option 'interfaces' must not be empty; use None for all interfaces")
    return tuple(addresses)


def _check_secret(value: Any) -> tuple[Secret, ...]:
    """One secret, or a list of them: the first signs, every one is accepted (rotation)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError("option 'secret' must not be an empty list")
    secrets = []
    for item in values:
        if isinstance(item, Secret):
            secrets.append(item)
            continue
        if isinstance(item, str):
            item = item.encode()
        if not isinstance(item, (bytes, bytearray)):
            raise TypeError(f"option 'secret' must be bytes or str, or a list of them, not {type(item).__name__}")
        if not item:
            raise ValueError("option 'secret' must not be empty")
        secrets.append(Secret(bytes(item)))
    return tuple(secrets)


def _check_ip_version(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"option 'ip_version' must be one of {', '.join(_IP_VERSIONS)}, not {type(value).__name__}")
    if value.lower() not in _IP_VERSIONS:
        raise ValueError(f"option 'ip_version' must be one of {', '.join(_IP_VERSIONS)}, not {value!r}")
    return value.lower()


def _check_coordinator(value: Any) -> str:
    parse_coordinator(value)  # raises TypeError or ValueError naming the option
    return str(value)


def _check_coordinator_ttl(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"option 'coordinator_ttl' must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or not 2 <= value <= 300:
        raise ValueError(f"option 'coordinator_ttl' must be from 2 to 300 seconds, not {value}")
    return float(value)
