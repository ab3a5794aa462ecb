"""DNS-SD through python-zeroconf: publish this node's record, browse for its peers.

Discovery only: what it reports is a hint that a peer exists (and its role and term at some
point in the past); liveness comes from the heartbeats, never from DNS-SD caches, which keep
a crashed host's records for many minutes.

Threads:

* zeroconf's event-loop thread runs :meth:`Discovery._publish_loop`, which registers the
  record and then updates its TXT whenever :meth:`Discovery.publish` asks (latest state
  wins), and the goodbye at close. With ``npm_compat``, a leader also publishes what nodes
  of the npm package look for: instance ``<group>`` of ``_<type>._tcp`` (never of
  ``_<type>._udp``, the name a new npm leader probes: an answer would kill it);
* zeroconf's ServiceBrowser thread runs :meth:`Discovery._on_service_state_change`, which
  only parses the record and hands it on: it never blocks and never raises.

One ``Zeroconf`` instance is shared by all electors of a process (as python-zeroconf
advises); it is closed when the last of them stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hashlib
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import ifaddr  # python-zeroconf's own dependency for listing interfaces
from zeroconf import (
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceNameAlreadyRegistered,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceInfo

from .._core.messages import PeerRecord
from .._core.model import Member, State
from .._runtime.logs import RateLimitedWarning
from .._wire.auth import RECORD_REFRESH, Authenticator
from .._wire.protocol import decode_txt, encode_txt
from .settings import LanSettings

__all__ = ["Discovery", "DiscoveryError"]

log = logging.getLogger(__name__)

_IP_VERSIONS = {"v4": IPVersion.V4Only, "v6": IPVersion.V6Only, "all": IPVersion.All}
_RESOLVE_TIMEOUT_MS = 1000
_GOODBYE_TIMEOUT = 1.0
_NPM_RETRY = 1.0
"""Seconds before trying again to publish the npm records (another elector of this process
still had them registered)."""


class DiscoveryError(OSError):
    """mDNS could not be started (no usable interface, no multicast route, ...)."""


class _SharedZeroconf:
    """One ``Zeroconf`` per process and interface choice, counted by its users."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _instances: ClassVar[dict[tuple[Any, ...], tuple[Zeroconf, int]]] = {}

    @classmethod
    def acquire(cls, interfaces: tuple[str, ...] | None, ip_version: str) -> Zeroconf:
        key = (interfaces, ip_version)
        with cls._lock:
            if key in cls._instances:
                zc, users = cls._instances[key]
                cls._instances[key] = (zc, users + 1)
                return zc
            try:
                zc = Zeroconf(
                    interfaces=list(interfaces) if interfaces else InterfaceChoice.All,
                    ip_version=_IP_VERSIONS[ip_version],
                    use_asyncio=False,
                )
            except OSError as exc:
                raise DiscoveryError(
                    exc.errno, f"cannot start mDNS (is there a network interface with multicast?): {exc}"
                ) from exc
            cls._instances[key] = (zc, 1)
            return zc

    @classmethod
    def release(cls, zc: Zeroconf) -> None:
        with cls._lock:
            for key, (instance, users) in list(cls._instances.items()):
                if instance is zc:
                    if users > 1:
                        cls._instances[key] = (instance, users - 1)
                        return
                    del cls._instances[key]
                    break
        zc.close()


def _forget_shared_after_fork() -> None:
    """A forked child has none of its parent's zeroconf threads: it must open its own."""
    _SharedZeroconf._instances = {}
    _SharedZeroconf._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_shared_after_fork)


class Discovery:
    """This node's DNS-SD record and the browser for its peers' records.

    :param settings: the LAN backend's settings.
    :param member: this node (its port is the bound heartbeat port).
    :param auth: signs and checks records in an authenticated group, else None.
    :param on_record: called on the browser thread (or zeroconf's loop thread, for a record
        that had to be resolved) with each valid record seen.
    :param on_goodbye: called on the browser thread with the node id of a withdrawn record.
    :param warn: rate-limited logger for malformed records.
    :param on_error: called when publishing fails.
    :param on_npm_record: with ``npm_compat``, called like ``on_record`` with the address and
        port of an npm leader's record (instance ``<group>`` published by a node not ours).
        Its withdrawal is not reported: npm nodes send no goodbye; heartbeats tell when an
        npm leader is gone.
    """

    def __init__(
        self,
        settings: LanSettings,
        member: Member,
        auth: Authenticator | None,
        on_record: Callable[[PeerRecord], None],
        on_goodbye: Callable[[str], None],
        warn: RateLimitedWarning,
        on_error: Callable[[BaseException, str], None],
        *,
        on_npm_record: Callable[[str, int], None],
        boot: int = 0,
    ) -> None:
        self._settings = settings
        self._member = member
        self._boot = boot
        self._auth = auth
        self._on_record = on_record
        self._on_goodbye = on_goodbye
        self._warn = warn
        self._on_error = on_error
        self._on_npm_record = on_npm_record
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._names: dict[str, str] = {}  # instance name -> node id, of this group only
        self._desired: tuple[State, int] = (State.ELECTING, 0)
        self._serve_npm = False
        self._changed: asyncio.Event | None = None
        self._publisher: concurrent.futures.Future[None] | None = None
        self._published: ServiceInfo | None = None
        self._ipv6_heartbeats = ":" in settings.host
        self._refresh = RECORD_REFRESH if auth is not None else None
        self.instance_name = self._instance_name()
        self.npm_instance_name = f"{settings.name}.{settings.service_type}"
        """The record an npm leader publishes (ours never do: see :meth:`_publish_npm_records`)."""
        self._npm_published: list[ServiceInfo] = []

    # ----------------------------------------------------------------- any thread

    def start(self) -> None:
        """Open (or share) mDNS, register this node and start browsing.

        :raises DiscoveryError: when mDNS cannot be started.
        """
        self._zc = _SharedZeroconf.acquire(self._settings.interfaces, self._settings.ip_version)
        if not any(not ipaddress.ip_address(a.split("%")[0]).is_loopback for a in self._own_addresses()):
            text = "no network interface with an address but loopback: only electors on this host can join"
            log.warning("%s", text)
            self._on_error(DiscoveryError(errno.ENETUNREACH, text), text)
        try:
            loop = self._loop()
            self._publisher = asyncio.run_coroutine_threadsafe(self._publish_loop(), loop)
            self._browser = ServiceBrowser(
                self._zc,
                self._settings.service_type,
                handlers=[self._on_service_state_change],
                question_type=DNSQuestionType.QM,  # a unicast answer reaches only one process per host
            )
        except BaseException:
            self.close()
            raise

    def publish(self, role: State, term: int, serve_npm: bool = False) -> None:
        """Ask for this node's TXT record to say ``role`` and ``term``, and for the records npm
        nodes look for to be published (``serve_npm``) or withdrawn. Never blocks."""
        self._desired = (role, term)
        self._serve_npm = serve_npm  # the machine asks only with npm_compat
        if self._zc is not None and self._changed is not None:
            self._loop().call_soon_threadsafe(self._changed.set)

    def close(self) -> None:
        """Stop browsing, send the goodbye and release mDNS. Idempotent; never from the browser."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        if self._browser is not None:
            self._browser.cancel()  # joins the browser thread
            self._browser = None
        if self._publisher is not None and zc.loop is not None and zc.loop.is_running():
            self._publisher.cancel()
            goodbye = asyncio.run_coroutine_threadsafe(self._goodbye(zc), zc.loop)
            try:
                goodbye.result(_GOODBYE_TIMEOUT)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                log.debug("the DNS-SD goodbye did not finish in time")
            except Exception as exc:  # noqa: BLE001 - whatever zeroconf raised, stop() goes on
                self._warn("goodbye", "cannot send the DNS-SD goodbye: %s", exc)
        _SharedZeroconf.release(zc)

    # ----------------------------------------------------------------- zeroconf's loop thread

    async def _publish_loop(self) -> None:
        """Register, then keep the TXT record up to date (latest state wins)."""
        assert self._zc is not None
        zc = self._zc
        self._changed = changed = asyncio.Event()
        broadcast: Awaitable[Any] | None = None
        published_as: tuple[State, int] | None = None
        npm_pending = False
        changed.set()
        try:
            while True:
                # On time-out: re-publish with a fresh signature before the record counts as
                # stale, or try the npm records again.
                try:
                    await asyncio.wait_for(changed.wait(), _NPM_RETRY if npm_pending else self._refresh)
                    woken = True
                except asyncio.TimeoutError:
                    woken = False
                changed.clear()
                npm_pending = not await self._publish_npm_records(zc, self._serve_npm, *self._desired)
                if npm_pending and not woken:
                    continue  # only the npm records were due
                if woken and self._published is not None and published_as == self._desired:
                    continue  # only the npm records changed (a leader serves them later)
                desired = self._desired
                info = self._service_info(*desired)
                try:
                    if self._published is None:
                        broadcast = await zc.async_register_service(info, cooperating_responders=True)
                    else:
                        if isinstance(broadcast, asyncio.Future):
                            broadcast.cancel()  # its later repeats would announce the old TXT
                        broadcast = await zc.async_update_service(info)
                    self._published = info
                    published_as = desired
                except Exception as exc:
                    log.exception("cannot publish the DNS-SD record")
                    self._on_error(exc, f"cannot publish the DNS-SD record: {exc!r}")
        finally:
            if isinstance(broadcast, asyncio.Future):
                broadcast.cancel()

    async def _publish_npm_records(self, zc: Zeroconf, wanted: bool, role: State, term: int) -> bool:
        """As leader with ``npm_compat`` (``wanted``): publish what npm nodes look for; else
        withdraw it.

        npm nodes browse ``_<type>._tcp`` (and publish ``_<type>._udp``), so a leader of ours
        publishes instance ``<group>`` of ``_<type>._tcp``, pointing at its heartbeat port,
        with an A record in the same packet (npm uses no other). Never ``<group>`` of
        ``_<type>._udp``: an npm node that starts to lead probes that name for up to a second
        (after its ``leader`` event) and exits if anything answers, which a leader of ours
        cannot rule out (the npm node may have missed our record, or be still probing when we
        claim). No probing (cooperating responders): npm nodes never publish this name.
        Returns False when it must be tried again later.
        """
        if not wanted:
            for info in self._npm_published:
                await zc.async_unregister_service(info)  # its goodbye repeats run on their own
            self._npm_published = []
            return True
        if self._npm_published:
            return True
        addresses = [a for a in self._own_addresses() if ":" not in a]
        if not addresses:
            self._warn("npm-no-ipv4", "no IPv4 address to publish for npm nodes (they cannot use IPv6)")
            return True
        service_type = f"_{self._settings.type}._tcp.local."
        info = self._service_info(role, term, service_type, f"{self._settings.name}.{service_type}", addresses)
        try:
            await zc.async_register_service(info, cooperating_responders=True)
        except ServiceNameAlreadyRegistered:
            log.debug("the npm record %s is still registered by another elector here", info.name)
            return False
        except Exception as exc:
            log.exception("cannot publish the npm record %s", info.name)
            self._on_error(exc, f"cannot publish the record npm nodes look for: {exc!r}")
            return True
        self._npm_published.append(info)
        return True

    async def _goodbye(self, zc: Zeroconf) -> None:
        """Withdraw the records (three goodbye packets, the first one at once)."""
        repeats = [await zc.async_unregister_service(info) for info in self._npm_published]
        self._npm_published = []
        if self._published is not None:
            repeats.append(await zc.async_unregister_service(self._published))
            self._published = None
        for repeat in repeats:
            await repeat

    # ----------------------------------------------------------------- browser thread

    def _on_service_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """Parse a peer's record and hand it on. Never blocks, never raises."""
        try:
            if name == self.npm_instance_name and (
                not self._settings.npm_compat or state_change is ServiceStateChange.Removed
            ):
                return  # npm nodes send no goodbye: heartbeats tell
            if state_change is ServiceStateChange.Removed:
                node_id = self._names.pop(name, None)
                # A goodbye carries no tag: in an authenticated group it could be forged, so
                # only the signed resign message counts there.
                if node_id is not None and self._auth is None:
                    self._on_goodbye(node_id)
                return
            if name == self.instance_name:
                return
            info = ServiceInfo(service_type, name)
            if info.load_from_cache(zeroconf):
                self._take_any(info)
            elif zeroconf.loop is not None:
                asyncio.run_coroutine_threadsafe(self._resolve(zeroconf, service_type, name), zeroconf.loop)
        except Exception as exc:  # zeroconf's browser thread dies on the first exception
            log.exception("error while handling DNS-SD record %s", name)
            self._on_error(exc, f"error while handling DNS-SD record {name}: {exc!r}")

    def _take_any(self, info: ServiceInfo) -> None:
        if info.name == self.npm_instance_name:
            self._take_npm(info)
        else:
            self._take(info)

    def _take_npm(self, info: ServiceInfo) -> None:
        """The record ``<group>`` of the service type: an npm leader's (ours publish none)."""
        try:
            properties = info.decoded_properties
        except Exception:  # noqa: BLE001 - npm's TXT is one NUL byte; anything goes
            properties = {}
        if "id" in properties and "v" in properties:
            return  # our TXT record: not an npm leader (a leader of version 0.1 publishes it)
        address = self._pick_npm_address(info.parsed_addresses(IPVersion.V4Only))
        if address is None or not info.port:
            self._warn("npm-no-ipv4", "ignored an npm leader's record without an IPv4 address: %s", info.name)
            return
        self._on_npm_record(address, info.port)

    def _pick_npm_address(self, addresses: list[str]) -> str | None:
        """The npm leader's address to ping: one on a subnet of ours that is not ours, if any.

        bonjour publishes every IPv4 address of the host, in no useful order, docker0's
        (172.17.0.1 on every Docker host) included: such an address would reach a port of
        our own host. A same-host npm leader has only addresses of ours: then one of those.
        """
        own = set()
        networks = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if ip.is_IPv4 and isinstance(ip.ip, str):
                    own.add(ip.ip)
                    networks.append(ipaddress.ip_network(f"{ip.ip}/{ip.network_prefix}", strict=False))
        foreign = [a for a in addresses if a not in own]
        near = [a for a in foreign if any(ipaddress.ip_address(a) in network for network in networks)]
        candidates = near or foreign or addresses
        return candidates[0] if candidates else None

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        """Ask for a record that was announced incomplete (zeroconf's loop thread)."""
        info = AsyncServiceInfo(service_type, name)
        try:
            if await info.async_request(zeroconf, _RESOLVE_TIMEOUT_MS, question_type=DNSQuestionType.QM):
                self._take_any(info)
        except Exception as exc:  # noqa: BLE001 - a peer's bad record must not break the loop
            self._warn("resolve", "cannot resolve DNS-SD record %s: %s", name, exc)

    def _take(self, info: ServiceInfo) -> None:
        try:
            properties = info.decoded_properties
        except Exception:  # noqa: BLE001 - undecodable TXT: treated as malformed below
            properties = {}
        if self._auth is None and "mac" in properties:
            return  # a node of an authenticated group of the same name: not ours
        if self._auth is not None and not self._auth.record_valid(properties, time.time()):
            self._warn("unauthenticated-record", "dropped an unauthenticated or stale record: %s", info.name)
            return
        host = self._pick_address(info)
        record = decode_txt(properties, host) if host else None
        if record is None:
            self._warn("bad-txt", "ignored a malformed %s record: %s", self._settings.service_type, info.name)
            return
        if record.group != self._settings.name:
            return  # another group sharing the service type
        self._names[info.name] = record.member.node_id
        self._on_record(record)

    def _pick_address(self, info: ServiceInfo) -> str:
        v4 = info.parsed_addresses(IPVersion.V4Only)
        v6 = info.parsed_scoped_addresses(IPVersion.V6Only)
        if v4 and not self._ipv6_heartbeats:
            return v4[0]
        return (v6 or v4 or [""])[0]

    # ----------------------------------------------------------------- helpers

    def _loop(self) -> asyncio.AbstractEventLoop:
        assert self._zc is not None and self._zc.loop is not None
        return self._zc.loop

    def _instance_name(self) -> str:
        """``<group>-<hash of group>-<node id>``: unique by group and node id, so it needs no
        probing (the group may be cut short to fit 63 bytes; the hash keeps groups apart)."""
        digest = hashlib.sha256(self._settings.name.encode()).hexdigest()[:6]
        room = 63 - len(self._member.node_id) - len(digest) - 2
        group = self._settings.name.encode()[:room].decode(errors="ignore")
        return f"{group}-{digest}-{self._member.node_id}.{self._settings.service_type}"

    def _service_info(
        self, role: State, term: int, service_type: str = "", instance: str = "", addresses: list[str] | None = None
    ) -> ServiceInfo:
        """This node's record (by default), or another instance pointing at it."""
        return ServiceInfo(
            service_type or self._settings.service_type,
            instance or self.instance_name,
            port=self._member.port,
            properties=self._txt(role, term),
            server=f"ftl-{self._member.node_id}.local.",
            parsed_addresses=self._own_addresses() if addresses is None else addresses,
        )

    def _txt(self, role: State, term: int) -> dict[str, str]:
        properties = encode_txt(self._settings.name, self._member, role, term, self._boot)
        return properties if self._auth is None else self._auth.sign_record(properties, time.time())

    def _own_addresses(self) -> list[str]:
        """The addresses to publish: the chosen interfaces, else every non-loopback one."""
        if self._settings.interfaces:
            return [a.split("%")[0] for a in self._settings.interfaces]
        want_v4 = self._settings.ip_version in ("v4", "all")
        want_v6 = self._settings.ip_version in ("v6", "all")
        found: list[str] = []
        loopback: list[str] = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if ip.is_IPv4 and want_v4:
                    text = str(ip.ip)
                elif ip.is_IPv6 and want_v6 and isinstance(ip.ip, tuple):
                    text = str(ip.ip[0])
                else:
                    continue
                (loopback if ipaddress.ip_address(text).is_loopback else found).append(text)
        return found or loopback
