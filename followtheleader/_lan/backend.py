"""The LAN backend: the heartbeat protocol, with peers found by mDNS or from a list.

:class:`LanBackend` is the :class:`~followtheleader._runtime.backend.Backend` of the default
mode (mDNS, :class:`~followtheleader._lan.discovery.Discovery`) and of the unicast mode (the
``peers`` option, :class:`~followtheleader._lan.peers.PeerDirectory`): both drive the core's
:class:`~followtheleader._core.machine.Machine` with the same UDP heartbeats. Its threads (all
daemon threads, all gone after :meth:`LanBackend.close`):

* ``followtheleader-heartbeat-<name>``: the one receiver thread of
  :class:`~followtheleader._lan.heartbeat.HeartbeatServer`, blocked in a selector over the
  heartbeat socket and (mDNS mode) the multicast socket; the datagrams read from one socket in
  one wake-up go to :meth:`LanBackend._on_datagrams`, which feeds them in one step.
* zeroconf's ServiceBrowser thread: runs :meth:`LanBackend._on_record`,
  :meth:`LanBackend._on_goodbye` and :meth:`LanBackend._on_npm_record`; zeroconf's own
  event-loop thread publishes the records. With listed peers there is no zeroconf at all:
  ``followtheleader-peers-<name>`` (only when the list holds names) runs
  :meth:`LanBackend._on_addresses`.

The facade's ticker and callback threads serve it as they serve every backend. Every input
goes through the facade's feed: the machine decides under the state lock, the DNS-SD record
is handed to zeroconf there (:meth:`LanBackend.decided`, which never blocks), and the
datagrams are sent after the lock is released (:meth:`LanBackend.carry_out`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence

from .._core.machine import Action, Machine, NpmPing, Publish, Send, Timing
from .._core.messages import ANYONE, Message, PeerRecord
from .._core.model import Member, State
from .._runtime.backend import Description, Feeder
from .._runtime.logs import RateLimitedWarning
from .._runtime.stats import IoCounts
from .._wire.auth import MAX_CLOCK_SKEW, Authenticator
from .._wire.protocol import NPM_PING, NPM_PONG, decode_datagram, encode_message, multicast_group
from .discovery import Discovery
from .heartbeat import HeartbeatServer, bind_heartbeat_server
from .peers import PeerDirectory, PeerSource, is_local_address
from .settings import LanSettings

__all__ = ["LanBackend", "PeerSourceFactory"]

log = logging.getLogger(__name__)

PeerSourceFactory = Callable[["LanBackend", Member], PeerSource]
"""Makes the peer source of a LAN backend (on the thread of ``start()``), given this node
with its bound heartbeat port."""


class LanBackend:
    """The heartbeat protocol on one LAN segment (mDNS) or between listed peers.

    :param settings: what the options say about the LAN.
    :param feeder: the facade's way into the state machine.
    :param peer_source: how peers are found: :meth:`mdns` or :meth:`listed_peers` (the
        facade's factory chooses; nothing here tells the modes apart).
    """

    def __init__(self, settings: LanSettings, feeder: Feeder, peer_source: PeerSourceFactory) -> None:
        self._settings = settings
        self._peer_source = peer_source
        self._feeder = feeder
        self._warn = RateLimitedWarning(log)
        self.io = IoCounts()
        self._auth = Authenticator(settings.secret, settings.name) if settings.secret is not None else None
        self.machine = Machine(
            settings.name,
            Member(settings.node_id, settings.priority, "", settings.port),
            Timing(settings.interval, settings.max_failed_responses),
            quorum=settings.quorum,
            npm_compat=settings.npm_compat,
            boot=time.time_ns() // 1000,
        )
        self.tick_period = settings.interval
        self._server: HeartbeatServer | None = None
        self._discovery: PeerSource | None = None
        self._npm_pings_answered = 0

    @property
    def port(self) -> int:
        """The heartbeat port (the one actually bound once open). Any thread."""
        return self.machine.me.port

    def describe(self) -> Description:
        """``heartbeat port N``, in both modes. Any thread."""
        return Description(f"heartbeat port {self.port}", {"port": self.port})

    def counters(self) -> dict[str, int]:
        """Trouble seen (malformed datagrams or records, send errors), and
        ``npm-pings-answered``. Any thread."""
        counts = dict(self._warn.counts)
        if self._npm_pings_answered:
            counts["npm-pings-answered"] = self._npm_pings_answered
        return counts

    # ----------------------------------------------------------------- life cycle (facade's threads)

    def open(self) -> None:
        """Bind the heartbeat socket, start the machine, then discovery and the heartbeat thread.

        :raises HeartbeatPortError: when the port cannot be bound.
        :raises DiscoveryError: when mDNS cannot be started.
        """
        settings = self._settings
        self._server = bind_heartbeat_server(
            settings.host,
            settings.port,
            settings.port_explicit,
            self._on_datagrams,
            self._warn,
            self._feeder.report_error,
        )
        me = Member(settings.node_id, settings.priority, "", self._server.port)
        self.machine.me = me
        self._discovery = self._peer_source(self, me)
        self._feeder.feed(self.machine.start)  # before discovery, so that no early record is dropped
        self._discovery.start()
        self._server.start(f"followtheleader-heartbeat-{settings.name}")

    def listed_peers(self, me: Member) -> PeerSource:
        """Peers from the ``peers`` list (unicast mode): a :data:`PeerSourceFactory`."""
        settings = self._settings
        assert settings.peers is not None
        ipv6 = ":" in settings.host
        return PeerDirectory(settings.name, settings.peers, ipv6, self._on_addresses, self._feeder.report_error)

    def mdns(self, me: Member) -> PeerSource:
        """Peers found by mDNS, this node published there: a :data:`PeerSourceFactory`.

        Without a secret, on IPv4, it also opens the heartbeat server's multicast socket for
        the leader's beats (protocol 3; see :attr:`Machine.multicast`): the segment carries
        multicast anyway.
        (Stamps of an authenticated group name each receiver, so it keeps unicast beats.)
        """
        if self._auth is None and ":" not in self._settings.host and self._server is not None:
            address = multicast_group(self._settings.name)
            if self._server.open_multicast(address):
                self.machine.multicast = address  # before the machine starts: no lock needed yet
        return Discovery(
            self._settings,
            me,
            self._auth,
            self._on_record,
            self._on_goodbye,
            self._warn,
            self._feeder.report_error,
            on_npm_record=self._on_npm_record,
            boot=self.machine.boot,
        )

    def after_resign(self) -> None:
        """Nothing to do: the resignation went out with the machine's datagrams."""

    def close(self) -> None:
        """Close discovery (DNS-SD goodbye), then the heartbeat server: its thread is gone and
        its sockets closed when this returns. Idempotent."""
        if self._discovery is not None:
            self._discovery.close()
        if self._server is not None:
            self._server.close()

    def disown_after_fork(self) -> None:
        """In a forked child: a stopped machine; the parent's sockets (the heartbeat and
        multicast sockets and the wake-up pair) are forgotten, never written to: a byte on the
        wake-up pair would end the parent's heartbeat thread."""
        self.machine.state = State.STOPPED
        self.machine.leader = None
        self._server = None
        self._discovery = None

    # ----------------------------------------------------------------- decisions (feeding thread)

    def decided(self, actions: Sequence[Action]) -> list[Action]:
        """Under the state lock: hand DNS-SD publications to discovery; return the sends."""
        sends: list[Action] = []
        for action in actions:
            if isinstance(action, (Send, NpmPing)):
                sends.append(action)
            elif isinstance(action, Publish) and self._discovery is not None:
                self._discovery.publish(action.role, action.term, action.serve_npm)
        return sends

    def carry_out(self, actions: Sequence[Action]) -> None:
        """Under the send lock alone: send the datagrams, in the order decided."""
        server = self._server
        if server is None:
            return
        encoded: dict[int, bytes] = {}  # a leader's heartbeat to all: encoded once, if unstamped
        for send in actions:
            if isinstance(send, NpmPing):
                data = NPM_PING
            elif not isinstance(send, Send):
                continue
            elif self._auth is not None:
                data = self._encode(send.message, send.to)
            else:
                cached = encoded.get(id(send.message))
                data = cached if cached is not None else encode_message(send.message)
                encoded[id(send.message)] = data
            server.send(data, send.address, multicast=send.address == self.machine.multicast)
            self.io.add("heartbeat-sent")

    def _encode(self, message: Message, to: str) -> bytes:
        """The datagram for ``message``: stamped and tagged in an authenticated group."""
        if self._auth is None:
            return encode_message(message)
        return self._auth.seal(encode_message(message, self._auth.next_stamp(time.time(), to)))

    # ----------------------------------------------------------------- inputs (backend's threads)

    def _on_datagrams(self, batch: list[tuple[bytes, tuple[str, int]]], multicast: bool = False) -> None:
        """Heartbeat thread: the datagrams read from one socket in one wake-up (the multicast
        one when ``multicast``), decided on in one step."""
        self.io.add("heartbeat-received", len(batch))
        steps: list[Callable[[float], list[Action]]] = []
        for data, source in batch:
            step = self._step_for(data, source, multicast)
            if step is not None:
                steps.append(step)
        if len(steps) == 1:
            self._feeder.feed(steps[0])
        elif steps:
            self._feeder.feed(lambda now: [action for step in steps for action in step(now)])

    def _is_leader(self) -> bool:
        """Any thread but one holding the state lock: leading, with the lease holding."""
        return self._feeder.locked(lambda: self.machine.is_leader(time.monotonic()))

    def _step_for(
        self, data: bytes, source: tuple[str, int], multicast: bool = False
    ) -> Callable[[float], list[Action]] | None:
        """Heartbeat thread: the machine step for one datagram, or None when it is answered
        here (an npm follower's ``PING``) or dropped (counted and logged, rate-limited; a
        multicast beat in this node's own name, silently: the heartbeat socket does not loop
        its beats back, but a copy may still come from elsewhere)."""
        node_id = self._settings.node_id
        if data in (NPM_PING, NPM_PONG) and self._settings.npm_compat:
            if data == NPM_PONG:  # the npm leader answers our PING
                return functools.partial(self.machine.on_npm_pong, source)
            if self._server is not None and self._is_leader():  # an npm follower of ours
                self._server.send(NPM_PONG, source)
                self._npm_pings_answered += 1  # heartbeat thread only
            return None
        if self._auth is not None:
            body = self._auth.open(data)
            if body is None:
                self._warn("unauthenticated", "dropped an unauthenticated heartbeat datagram from %s:%s", *source)
                return None
            data = body
        decoded = decode_datagram(data)
        if decoded is None:
            self._warn("bad-datagram", "ignored a malformed heartbeat datagram from %s:%s", *source)
            return None
        message, stamp = decoded
        if multicast and (message.sender == node_id or not message.multicast):
            return None
        if self._auth is not None:
            refusal = "unstamped" if stamp is None else self._auth.refusal(message.sender, stamp, time.time(), node_id)
            if refusal == "clock-skew":
                text = f"clocks differ by more than {MAX_CLOCK_SKEW:.0f} s with {source[0]}: its heartbeats are refused"
                if self._warn("clock-skew", "%s", text):
                    self._feeder.report_error(OSError(text), text)
                return None
            if refusal is not None:
                self._warn("replayed", "dropped a %s heartbeat datagram from %s:%s", refusal, *source)
                return None
        if message.sender == node_id and not (source[1] == self.port and is_local_address(source[0])):
            # Our own id from elsewhere: a replayed copy of one of our pings (or a node with
            # our id); it must not make us take that address for our own.
            self._warn("replayed", "dropped a datagram in this node's name from %s:%s", *source)
            return None
        if message.sender == node_id or (stamp is not None and stamp.to == ANYONE):
            # A ping to whoever is at an address (unicast mode, stamped ANYONE: only in an
            # authenticated group), or one of this node's own: answered, never taken as proof
            # of life (a copy may be replayed to any node).
            return functools.partial(self.machine.on_address_ping, message, source)
        return functools.partial(self.machine.on_message, message, source)

    def _on_record(self, record: PeerRecord) -> None:
        """Browser thread: a peer's DNS-SD record appeared or changed."""
        self._feeder.feed(lambda now: self.machine.on_discovered(record, now))

    def _on_goodbye(self, node_id: str) -> None:
        """Browser thread: a peer withdrew its DNS-SD record."""
        self._feeder.feed(lambda now: self.machine.on_goodbye(node_id, now))

    def _on_addresses(self, addresses: frozenset[tuple[str, int]]) -> None:
        """Peers thread (or the one of :meth:`open`): the addresses of the peer list changed."""
        self._feeder.feed(lambda now: self.machine.on_addresses(addresses, now))

    def _on_npm_record(self, host: str, port: int) -> None:
        """Browser or zeroconf loop thread: an npm leader's DNS-SD record appeared."""
        self._feeder.feed(lambda now: self.machine.on_npm_record(host, port, now))
