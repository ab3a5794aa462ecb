"""Simulated multi-host networks built from Linux network namespaces.

Integration tests and benchmarks use this module to run several "hosts" on one
machine.  Each host is a network namespace with one veth interface whose peer
is enslaved to a bridge living in a separate, dedicated bridge namespace::

    <prefix>-a  [v<tag>a] ---+
                             |
    <prefix>-b  [v<tag>b] ---+--- [b<tag>a, b<tag>b, ...] br0   (in <prefix>-br)
    ...                      |

Safety rules this module follows:

* Nothing is created in, or sent through, the root namespace.  veth pairs are
  created with ``ip -n HOSTNS link add ... peer name ... netns BRIDGENS`` so
  neither end ever appears in the root namespace, not even briefly.
* Addresses come from the benchmarking range 198.18.0.0/15 (RFC 2544): the
  n-th host (0-based) gets ``198.18.<n // 254>.<n % 254 + 1>/16``.
* Only namespaces this :class:`Lab` object created are ever deleted.  Names are
  unique per run (random prefix); if a namespace name already exists creation
  fails instead of adopting it.
* :meth:`Lab.close` (also run at interpreter exit for labs left open) kills
  every process in the lab's namespaces, deletes the veths and namespaces, and
  never raises.

Requires root, ``ip`` from iproute2 and kernel support for network namespaces,
veth and bridge devices.  :func:`lab_unavailable_reason` tells whether that is
the case.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Host", "Lab", "LabError", "lab_unavailable_reason"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"
_ETC_NETNS = "/etc/netns"
BRIDGE_DEVICE = "br0"
MULTICAST_ROUTE = "224.0.0.0/4"
ADDRESS_PREFIX_LEN = 16

_HOST_NAME_RE = re.compile(r"^[a-z0-9]{1,6}$")
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")

#: Upper bound for one ``ip`` invocation during setup/teardown.
_IP_TIMEOUT = 15.0
#: How long add_host waits for the kernel to report both veth ends usable.
_LINK_READY_TIMEOUT = 10.0
#: How long close() waits for SIGKILLed processes to disappear.
_KILL_TIMEOUT = 10.0

_unavailable_lock = threading.Lock()
_unavailable_cached: bool = False
_unavailable_value: str | None = None


class LabError(RuntimeError):
    """Raised when the lab cannot be created or configured."""


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _ip_binary() -> str | None:
    """Return the path of the iproute2 ``ip`` binary, or None if absent."""
    found = shutil.which("ip")
    if found:
        return found
    for candidate in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _ip(*args: str, check: bool = True, timeout: float = _IP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` with captured text output.

    Raises :class:`LabError` (with ip's stderr) if ``check`` and it fails.
    """
    binary = _ip_binary()
    if binary is None:
        raise LabError("the iproute2 'ip' command is not installed")
    argv = [binary, *args]
    logger.debug("run: %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)!r} timed out after {timeout}s") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)!r} failed (rc={proc.returncode}): {proc.stderr.strip()}")
    return proc


def _netns_path(ns: str) -> str:
    return os.path.join(NETNS_RUN_DIR, ns)


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c") or "libc.so.6"
    return ctypes.CDLL(name, use_errno=True)


def _setns(fd: int, nstype: int) -> None:
    """Move the *calling thread* into the namespace referred to by ``fd``."""
    native = getattr(os, "setns", None)  # Python >= 3.12
    if native is not None:
        native(fd, nstype)
        return
    libc = _libc()
    if libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


def _thread_netns_inode() -> int:
    """Inode of the calling thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def _pid_exited(pid: int) -> bool:
    """True if ``pid`` no longer exists or is a zombie (has exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:
        return False
    # state is the first field after the parenthesised command name
    try:
        state = data[data.rindex(b")") + 2 : data.rindex(b")") + 3]
    except ValueError:
        return False
    return state in (b"Z", b"X")


def _wait_pids_gone(pids: list[int], deadline: float) -> list[int]:
    """Block until every pid has exited (via pidfd readiness), or deadline.

    Returns the pids still alive at the deadline.
    """
    remaining: list[int] = []
    pidfds: dict[int, int] = {}
    try:
        for pid in pids:
            try:
                pidfds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                continue  # already gone
            except (AttributeError, OSError):
                remaining.append(pid)  # no pidfd support: fall back to polling below
        poller = select.poll()
        for fd in pidfds:
            poller.register(fd, select.POLLIN)
        pending = dict(pidfds)
        while pending:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            for fd, _ in poller.poll(left_ms):
                poller.unregister(fd)
                pending.pop(fd, None)
        remaining.extend(pending.values())
    finally:
        for fd in pidfds:
            os.close(fd)
    # Fallback path (no pidfd) / final check: a process counts as gone once
    # it is a zombie; its parent reaps it.
    still: list[int] = []
    for pid in remaining:
        while not _pid_exited(pid) and time.monotonic() < deadline:
            # Waiting on kernel state, not on our own processes; short backoff.
            threading.Event().wait(0.01)
        if not _pid_exited(pid):
            still.append(pid)
    return still


def _poll_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Re-evaluate ``predicate`` with a short backoff until true or timeout.

    Only used to wait for asynchronous *kernel* state (link watch events that
    bring a veth / bridge port to operational state), for which no cheap
    notification exists from the root namespace.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    waiter = threading.Event()
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout}s waiting for {what}")
        waiter.wait(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)


# --------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------


def lab_unavailable_reason() -> str | None:
    """Return None if network-namespace labs can be built here, else a reason.

    Checks that we are root, that ``ip`` exists, and (once per process, cached)
    that a probe namespace containing a bridge and a veth pair can be created
    and deleted.
    """
    global _unavailable_cached, _unavailable_value
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not os.path.exists("/proc/self/ns/net"):
        return "kernel has no network namespace support (/proc/self/ns/net missing)"
    if _ip_binary() is None:
        return "the iproute2 'ip' command is not installed"
    with _unavailable_lock:
        if not _unavailable_cached:
            _unavailable_value = _probe()
            _unavailable_cached = True
        return _unavailable_value


def _probe() -> str | None:
    """Create and delete a probe namespace with a bridge and a veth pair."""
    ns = f"ftlprobe-{secrets.token_hex(4)}"
    created = False
    try:
        proc = _ip("netns", "add", ns, check=False)
        if proc.returncode != 0:
            return f"cannot create a network namespace ('ip netns add' failed: {proc.stderr.strip()})"
        created = True
        steps = [
            ("bridge", ["-n", ns, "link", "add", "pbr0", "type", "bridge"]),
            ("veth", ["-n", ns, "link", "add", "pv0", "type", "veth", "peer", "name", "pv1"]),
        ]
        for kind, args in steps:
            proc = _ip(*args, check=False)
            if proc.returncode != 0:
                return f"cannot create a {kind} device in a network namespace: {proc.stderr.strip()}"
        return None
    except (OSError, LabError) as exc:
        return f"network namespace probe failed: {exc}"
    finally:
        if created:
            proc = _ip("netns", "delete", ns, check=False)
            if proc.returncode != 0:
                logger.warning("could not delete probe namespace %s: %s", ns, proc.stderr.strip())


# --------------------------------------------------------------------------
# Host
# --------------------------------------------------------------------------


def _loss_rule(match: str, port: str, percent: int) -> str:
    """An nft rule dropping ``percent`` % of the IP datagrams that pass bridge port ``port``
    (``iifname``: what its host sends, ``oifname``: what is sent to it).

    ARP passes: a lossy or one-way IP path is what a firewall or a bad route makes, and with
    ARP replies dropped a host could not even send to its peers. (numgen cannot say 100 %.)
    """
    ip_only = f'{match} "{port}" ether type {{ ip, ip6 }}'
    if percent >= 100:
        return f"{ip_only} drop"
    return f"{ip_only} numgen random mod 100 < {percent} drop"


class Host:
    """One simulated host: a network namespace with a single veth interface.

    Attributes:
        name: the short host name given to :meth:`Lab.add_host`.
        ns: the full network namespace name (``<prefix>-<name>``).
        address: the host's IPv4 address (no prefix length).
        interface: the veth interface name inside ``ns``.
    """

    def __init__(self, lab: Lab, name: str, ns: str, address: str, interface: str, bridge_port: str) -> None:
        self._lab = lab
        self.name: str = name
        self.ns: str = ns
        self.address: str = address
        self.interface: str = interface
        self._bridge_port = bridge_port

    def __repr__(self) -> str:
        return f"Host(name={self.name!r}, ns={self.ns!r}, address={self.address!r}, interface={self.interface!r})"

    # -- processes ---------------------------------------------------------

    def _exec_argv(self, argv: list[str]) -> list[str]:
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a list of strings, not a single string")
        binary = _ip_binary()
        if binary is None:
            raise LabError("the iproute2 'ip' command is not installed")
        return [binary, "netns", "exec", self.ns, *[str(a) for a in argv]]

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this host's namespace (``ip netns exec``).

        ``kwargs`` are passed to :class:`subprocess.Popen`.  The returned
        process is the command itself (``ip netns exec`` execs it), so its pid
        and signals behave as usual.  :meth:`Lab.close` kills it if still
        running.
        """
        self._lab._check_open()
        if kwargs.get("shell"):
            raise ValueError("shell=True is not supported; pass an argv list")
        proc: subprocess.Popen[Any] = subprocess.Popen(self._exec_argv(argv), **kwargs)
        self._lab._track(proc)
        logger.debug("%s: started pid %d: %s", self.ns, proc.pid, argv)
        return proc

    def run(self, argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion inside the namespace, capturing text output.

        Raises :class:`subprocess.CalledProcessError` if ``check`` and the exit
        status is non-zero, :class:`subprocess.TimeoutExpired` on timeout (the
        process is killed).
        """
        self._lab._check_open()
        return subprocess.run(self._exec_argv(argv), capture_output=True, text=True, check=check, timeout=timeout)

    # -- in-process namespace entry ------------------------------------------

    def call_in_namespace(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn`` on a fresh thread that first enters this namespace.

        The thread calls setns(2) on ``/var/run/netns/<ns>`` before calling
        ``fn``; sockets ``fn`` creates belong to the namespace, and threads it
        starts inherit the namespace (that is the point: a library object
        created and started here keeps its sockets and threads there).  The
        caller's thread never changes namespace.  Returns ``fn``'s result or
        re-raises its exception.  ``timeout`` (seconds, default unlimited)
        bounds the wait for ``fn``; on expiry :class:`TimeoutError` is raised
        and the thread is left running (daemon).
        """
        self._lab._check_open()
        outcome: dict[str, Any] = {}
        expected_inode = self._lab._ns_inode(self.ns)

        def runner() -> None:
            try:
                fd = os.open(_netns_path(self.ns), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _setns(fd, CLONE_NEWNET)
                finally:
                    os.close(fd)
                if expected_inode is not None and _thread_netns_inode() != expected_inode:
                    raise LabError(f"setns into {self.ns} did not take effect")
                outcome["result"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in caller
                outcome["error"] = exc

        thread = threading.Thread(target=runner, name=f"netns-{self.ns}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"call_in_namespace({self.ns}) did not finish within {timeout}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]  # type: ignore[no-any-return]

    # -- faults --------------------------------------------------------------

    def set_link(self, up: bool) -> None:
        """Bring this host's veth down or up (inside its namespace).

        Taking an IPv4 link down makes the kernel flush every route through
        it, including the multicast route; bringing it up re-adds that route
        and waits until the link is operational again.
        """
        self._lab._check_open()
        _ip("-n", self.ns, "link", "set", "dev", self.interface, "up" if up else "down")
        if up:
            _ip("-n", self.ns, "route", "replace", MULTICAST_ROUTE, "dev", self.interface)
            self._lab._wait_link_ready(self)
        logger.info("%s: link %s %s", self.ns, self.interface, "up" if up else "down")

    # -- name resolution -------------------------------------------------------

    def set_resolver(self, nameserver: str | None) -> None:
        """Make processes started in this host resolve names through ``nameserver`` only.

        ``ip netns exec`` bind-mounts ``/etc/netns/<ns>/resolv.conf`` over
        ``/etc/resolv.conf`` when it exists, so this writes that file (and removes it for
        None). Only processes started afterwards see it; :meth:`Lab.close` removes it.
        """
        self._lab._check_open()
        self._lab._write_etc(self.ns, "resolv.conf", None if nameserver is None else f"nameserver {nameserver}\n")


# --------------------------------------------------------------------------
# Lab
# --------------------------------------------------------------------------


class _LabState:
    """Everything close() needs; kept apart from Lab for the atexit hook."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.closed = False
        #: namespaces this lab created, in creation order (bridge first)
        self.namespaces: list[str] = []
        #: namespace name -> inode of the namespace (to spot our own threads)
        self.inodes: dict[str, int] = {}
        #: bridge-side veth names (deleting one end deletes the pair)
        self.bridge_ports: list[str] = []
        self.bridge_ns: str = ""
        self.processes: list[subprocess.Popen[Any]] = []
        #: files and directories under /etc/netns this lab wrote (removed at close)
        self.etc_files: list[str] = []
        self.etc_dirs: list[str] = []


_live_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for lab in list(_live_labs):
        try:
            lab.close()
        except Exception:  # pragma: no cover - close() itself never raises
            logger.exception("closing lab %s at exit failed", getattr(lab, "prefix", "?"))


atexit.register(_close_all_at_exit)


class Lab:
    """A set of simulated hosts joined by a bridge; a context manager.

    ``Lab()`` creates the bridge namespace ``<prefix>-br`` immediately;
    :meth:`add_host` adds hosts; :meth:`close` (or leaving the ``with`` block)
    removes everything.
    """

    def __init__(self, prefix: str | None = None) -> None:
        reason = lab_unavailable_reason()
        if reason is not None:
            raise LabError(f"network lab unavailable: {reason}")
        if prefix is None:
            prefix = "ftl" + secrets.token_hex(3)
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"invalid lab prefix {prefix!r}: use [a-z0-9-], start alphanumeric, at most 24 chars")
        self.prefix: str = prefix
        #: 6 hex chars derived from the prefix, embedded in every interface name
        self.tag: str = hashlib.sha256(prefix.encode()).hexdigest()[:6]
        self.hosts: dict[str, Host] = {}
        self._state = _LabState()
        self._state.bridge_ns = f"{prefix}-br"
        _live_labs.add(self)
        try:
            self._create_namespace(self._state.bridge_ns)
            br = self._state.bridge_ns
            _ip("-n", br, "link", "add", BRIDGE_DEVICE, "type", "bridge", "mcast_snooping", "0", "stp_state", "0")
            _ip("-n", br, "link", "set", "dev", BRIDGE_DEVICE, "up")
        except BaseException:
            self.close()
            raise
        logger.info("lab %s: bridge namespace %s ready", prefix, self._state.bridge_ns)

    # -- context manager -----------------------------------------------------

    def __enter__(self) -> Lab:  # noqa: PYI034 - Lab is not subclassed
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lab(prefix={self.prefix!r}, hosts={sorted(self.hosts)!r}, closed={self._state.closed})"

    # -- public API ----------------------------------------------------------

    @property
    def bridge_ns(self) -> str:
        """Name of the namespace holding the bridge."""
        return self._state.bridge_ns

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab created (and will delete)."""
        with self._state.lock:
            return list(self._state.namespaces)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._state.closed

    def add_host(self, name: str) -> Host:
        """Create host ``name`` ([a-z0-9]{1,6}) and attach it to the bridge.

        Creates namespace ``<prefix>-<name>`` with ``lo`` up and a veth
        (multicast on, address from 198.18.0.0/15 with /16 mask, route for
        224.0.0.0/4) whose peer is a port of the bridge.  Returns once both
        ends are operational and the bridge port is forwarding.
        """
        if not isinstance(name, str) or not _HOST_NAME_RE.match(name):
            raise ValueError(f"invalid host name {name!r}: must match [a-z0-9]{{1,6}}")
        if name == "br":
            raise ValueError("host name 'br' is reserved for the bridge namespace")
        with self._state.lock:
            self._check_open()
            if name in self.hosts:
                raise ValueError(f"host {name!r} already exists in lab {self.prefix}")
            index = len(self.hosts) + 1
            if index > 254 * 254:
                raise LabError("too many hosts")
            address = f"198.18.{(index - 1) // 254}.{(index - 1) % 254 + 1}"
            ns = f"{self.prefix}-{name}"
            interface = f"v{self.tag}{name}"
            port = f"b{self.tag}{name}"
            br = self._state.bridge_ns

            self._create_namespace(ns)
            # Both veth ends are created directly in their final namespaces.
            _ip("-n", ns, "link", "add", interface, "type", "veth", "peer", "name", port, "netns", br)
            self._state.bridge_ports.append(port)
            _ip("-n", br, "link", "set", "dev", port, "master", BRIDGE_DEVICE)
            _ip("-n", br, "link", "set", "dev", port, "up")
            _ip("-n", ns, "link", "set", "dev", "lo", "up")
            _ip("-n", ns, "link", "set", "dev", interface, "multicast", "on")
            _ip("-n", ns, "addr", "add", f"{address}/{ADDRESS_PREFIX_LEN}", "dev", interface)
            _ip("-n", ns, "link", "set", "dev", interface, "up")
            _ip("-n", ns, "route", "replace", MULTICAST_ROUTE, "dev", interface)
            host = Host(self, name, ns, address, interface, port)
            self._wait_link_ready(host)
            self.hosts[name] = host
            logger.info("lab %s: host %s ns=%s addr=%s if=%s", self.prefix, name, ns, address, interface)
            return host

    # -- faults (nftables rules on the bridge ports; the hosts cannot see them) --

    def set_faults(
        self,
        loss: dict[str, int] | None = None,
        partition: tuple[list[str], list[str]] | None = None,
        inbound_loss: dict[str, int] | None = None,
    ) -> None:
        """Replace the lab's fault rules.

        :param loss: host name -> percent of the datagrams it sends that are dropped
            (``numgen random mod 100 < PCT drop`` on its bridge port).
        :param inbound_loss: host name -> percent of the datagrams sent to it that are dropped
            (the same rule on the way out of the bridge to it): with ``loss``, one direction
            of a host's link can be cut while the other works.
        :param partition: two lists of host names; nothing passes between the sides
            (multicast included).
        Call with no argument to heal everything.
        """
        nft = shutil.which("nft")
        if nft is None:
            raise LabError("nft (nftables) is needed for fault injection")
        rules = []
        for name, percent in sorted((loss or {}).items()):
            if not 0 <= percent <= 100:
                raise ValueError(f"loss must be a percentage, not {percent}")
            rules.append(_loss_rule("iifname", self.hosts[name]._bridge_port, percent))
        for name, percent in sorted((inbound_loss or {}).items()):
            if not 0 <= percent <= 100:
                raise ValueError(f"loss must be a percentage, not {percent}")
            rules.append(_loss_rule("oifname", self.hosts[name]._bridge_port, percent))
        if partition is not None:
            side_a = ", ".join(f'"{self.hosts[n]._bridge_port}"' for n in partition[0])
            side_b = ", ".join(f'"{self.hosts[n]._bridge_port}"' for n in partition[1])
            rules.append(f"iifname {{ {side_a} }} oifname {{ {side_b} }} drop")
            rules.append(f"iifname {{ {side_b} }} oifname {{ {side_a} }} drop")
        ruleset = "table bridge ftl_faults\ndelete table bridge ftl_faults\n"
        ruleset += (
            "table bridge ftl_faults {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n"
        )
        ruleset += "".join(f"    {rule}\n" for rule in rules)
        ruleset += "  }\n}\n"
        subprocess.run(
            ["ip", "netns", "exec", self._state.bridge_ns, nft, "-f", "-"],
            input=ruleset,
            text=True,
            check=True,
            capture_output=True,
            timeout=_IP_TIMEOUT,
        )
        logger.info("lab %s: faults loss=%s in=%s partition=%s", self.prefix, loss, inbound_loss, partition)

    def block_multicast(self, blocked: bool = True) -> None:
        """Drop (or pass again) every multicast datagram on the bridge: 224.0.0.0/4 and ff00::/8.

        A table of its own, apart from :meth:`set_faults`: with it, mDNS cannot work, so a
        group that agrees found its peers some other way.
        """
        nft = shutil.which("nft")
        if nft is None:
            raise LabError("nft (nftables) is needed to block multicast")
        ruleset = "table bridge ftl_nomcast\ndelete table bridge ftl_nomcast\n"
        if blocked:
            ruleset += (
                "table bridge ftl_nomcast {\n  chain forward {\n"
                "    type filter hook forward priority -10; policy accept;\n"
                "    ether type ip ip daddr 224.0.0.0/4 counter drop\n"
                "    ether type ip6 ip6 daddr ff00::/8 counter drop\n  }\n}\n"
            )
        subprocess.run(
            ["ip", "netns", "exec", self._state.bridge_ns, nft, "-f", "-"],
            input=ruleset,
            text=True,
            check=True,
            capture_output=True,
            timeout=_IP_TIMEOUT,
        )
        logger.info("lab %s: multicast %s", self.prefix, "blocked" if blocked else "passes")

    def multicast_dropped(self) -> int:
        """How many multicast packets the :meth:`block_multicast` rules dropped so far."""
        nft = shutil.which("nft")
        if nft is None:
            raise LabError("nft (nftables) is needed to block multicast")
        proc = subprocess.run(
            ["ip", "netns", "exec", self._state.bridge_ns, nft, "-j", "list", "table", "bridge", "ftl_nomcast"],
            text=True,
            capture_output=True,
            timeout=_IP_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            return 0
        found = json.loads(proc.stdout).get("nftables", [])
        return sum(
            expr["counter"]["packets"]
            for item in found
            for expr in item.get("rule", {}).get("expr", [])
            if "counter" in expr
        )

    def close(self) -> None:
        """Remove everything this lab created; idempotent, never raises.

        Kills (SIGKILL) every process still in any lab namespace and waits for
        it, reaps processes started through :meth:`Host.popen`, deletes the
        veths and the namespaces.  Problems are logged, not raised.  Threads
        of *this* process that still sit in a namespace (started through
        :meth:`Host.call_in_namespace`) cannot be killed; they are logged, and
        the kernel frees the namespace once they and their sockets are gone.
        """
        state = self._state
        with state.lock:
            if state.closed:
                return
            state.closed = True
            _live_labs.discard(self)
            if not state.namespaces:
                logger.debug("lab %s: nothing to clean up", self.prefix)
                return
            host_namespaces = [ns for ns in state.namespaces if ns != state.bridge_ns]
            ordered = host_namespaces + [ns for ns in state.namespaces if ns == state.bridge_ns]
            try:
                self._kill_processes(ordered)
            except Exception:
                logger.exception("lab %s: killing processes failed", self.prefix)
            try:
                self._warn_own_threads(ordered)
            except Exception:
                logger.exception("lab %s: checking own threads failed", self.prefix)
            for port in state.bridge_ports:
                try:
                    proc = _ip("-n", state.bridge_ns, "link", "del", "dev", port, check=False)
                    if proc.returncode != 0 and "Cannot find device" not in proc.stderr:
                        logger.warning("lab %s: deleting veth %s failed: %s", self.prefix, port, proc.stderr.strip())
                except Exception:
                    logger.exception("lab %s: deleting veth %s failed", self.prefix, port)
            for ns in ordered:
                try:
                    proc = _ip("netns", "delete", ns, check=False)
                    if proc.returncode != 0:
                        logger.warning("lab %s: deleting namespace %s failed: %s", self.prefix, ns, proc.stderr.strip())
                except Exception:
                    logger.exception("lab %s: deleting namespace %s failed", self.prefix, ns)
            state.namespaces.clear()
            state.bridge_ports.clear()
            try:
                self._remove_etc()
            except Exception:
                logger.exception("lab %s: removing its /etc/netns files failed", self.prefix)
            logger.info("lab %s closed", self.prefix)

    # -- internals -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._state.closed:
            raise LabError(f"lab {self.prefix} is closed")

    def _write_etc(self, ns: str, name: str, content: str | None) -> None:
        """Write (or, for None, remove) ``/etc/netns/<ns>/<name>``; only our own files."""
        with self._state.lock:
            directories = [_ETC_NETNS, os.path.join(_ETC_NETNS, ns)]
            path = os.path.join(directories[1], name)
            if content is None:
                if path in self._state.etc_files:
                    os.remove(path)
                    self._state.etc_files.remove(path)
                return
            for directory in directories:
                if not os.path.isdir(directory):
                    os.mkdir(directory)
                    self._state.etc_dirs.append(directory)
            if os.path.exists(path) and path not in self._state.etc_files:
                raise LabError(f"{path} exists and is not this lab's; refusing to overwrite it")
            with open(path, "w", encoding="ascii") as file:
                file.write(content)
            if path not in self._state.etc_files:
                self._state.etc_files.append(path)

    def _remove_etc(self) -> None:
        for path in self._state.etc_files:
            with contextlib.suppress(OSError):
                os.remove(path)
        for directory in reversed(self._state.etc_dirs):
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only when empty
        self._state.etc_files.clear()
        self._state.etc_dirs.clear()

    def _track(self, proc: subprocess.Popen[Any]) -> None:
        with self._state.lock:
            self._state.processes = [p for p in self._state.processes if p.returncode is None]
            self._state.processes.append(proc)

    def _ns_inode(self, ns: str) -> int | None:
        return self._state.inodes.get(ns)

    def _create_namespace(self, ns: str) -> None:
        """Create ``ns``; it must not exist yet (we never adopt foreign ones)."""
        if os.path.exists(_netns_path(ns)):
            raise LabError(f"network namespace {ns!r} already exists; refusing to reuse it")
        _ip("netns", "add", ns)
        self._state.namespaces.append(ns)
        try:
            self._state.inodes[ns] = os.stat(_netns_path(ns)).st_ino
        except OSError as exc:  # pragma: no cover - ip just created it
            logger.warning("cannot stat %s: %s", _netns_path(ns), exc)

    def _wait_link_ready(self, host: Host) -> None:
        """Wait until the host veth is UP and its bridge port forwards.

        Carrier/operstate changes reach the bridge through the kernel's
        asynchronous link-watch worker, so a datagram sent right after
        ``ip link set up`` could otherwise be dropped.
        """

        def ready() -> bool:
            h = _ip("-j", "-n", host.ns, "link", "show", "dev", host.interface, check=False)
            p = _ip("-j", "-d", "-n", self._state.bridge_ns, "link", "show", "dev", host._bridge_port, check=False)
            if h.returncode != 0 or p.returncode != 0:
                return False
            try:
                hinfo = json.loads(h.stdout)[0]
                pinfo = json.loads(p.stdout)[0]
            except (ValueError, IndexError):
                return False
            port_state = pinfo.get("linkinfo", {}).get("info_slave_data", {}).get("state")
            return hinfo.get("operstate") == "UP" and pinfo.get("operstate") == "UP" and port_state == "forwarding"

        _poll_until(
            ready, _LINK_READY_TIMEOUT, f"{host.ns}/{host.interface} and bridge port {host._bridge_port} to be up"
        )

    def _kill_processes(self, namespaces: list[str]) -> None:
        """SIGKILL every process in ``namespaces`` and wait until all are gone."""
        me = os.getpid()
        deadline = time.monotonic() + _KILL_TIMEOUT
        for _round in range(5):  # processes may fork while we kill
            victims: list[int] = []
            for ns in namespaces:
                if not os.path.exists(_netns_path(ns)):
                    continue
                proc = _ip("netns", "pids", ns, check=False)
                if proc.returncode != 0:
                    logger.warning("lab %s: 'ip netns pids %s' failed: %s", self.prefix, ns, proc.stderr.strip())
                    continue
                for token in proc.stdout.split():
                    if token.isdigit() and int(token) != me and int(token) > 1:
                        victims.append(int(token))
            victims = [p for p in victims if not _pid_exited(p)]
            if not victims:
                break
            logger.info("lab %s: killing %d process(es): %s", self.prefix, len(victims), victims)
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                except OSError as exc:
                    logger.warning("lab %s: kill %d failed: %s", self.prefix, pid, exc)
            left = _wait_pids_gone(victims, deadline)
            if left:
                logger.warning("lab %s: processes still alive after SIGKILL: %s", self.prefix, left)
                break
        # Reap children we started so they do not linger as zombies.
        for popen in self._state.processes:
            if popen.returncode is not None:
                continue
            try:
                popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("lab %s: pid %d did not exit", self.prefix, popen.pid)
                with contextlib.suppress(OSError):
                    popen.kill()
            except Exception:
                logger.exception("lab %s: waiting for pid %d failed", self.prefix, popen.pid)
        self._state.processes.clear()

    def _warn_own_threads(self, namespaces: list[str]) -> None:
        """Log threads of this process that are still inside a lab namespace."""
        inode_to_ns = {self._state.inodes[ns]: ns for ns in namespaces if ns in self._state.inodes}
        if not inode_to_ns:
            return
        counts: dict[str, int] = {}
        try:
            tids = os.listdir("/proc/self/task")
        except OSError:
            return
        for tid in tids:
            try:
                ino = os.stat(f"/proc/self/task/{tid}/ns/net").st_ino
            except OSError:
                continue
            if ino in inode_to_ns:
                counts[inode_to_ns[ino]] = counts.get(inode_to_ns[ino], 0) + 1
        for ns, n in counts.items():
            logger.warning(
                "lab %s: %d thread(s) of this process still in namespace %s; "
                "it is freed when they exit (stop objects started via call_in_namespace before close())",
                self.prefix,
                n,
                ns,
            )
