"""Unicast mode: a group's peers from a list of addresses or DNS names instead of mDNS.

With the ``peers`` option, no mDNS socket is opened: :class:`PeerDirectory` stands where
:class:`~followtheleader._lan.discovery.Discovery` stands in the default mode, behind the same
small interface (:class:`PeerSource`: ``start``, ``publish``, ``close``), and hands the
elector the set of addresses where nodes of the group may be. The state machine pings those
addresses until their nodes answer (see ``Machine.on_addresses``); the heartbeat protocol is
the one of the mDNS mode.

Entries are ``"host"``, ``"host:port"``, ``"[v6addr]:port"`` or ``"dns:name[:port]"``; the
port defaults to :data:`~followtheleader._options.DEFAULT_PORT`. A name (with or without
``dns:``) stands for every A (and, with an IPv6 heartbeat socket, AAAA) record it has, and
is resolved again every :data:`RESOLVE_EVERY` seconds, so replicas behind a Kubernetes
headless Service or a round-robin name join and drop out as the record set changes.

Threads: ``followtheleader-peers-<name>`` resolves the names (only when there are any),
waiting on an Event between rounds; it calls ``on_addresses`` and ``on_error``. A list of
IP addresses only is handed over once, on the thread that calls :meth:`PeerDirectory.start`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .._core.model import State

__all__ = [
    "PEERS_ENVIRONMENT_VARIABLE",
    "RESOLVE_EVERY",
    "PeerDirectory",
    "PeerEntry",
    "PeerSource",
    "is_local_address",
    "parse_peers",
]

log = logging.getLogger(__name__)

PEERS_ENVIRONMENT_VARIABLE = "FOLLOWTHELEADER_PEERS"
"""Where the peers are read from when the ``peers`` option is not given (comma-separated)."""
RESOLVE_EVERY = 5.0
"""Seconds between two resolutions of the names in a peer list."""
RETRY_EVERY = 1.0
"""Seconds before a name that could not be resolved is tried again."""

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\.?$){_LABEL}(?:\.{_LABEL})*\.?")
_NO_RECORDS = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)}

Resolver = Callable[..., list[tuple[Any, ...]]]


class PeerSource(Protocol):
    """What the elector needs of the layer that finds peers (mDNS discovery or a peer list)."""

    def start(self) -> None:
        """Begin finding peers (and, for mDNS, publish this node)."""

    def publish(self, role: State, term: int, serve_npm: bool = False) -> None:
        """Tell others this node's role and term, where the source can (never blocks)."""

    def close(self) -> None:
        """Stop; idempotent."""


@dataclass(frozen=True)
class PeerEntry:
    """One entry of a peer list.

    :ivar host: an IP address, or a DNS name to resolve.
    :ivar port: the heartbeat port of the nodes there.
    :ivar text: the entry as given (for messages).
    """

    host: str
    port: int
    text: str

    @property
    def is_address(self) -> bool:
        """True for an IP address (nothing to resolve)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_peers(value: Any, default_port: int) -> tuple[PeerEntry, ...]:
    """The entries of the ``peers`` option: a list of strings, or one string of entries
    separated by commas (as in ``FOLLOWTHELEADER_PEERS`` and ``--peers``).

    :raises TypeError: when it is neither.
    :raises ValueError: for an empty list, an entry that does not parse, or a port out of range.
    """
    if isinstance(value, str):
        items: list[Any] = value.split(",") if value.strip() else []
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        items = list(value)
    else:
        wanted = "a list of 'host[:port]' strings or one string"
        raise TypeError(f"option 'peers' must be {wanted}, not {type(value).__name__}")
    if not items:
        raise ValueError("option 'peers' must not be empty: give 'host[:port]' entries or 'dns:NAME'")
    entries = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"option 'peers' must hold strings, not {type(item).__name__}")
        entries.append(_parse_entry(item.strip(), default_port))
    return tuple(dict.fromkeys(entries))


def _parse_entry(text: str, default_port: int) -> PeerEntry:
    def bad(why: str) -> ValueError:
        return ValueError(
            f"option 'peers' holds {text!r}, which is not 'host', 'host:port', '[v6addr]:port' or 'dns:name': {why}"
        )

    if not text:
        raise bad("an empty entry")
    rest = text[4:] if text.lower().startswith("dns:") else text
    port_text: str | None = None
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise bad("a bracketed IPv6 address must be '[addr]' or '[addr]:port'")
        if tail:
            port_text = tail[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    elif rest.count(":") > 1:
        host = rest  # a bare IPv6 address, without a port
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad("an IPv6 address with a port goes in brackets: '[addr]:port'") from None
    else:
        host, colon, port_text_found = rest.partition(":")
        port_text = port_text_found if colon else None
        if not _HOST_NAME.fullmatch(host):
            raise bad(f"{host!r} is not a host name or IP address")
    port = default_port
    if port_text is not None:
        if not port_text.isdigit():
            raise bad(f"the port {port_text!r} is not a number")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"option 'peers' holds {text!r}, whose port must be from 1 to 65535, not {port}")
    return PeerEntry(host, port, text)


def is_local_address(host: str) -> bool:
    """True if ``host`` is an address of this host (a socket can be bound to it)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


class PeerDirectory:
    """The peer list of one elector: resolves its names, reports the addresses found.

    :param name: the group name (for the thread's name).
    :param entries: the parsed ``peers`` option.
    :param ipv6: the heartbeat socket takes IPv6 (then names give AAAA records too).
    :param on_addresses: called with every address found, whenever that set changes (on the
        resolver thread, or on the thread of :meth:`start` for a list of addresses only).
    :param on_error: called on the resolver thread when a name cannot be resolved (once a
        failure streak; it is tried again every :data:`RETRY_EVERY` seconds).
    :param resolve: ``socket.getaddrinfo`` (tests give another).
    :param every: seconds between two resolutions.
    """

    def __init__(
        self,
        name: str,
        entries: Sequence[PeerEntry],
        ipv6: bool,
        on_addresses: Callable[[frozenset[tuple[str, int]]], None],
        on_error: Callable[[BaseException, str], None],
        *,
        resolve: Resolver = socket.getaddrinfo,
        every: float = RESOLVE_EVERY,
    ) -> None:
        self._entries = tuple(entries)
        self._family = socket.AF_UNSPEC if ipv6 else socket.AF_INET
        self._on_addresses = on_addresses
        self._on_error = on_error
        self._resolve = resolve
        self._every = every
        self._stop = threading.Event()
        self._found: dict[PeerEntry, frozenset[tuple[str, int]]] = {}
        self._failing: set[PeerEntry] = set()
        self._reported: frozenset[tuple[str, int]] | None = None
        self._thread: threading.Thread | None = None
        if any(not entry.is_address for entry in self._entries):
            self._thread = threading.Thread(target=self._run, name=f"followtheleader-peers-{name}", daemon=True)

    def start(self) -> None:
        """Hand over the addresses of the list at once, or start resolving its names."""
        if self._thread is None:
            self._found = {entry: frozenset({(entry.host, entry.port)}) for entry in self._entries}
            self._report()
        else:
            self._thread.start()

    def publish(self, role: State, term: int, serve_npm: bool = False) -> None:
        """Nothing to publish: peers learn this node's role from its heartbeats."""

    def close(self) -> None:
        """Stop resolving and wait for the resolver thread. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.ident is not None and thread is not threading.current_thread():
            thread.join()

    # ----------------------------------------------------------------- resolver thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._resolve_all()
                self._report()
            except Exception as exc:  # never let the thread die silently
                log.exception("error while resolving the peer list")
                self._on_error(exc, f"error while resolving the peer list: {exc!r}")
            self._stop.wait(RETRY_EVERY if self._failing else self._every)

    def _resolve_all(self) -> None:
        for entry in self._entries:
            if self._stop.is_set():
                return
            if entry.is_address:
                self._found[entry] = frozenset({(entry.host, entry.port)})
                continue
            try:
                infos = self._resolve(entry.host, entry.port, self._family, socket.SOCK_DGRAM)
            except (OSError, UnicodeError) as exc:
                if isinstance(exc, socket.gaierror) and exc.errno in _NO_RECORDS:
                    self._found.pop(entry, None)  # the name has no records (left): nobody there
                self._failed(entry, exc)
                continue
            self._found[entry] = frozenset((str(info[4][0]), entry.port) for info in infos)
            if entry in self._failing:
                self._failing.discard(entry)
                log.info("the peer name %s resolves again", entry.host)

    def _failed(self, entry: PeerEntry, exc: BaseException) -> None:
        reason = getattr(exc, "strerror", None) or str(exc)
        text = f"cannot resolve the peer name {entry.host!r}: {reason} (trying again every {RETRY_EVERY:g} s)"
        if entry in self._failing:
            log.debug("%s", text)
            return
        self._failing.add(entry)
        log.warning("%s", text)
        self._on_error(exc, text)

    def _report(self) -> None:
        found = frozenset().union(*self._found.values()) if self._found else frozenset()
        if found != self._reported:
            self._reported = found
            log.debug("peer addresses: %s", sorted(found))
            self._on_addresses(found)
