"""Heartbeats over UDP: the sockets, and the one thread that receives on them.

:class:`HeartbeatServer` holds the heartbeat socket, the multicast socket (mDNS mode,
protocol 3: the leader's multicast beats arrive there) and a wake-up socket pair. Its thread
``followtheleader-heartbeat-<name>`` blocks, with no timeout, in a selector over the three:
it wakes only when a datagram arrives or when :meth:`HeartbeatServer.close` writes to the
wake-up socket. The heartbeat socket also sends every datagram this node sends (from any
thread), so peers see one address per node; the multicast socket sends nothing.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import selectors
import socket
import threading
from collections.abc import Callable

from .._runtime.logs import RateLimitedWarning
from .._wire.protocol import MAX_DATAGRAM

__all__ = ["MAX_BATCH", "HeartbeatPortError", "HeartbeatServer", "bind_heartbeat_server"]

log = logging.getLogger(__name__)

Batch = list[tuple[bytes, tuple[str, int]]]

OnDatagrams = Callable[[Batch, bool], None]
"""Called on the heartbeat thread with the datagrams read from one socket in one wake-up,
each with its source, in the order they arrived, and whether that socket is the multicast one."""

MAX_BATCH = 256
"""At most this many datagrams are read from one socket in one wake-up of the heartbeat thread."""

_MAX_PACKET = MAX_DATAGRAM + 1
"""One byte more than the largest datagram, so that oversized ones are seen (and refused)."""


class HeartbeatPortError(OSError):
    """The heartbeat port could not be bound."""


class HeartbeatServer:
    """The heartbeat socket, the multicast socket, and the thread that reads both.

    Which thread runs what: the constructor, :meth:`open_multicast` and :meth:`start` run on
    the thread that opens the elector; the thread ``followtheleader-heartbeat-<name>`` runs
    :meth:`_serve` and so ``on_datagrams`` (and ``on_error`` when that raised); :meth:`send`
    runs on any thread; :meth:`close` on any thread but the heartbeat one.

    A leader's followers answer its heartbeats at about the same moment: reading them all in
    one wake-up (up to :data:`MAX_BATCH`), and deciding on them under one acquisition of the
    state lock, costs a few wake-ups per interval instead of one per follower.

    On IPv4 the heartbeat socket does not loop its multicast beats back to this host
    (``IP_MULTICAST_LOOP`` 0): a leader does not wake for its own beat. An elector on the same
    host as its leader therefore gets no multicast beat; its acks say so and the leader sends
    it its beats one by one.

    :param address: ``(host, port)`` to bind; port 0 for any free port.
    :param on_datagrams: see :data:`OnDatagrams`.
    :param warn: rate-limited logger for network trouble.
    :param on_error: called when handling datagrams raised, or a send failed for a reason the
        user should know.
    """

    def __init__(
        self,
        address: tuple[str, int],
        on_datagrams: OnDatagrams,
        warn: RateLimitedWarning,
        on_error: Callable[[BaseException, str], None],
    ) -> None:
        self.family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._on_datagrams = on_datagrams
        self._warn = warn
        self._on_error = on_error
        # No SO_REUSEADDR: on Linux it would let two nodes share a UDP port.
        self.socket = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            if self.family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            else:
                self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            self.socket.bind(address)
            self._wake_reader, self._wake_writer = socket.socketpair()
        except BaseException:
            self.socket.close()
            raise
        self.multicast_socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        return int(self.socket.getsockname()[1])

    def open_multicast(self, address: tuple[str, int]) -> bool:
        """Open a socket bound to a group's multicast address and port, member of that group on
        the default interface, that only receives the leader's beats sent there (see
        :func:`followtheleader._wire.protocol.multicast_group`). Several electors of one host
        share the address (``SO_REUSEADDR``); each gets a copy of every datagram.

        Before :meth:`start`. False (logged) when the host cannot receive multicast there: the
        node then gets its leader's beats one by one, as without multicast."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            membership = socket.inet_aton(address[0]) + socket.inet_aton("0.0.0.0")
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        except OSError as exc:
            sock.close()
            log.info("no multicast heartbeats at %s:%d (%s): beats come one by one", *address, exc.strerror or exc)
            return False
        self.multicast_socket = sock
        return True

    def start(self, thread_name: str) -> None:
        """Start the heartbeat thread."""
        self._thread = threading.Thread(target=self._serve, name=thread_name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Wake the heartbeat thread, wait for it to return, close every socket. Idempotent.

        Never in a forked child: the wake-up pair is shared with the parent, whose heartbeat
        thread the byte would end (the child forgets this object instead)."""
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"x")
            self._thread.join()
        for sock in (self.socket, self.multicast_socket, self._wake_reader, self._wake_writer):
            if sock is not None:
                sock.close()

    def send(self, data: bytes, address: tuple[str, int], multicast: bool = False) -> None:
        """Send one datagram; failures are logged (rate-limited), never raised. Any thread.

        A multicast beat that cannot be sent (no multicast route) is only logged: no follower
        then says it receives them, and the leader's beats go one by one."""
        if self.family == socket.AF_INET6 and ":" not in address[0]:
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

    # ----------------------------------------------------------------- the heartbeat thread

    def _serve(self) -> None:
        """Heartbeat thread: wait, with no timeout, until a socket is readable; hand what it
        holds over in one batch; return once :meth:`close` writes to the wake-up socket. (The
        selector failing, which it should never do, is logged and reported: no silent end.)"""
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._wake_reader, selectors.EVENT_READ, None)
                selector.register(self.socket, selectors.EVENT_READ, False)
                if self.multicast_socket is not None:
                    selector.register(self.multicast_socket, selectors.EVENT_READ, True)
                while True:
                    for key, _events in selector.select():
                        if key.data is None:
                            return
                        batch = self._read(key.fileobj)  # type: ignore[arg-type]
                        if batch:
                            self._hand_over(batch, multicast=key.data)
        except Exception as exc:
            log.exception("the heartbeat thread stopped")
            self._on_error(exc, "the heartbeat thread stopped: no heartbeat is received any more")

    def _read(self, sock: socket.socket) -> Batch:
        """Heartbeat thread: every datagram already waiting on ``sock``, up to :data:`MAX_BATCH`."""
        batch: Batch = []
        while len(batch) < MAX_BATCH:
            try:
                data, source = sock.recvfrom(_MAX_PACKET, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. ECONNREFUSED for an earlier datagram: the rest waits for select
                break
            batch.append((data, normalise(source)))
        return batch

    def _hand_over(self, batch: Batch, multicast: bool) -> None:
        """Heartbeat thread: ``on_datagrams``; if it raises, log it, report it, keep serving."""
        try:
            self._on_datagrams(batch, multicast)
        except Exception as exc:
            sources = ", ".join(sorted({f"{host}:{port}" for _data, (host, port) in batch}))
            log.exception("error while handling heartbeat datagrams from %s", sources)
            self._on_error(exc, f"error while handling heartbeat datagrams from {sources}")


def normalise(address: tuple[str, ...]) -> tuple[str, int]:
    """``(host, port)`` of a source address, with IPv4-mapped IPv6 turned back to IPv4."""
    host = str(address[0])
    if host.startswith("::ffff:"):
        with contextlib.suppress(ValueError):
            host = str(ipaddress.IPv6Address(host.split("%")[0]).ipv4_mapped or host)
    return host, int(address[1])


def bind_heartbeat_server(
    host: str,
    port: int,
    explicit: bool,
    on_datagrams: OnDatagrams,
    warn: RateLimitedWarning,
    on_error: Callable[[BaseException, str], None],
) -> HeartbeatServer:
    """Bind the heartbeat socket.

    When ``port`` is taken and the user did not choose it, any free port is used instead (it
    is advertised through DNS-SD anyway).

    :raises HeartbeatPortError: when the port cannot be bound, with a message that says why.
    """
    try:
        return HeartbeatServer((host, port), on_datagrams, warn, on_error)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and not explicit:
            log.info("heartbeat port %d is taken; using a free port instead", port)
            return bind_heartbeat_server(host, 0, True, on_datagrams, warn, on_error)
        hint = " (it is taken; choose another port, or 0 for any free one)" if exc.errno == errno.EADDRINUSE else ""
        raise HeartbeatPortError(
            exc.errno, f"cannot bind the heartbeat socket to {host}:{port}: {exc.strerror}{hint}"
        ) from exc
