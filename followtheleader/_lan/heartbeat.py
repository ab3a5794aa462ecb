"""Heartbeats over UDP: the server thread that receives them.

* :class:`HeartbeatServer` is a ``socketserver.UDPServer`` whose ``serve_forever`` runs on
  the thread ``followtheleader-heartbeat-<name>``; each datagram is handed to a callback on
  that thread. Its one socket also sends every datagram this node sends (from any thread), so
  peers see one address per node.
* :class:`MulticastServer` (mDNS mode, protocol 3) receives the leader's multicast beats on
  the thread ``followtheleader-multicast-<name>`` in the same way; it sends nothing.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import socketserver
import sys
from collections.abc import Callable

from .._runtime.logs import RateLimitedWarning
from .._wire.protocol import MAX_DATAGRAM

__all__ = [
    "HeartbeatPortError",
    "HeartbeatServer",
    "MulticastServer",
    "bind_heartbeat_server",
    "open_multicast_server",
]

log = logging.getLogger(__name__)

OnDatagrams = Callable[[list[tuple[bytes, tuple[str, int]]]], None]

MAX_BATCH = 256
"""At most this many datagrams are read in one wake-up of the heartbeat thread."""


class HeartbeatPortError(OSError):
    """The heartbeat port could not be bound."""


class _DatagramHandler(socketserver.BaseRequestHandler):
    """Hands the datagram that woke the server, and every one already waiting behind it, to
    the server's callback in one batch (heartbeat thread).

    A leader's followers answer its heartbeats at about the same moment: reading them all in
    one wake-up, and deciding on them under one acquisition of the state lock, costs a few
    wake-ups per interval instead of one per follower.
    """

    server: HeartbeatServer

    def handle(self) -> None:
        data, sock = self.request
        normalise = self.server.normalise
        batch = [(data, normalise(self.client_address))]
        while len(batch) < MAX_BATCH:
            try:
                data, source = sock.recvfrom(self.server.max_packet_size, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. ECONNREFUSED for an earlier datagram: the rest waits for select
                break
            batch.append((data, normalise(source)))
        self.server.on_datagrams(batch)


class HeartbeatServer(socketserver.UDPServer):
    """The UDP heartbeat socket and the server loop that reads it.

    :param address: ``(host, port)`` to bind; port 0 for any free port.
    :param on_datagrams: called on the heartbeat thread with the datagrams read in one
        wake-up, each with its source, in the order they arrived.
    :param warn: rate-limited logger for network trouble.
    :param on_error: called on the heartbeat thread when handling a datagram raised.
    """

    allow_reuse_address = False  # on Linux SO_REUSEADDR would let two nodes share a UDP port
    max_packet_size = MAX_DATAGRAM + 1  # one byte more, so that oversized datagrams are seen

    def __init__(
        self,
        address: tuple[str, int],
        on_datagrams: OnDatagrams,
        warn: RateLimitedWarning,
        on_error: Callable[[BaseException, str], None],
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.on_datagrams = on_datagrams
        self._warn = warn
        self._on_error = on_error
        super().__init__(address, _DatagramHandler, bind_and_activate=False)
        try:
            if self.address_family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.server_bind()
        except BaseException:
            self.server_close()
            raise

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        return int(self.server_address[1])

    def server_activate(self) -> None:
        """Nothing to do for UDP (kept for the socketserver protocol)."""

    def send(self, data: bytes, address: tuple[str, int], multicast: bool = False) -> None:
        """Send one datagram; failures are logged (rate-limited), never raised. Any thread.

        A multicast beat that cannot be sent (no multicast route) is only logged: no follower
        then says it receives them, and the leader's beats go one by one."""
        if self.address_family == socket.AF_INET6 and ":" not in address[0]:
            address = ("::ffff:" + address[0], address[1])
        try:
            self.socket.sendto(data, address)
        except OSError as exc:
            if multicast:
                self._warn(f"send-multicast:{exc.errno}", "cannot send a multicast beat: %s", exc.strerror or exc)
                return
            text = f"cannot send a heartbeat to {address[0]}:{address[1]}: {exc.strerror or exc}"
            if self._warn(f"send:{exc.errno}", "%s", text) and exc.errno != errno.ECONNREFUSED:
                # The network is down or unreachable: tell the user too. (Linux reports a port
                # unreachable for an earlier datagram as ECONNREFUSED: a peer that stopped.)
                self._on_error(exc, text)

    def normalise(self, address: tuple[str, ...]) -> tuple[str, int]:
        """``(host, port)`` of a source address, with IPv4-mapped IPv6 turned back to IPv4."""
        host = str(address[0])
        if host.startswith("::ffff:"):
            with contextlib.suppress(ValueError):
                host = str(ipaddress.IPv6Address(host.split("%")[0]).ipv4_mapped or host)
        return host, int(address[1])

    def handle_error(self, request: object, client_address: object) -> None:
        """A datagram made the handler raise: log it, report it, keep serving."""
        log.exception("error while handling a heartbeat datagram from %s", client_address)
        exc = sys.exc_info()[1]
        if exc is not None:
            self._on_error(exc, f"error while handling a heartbeat datagram from {client_address}")


def bind_heartbeat_server(
    host: str,
    port: int,
    explicit: bool,
    on_datagram: OnDatagrams,
    warn: RateLimitedWarning,
    on_error: Callable[[BaseException, str], None],
) -> HeartbeatServer:
    """Bind the heartbeat socket.

    When ``port`` is taken and the user did not choose it, any free port is used instead (it
    is advertised through DNS-SD anyway).

    :raises HeartbeatPortError: when the port cannot be bound, with a message that says why.
    """
    try:
        return HeartbeatServer((host, port), on_datagram, warn, on_error)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and not explicit:
            log.info("heartbeat port %d is taken; using a free port instead", port)
            return bind_heartbeat_server(host, 0, True, on_datagram, warn, on_error)
        hint = " (it is taken; choose another port, or 0 for any free one)" if exc.errno == errno.EADDRINUSE else ""
        raise HeartbeatPortError(
            exc.errno, f"cannot bind the heartbeat socket to {host}:{port}: {exc.strerror}{hint}"
        ) from exc


class MulticastServer(HeartbeatServer):
    """A socket bound to a group's multicast address and port, member of that multicast group
    on the default interface, that only receives: the leader's beats sent there (see
    :func:`followtheleader._wire.protocol.multicast_group`). Several electors of one host
    share the address (``SO_REUSEADDR``); each gets a copy of every datagram."""

    allow_reuse_address = True

    def server_bind(self) -> None:
        super().server_bind()
        group = socket.inet_aton(str(self.server_address[0]))
        self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + socket.inet_aton("0.0.0.0"))


def open_multicast_server(
    address: tuple[str, int],
    on_datagrams: OnDatagrams,
    warn: RateLimitedWarning,
    on_error: Callable[[BaseException, str], None],
) -> MulticastServer | None:
    """The multicast socket, or None (logged) when the host cannot receive multicast there: the
    node then gets its leader's beats one by one, as without multicast."""
    try:
        return MulticastServer(address, on_datagrams, warn, on_error)
    except OSError as exc:
        log.info("no multicast heartbeats at %s:%d (%s): beats come one by one", *address, exc.strerror or exc)
        return None
