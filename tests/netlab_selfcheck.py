"""Self-check for tests/netlab.py: run ``python tests/netlab_selfcheck.py``.

Builds a two-host lab and proves, printing each result:

1. unicast UDP works in both directions between the hosts;
2. a multicast datagram to 224.0.0.251:5353 from one host reaches a socket
   that joined the group in the other host;
3. ``Host.call_in_namespace``: a socket created in ``fn`` and a thread started
   by ``fn`` live in the host namespace (network works from there, and the
   thread's /proc/thread-self/ns/net inode is the namespace's, not the
   caller's); exceptions propagate;
4. ``Host.set_link`` down/up cuts and restores connectivity (and the
   multicast route);
5. ``Lab.close()`` kills leftover processes (including grandchildren) and
   leaves no namespace in ``ip netns list`` and no interface of ours in the
   root namespace.

Exit status 0 if all checks pass, 1 if any fails, 2 if labs are unavailable.
No sleeps: every wait uses a socket timeout or a deadline.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import netlab
from netlab import Host, Lab, lab_unavailable_reason

logger = logging.getLogger(__name__)

PY = sys.executable
ECHO_PORT = 40001
MCAST_GROUP = "224.0.0.251"
MCAST_PORT = 5353

# Echo server: bind HOST:PORT, say READY, answer N datagrams with b"pong:"+data.
ECHO_SERVER = r"""
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, port))
s.settimeout(10)
print("READY", flush=True)
for _ in range(count):
    data, peer = s.recvfrom(2048)
    s.sendto(b"pong:" + data, peer)
    print("GOT", data.decode(), "FROM", peer[0], flush=True)
"""

# Client: bind to our own address first (so nothing can leave via another
# interface), send one datagram, wait for the reply.
ECHO_CLIENT = r"""
import socket, sys
me, host, port, msg = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((me, 0))
s.settimeout(5)
s.sendto(msg.encode(), (host, port))
data, peer = s.recvfrom(2048)
print(data.decode(), "FROM", peer[0])
"""

MCAST_RECEIVER = r"""
import socket, struct, sys
group, port, iface_addr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(iface_addr))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.settimeout(10)
print("READY", flush=True)
data, peer = s.recvfrom(2048)
print("GOT", data.decode(), "FROM", peer[0], flush=True)
"""

# Deliberately naive sender (no bind, no IP_MULTICAST_IF): the outgoing
# interface comes from the namespace's 224.0.0.0/4 route, as it would for a
# library that does not pin the interface.  Safe: it runs inside the netns.
MCAST_SENDER = r"""
import socket, sys
group, port, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.sendto(msg.encode(), (group, port))
print("SENT", msg)
"""

# Long-lived process with a grandchild, both blocking forever (no sleep):
# close() must kill both.
LINGERER = r"""
import subprocess, sys, os
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
print(os.getpid(), child.pid, flush=True)
sys.stdin.read()
"""


class Checker:
    """Collects PASS/FAIL results."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, ok: bool, label: str, detail: str = "") -> bool:
        line = f"[{'PASS' if ok else 'FAIL'}] {label}"
        if detail:
            line += f"  -- {detail}"
        print(line, flush=True)
        if not ok:
            self.failures.append(label)
        return ok


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """Read one stdout line from ``proc`` or raise TimeoutError at the deadline."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from pid {proc.pid} within {timeout}s")
    return proc.stdout.readline().strip()


def start_echo(host: Host, count: int) -> subprocess.Popen[str]:
    proc = host.popen(
        [PY, "-c", ECHO_SERVER, host.address, str(ECHO_PORT), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = read_line(proc, 10)
    if line != "READY":
        raise RuntimeError(f"echo server on {host.name} said {line!r}")
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 10) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.strip(), err.strip()


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.add(parts[1].strip().split("@")[0])
    return names


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def ns_inode(path: str) -> int:
    return os.stat(path).st_ino


def check_unicast(c: Checker, a: Host, b: Host) -> None:
    print("== 1. unicast UDP", flush=True)
    for src, dst in ((a, b), (b, a)):
        server = start_echo(dst, 1)
        msg = f"ping-{src.name}-to-{dst.name}"
        res = src.run([PY, "-c", ECHO_CLIENT, src.address, dst.address, str(ECHO_PORT), msg], check=False, timeout=15)
        rc, out, err = finish(server)
        print(f"   client {src.name}: {res.stdout.strip()!r} {res.stderr.strip()!r}")
        print(f"   server {dst.name}: {out!r} {err!r}")
        c.check(
            res.returncode == 0
            and res.stdout.strip() == f"pong:{msg} FROM {dst.address}"
            and rc == 0
            and f"GOT {msg} FROM {src.address}" in out,
            f"unicast {src.name}({src.address}) -> {dst.name}({dst.address}) and back",
        )


def check_multicast(c: Checker, a: Host, b: Host) -> None:
    print("== 2. multicast UDP", flush=True)
    for src, dst in ((a, b), (b, a)):
        rx = dst.popen(
            [PY, "-c", MCAST_RECEIVER, MCAST_GROUP, str(MCAST_PORT), dst.address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = read_line(rx, 10)
        if line != "READY":
            c.check(False, f"multicast receiver on {dst.name} ready", line)
            continue
        msg = f"mcast-from-{src.name}"
        res = src.run([PY, "-c", MCAST_SENDER, MCAST_GROUP, str(MCAST_PORT), msg], check=False)
        rc, out, err = finish(rx)
        print(f"   sender {src.name}: {res.stdout.strip()!r} {res.stderr.strip()!r}")
        print(f"   receiver {dst.name}: {out!r} {err!r}")
        c.check(
            res.returncode == 0 and rc == 0 and out == f"GOT {msg} FROM {src.address}",
            f"multicast {src.name} -> {MCAST_GROUP}:{MCAST_PORT} received in {dst.name}",
        )


def check_call_in_namespace(c: Checker, a: Host, b: Host) -> None:
    print("== 3. call_in_namespace", flush=True)
    caller_before = ns_inode("/proc/thread-self/ns/net")
    target = ns_inode(f"/var/run/netns/{a.ns}")
    server = start_echo(b, 2)
    go = threading.Event()
    recorded = threading.Event()
    result: dict[str, Any] = {}

    def worker() -> None:
        """Started inside fn; runs after fn has returned."""
        try:
            result["worker_inode"] = ns_inode("/proc/thread-self/ns/net")
            recorded.set()
            go.wait(10)
            if result["worker_inode"] != target:  # never send from the wrong namespace
                result["worker_error"] = "worker thread not in namespace; refusing to send"
                return
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with s:
                s.bind((a.address, 0))
                s.settimeout(5)
                s.sendto(b"from-worker-thread", (b.address, ECHO_PORT))
                result["worker_reply"] = s.recvfrom(2048)
        except Exception as exc:  # noqa: BLE001 - reported below
            result["worker_error"] = repr(exc)

    def fn() -> tuple[socket.socket, threading.Thread, int]:
        inode = ns_inode("/proc/thread-self/ns/net")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((a.address, 0))  # only possible inside a's namespace
        s.settimeout(5)
        t = threading.Thread(target=worker, daemon=True)
        t.start()
        return s, t, inode

    sock, thread, fn_inode = a.call_in_namespace(fn)
    caller_after = ns_inode("/proc/thread-self/ns/net")
    recorded.wait(10)
    print(
        f"   inodes: caller before={caller_before} after={caller_after} fn={fn_inode} "
        f"netns file={target} worker={result.get('worker_inode')}"
    )
    c.check(fn_inode == target and fn_inode != caller_before, "fn ran inside the host namespace")
    c.check(caller_after == caller_before, "caller thread did not change namespace")
    c.check(result.get("worker_inode") == target, "thread started by fn inherited the namespace")

    # The fn-created socket belongs to a's namespace even when used from the
    # caller's (root-namespace) thread.
    with sock:
        sock.sendto(b"from-fn-socket", (b.address, ECHO_PORT))
        reply = sock.recvfrom(2048)
    print(f"   fn socket (used from caller thread): {reply!r}")
    c.check(reply == (b"pong:from-fn-socket", (b.address, ECHO_PORT)), "socket created in fn talks to the other host")

    go.set()
    thread.join(10)
    print(f"   worker: reply={result.get('worker_reply')!r} error={result.get('worker_error')!r}")
    c.check(
        not thread.is_alive() and result.get("worker_reply") == (b"pong:from-worker-thread", (b.address, ECHO_PORT)),
        "thread started in fn sends to the other host and gets the reply",
    )
    rc, out, err = finish(server)
    print(f"   server {b.name}: {out!r} {err!r}")
    c.check(rc == 0 and out.count(f"FROM {a.address}") == 2, "echo server saw both datagrams from host a's address")

    try:
        a.call_in_namespace(lambda: 1 // 0)
        c.check(False, "exception in fn propagates to caller")
    except ZeroDivisionError:
        c.check(True, "exception in fn propagates to caller")


def check_set_link(c: Checker, a: Host, b: Host) -> None:
    print("== 4. set_link", flush=True)
    a.set_link(False)
    res = a.run([PY, "-c", ECHO_CLIENT, a.address, b.address, str(ECHO_PORT), "while-down"], check=False, timeout=15)
    print(f"   link down, client: rc={res.returncode} {res.stderr.strip().splitlines()[-1:]!r}")
    c.check(res.returncode != 0, "no connectivity while link is down")
    a.set_link(True)
    routes = a.run(["ip", "route", "show"]).stdout
    print("   routes after up: " + "; ".join(r.strip() for r in routes.splitlines()))
    c.check("224.0.0.0/4" in routes, "multicast route restored after link up")
    server = start_echo(b, 1)
    res = a.run([PY, "-c", ECHO_CLIENT, a.address, b.address, str(ECHO_PORT), "after-up"], check=False, timeout=15)
    finish(server)
    print(f"   link up again, client: {res.stdout.strip()!r}")
    c.check(res.returncode == 0 and res.stdout.startswith("pong:after-up"), "connectivity back after link up")


def main() -> int:
    logging.basicConfig(level=os.environ.get("NETLAB_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    reason = lab_unavailable_reason()
    if reason is not None:
        print(f"netlab unavailable: {reason}")
        return 2
    c = Checker()
    links_before = root_links()
    netns_before = netns_list()
    started = time.monotonic()

    lab = Lab()
    print(f"lab prefix={lab.prefix} tag={lab.tag} bridge ns={lab.bridge_ns}", flush=True)
    lingerer: subprocess.Popen[str] | None = None
    grandchild = -1
    try:
        a = lab.add_host("a")
        b = lab.add_host("b")
        for h in (a, b):
            print(f"   {h!r}")
        print(f"   setup took {time.monotonic() - started:.2f}s")
        leaked = {n for n in root_links() if lab.tag in n}
        c.check(not leaked, "no lab interface ever appears in the root namespace", str(sorted(leaked)))

        check_unicast(c, a, b)
        check_multicast(c, a, b)
        check_call_in_namespace(c, a, b)
        check_set_link(c, a, b)

        lingerer = b.popen([PY, "-c", LINGERER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        pids = read_line(lingerer, 10).split()
        grandchild = int(pids[1])
        pids_in_ns = netlab._ip("netns", "pids", b.ns).stdout.split()
        print(f"   lingering processes in {b.ns}: {pids_in_ns}")
    except Exception as exc:
        c.check(False, "unexpected exception", repr(exc))
        logger.exception("self-check crashed")
    finally:
        namespaces = lab.namespaces
        lab.close()
        lab.close()  # idempotent

    print("== 5. close()", flush=True)
    if lingerer is not None:
        c.check(
            lingerer.returncode == -signal.SIGKILL,
            "close() SIGKILLed the leftover process",
            f"returncode={lingerer.returncode}",
        )
        c.check(netlab._pid_exited(grandchild), "close() killed the leftover grandchild", f"pid={grandchild}")
    remaining_ns = netns_list()
    ours_left = sorted(ns for ns in remaining_ns if ns in namespaces or ns.startswith(lab.prefix))
    print(f"   lab namespaces were: {namespaces}")
    print(f"   ip netns list now: {sorted(remaining_ns)}")
    c.check(
        not ours_left and not any(os.path.exists(f"/var/run/netns/{ns}") for ns in namespaces),
        "no lab namespace left",
        str(ours_left),
    )
    links_after = root_links()
    ours = sorted(n for n in links_after if lab.tag in n)
    print(f"   root links before: {sorted(links_before)} after: {sorted(links_after)}")
    c.check(not ours, "no veth of ours in the root namespace", str(ours))
    # Informational only: a concurrent run (or anything else on the machine)
    # may legitimately add namespaces/links, so only *ours* are asserted above.
    print(
        f"[INFO] root link set unchanged: {links_after == links_before}; "
        f"netns list identical to before the run: {remaining_ns == netns_before}"
    )

    print(f"total {time.monotonic() - started:.2f}s")
    if c.failures:
        print(f"SELF-CHECK FAILED: {len(c.failures)} failure(s): {c.failures}")
        return 1
    print("SELF-CHECK PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
