"""Election benchmark in the namespace lab: cold start, crash failover, clean handover, overlap.

Each round starts N fresh node processes, one per lab host (network namespace), and measures
with the event times the nodes report (one shared monotonic clock):

* cold start: from the moment every node is told to start to the moment all N agree on one
  leader (same id, same term);
* crash failover: from SIGKILL of the leader to all N-1 agreeing on a new one;
* clean handover: from ``stop()`` of that leader to its successor's ``leader`` event;
* resign handover: from telling the new leader to ``resign()`` to all agreeing on another
  (with at least 3 nodes left);
* overlap: total time two nodes held the leader role at once during the round.

With ``--peers list`` the nodes run in unicast mode, each given the address of every node
(itself included), and ``--peers dns`` gives them one DNS name with every node's address
(served by tests/dnsserver.py on a host of its own); in both, multicast is dropped on the
bridge, so no node can find another by mDNS.

Run as root (it creates network namespaces; all traffic stays inside them)::

    python benchmarks/election.py --rounds 20 --nodes 10
    python benchmarks/election.py --rounds 20 --nodes 10 --peers dns
    python benchmarks/election.py --rounds 10 --nodes 10 --coordinator zookeeper

With ``--coordinator zookeeper``, ``etcd`` or ``redis`` (or a URL without hosts, such as
``zookeeper://``), the nodes hold their leadership in a ZooKeeper, etcd or Redis server that the
benchmark starts in a lab host of its own (``tests/coordservers.py``; ``--servers 3`` for a
3-member cluster; Redis is always one primary); a URL with hosts is used as given. ``--coordinator-ttl`` sets the
session/lease TTL (default: the library's, 10 s), which bounds the crash failover.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import TextIO

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from dnsserver import DnsServer

from cluster import Cluster
from coordservers import ETCD_PORT, ZK_PORT, ServerSet, _tcp_ready, unavailable_reason
from netlab import Lab, lab_unavailable_reason

PEERS_NAME = "peers.ftl.test"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


STEPTRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "steptrace.py")


def print_steps(cluster: Cluster, windows: list[tuple[str, float, float]]) -> None:
    """``--trace``: the drivers' steps (from benchmarks/steptrace.py) within each handover's
    window, in ms from its start: ``start-end node step``."""
    steps = []
    for process in cluster.processes:
        for line in process.stderr.splitlines():
            if line.startswith("STEP "):
                steps.append(json.loads(line[5:]))
    for name, start, end in windows:
        print(f"  {name} handover, {(end - start) * 1000:.1f} ms:")
        shown = [s for s in steps if s["t1"] >= start and s["t0"] <= end and s["step"] != "watched_view"]
        for step in sorted(shown, key=lambda s: s["t1"] if s["step"] == "wait" else s["t0"]):
            t0, t1 = (step["t0"] - start) * 1000, (step["t1"] - start) * 1000
            span = f"{t1:7.1f}        " if step["t0"] == step["t1"] else f"{t0:7.1f}-{t1:6.1f}"
            if step["step"] == "wait":
                span = f"{'':7s} {t1:6.1f}"  # when the wait returned
            print(f"    {span} {step['node']:>14s} {step['step']}")


def server_figures(servers: ServerSet) -> list[str]:
    """``--trace``: what the servers say of their own latency: ZooKeeper's ``srvr`` latency
    line (ms, every request, writes with their fsync), etcd's WAL fsync and backend commit
    histograms (count, mean, and how many took 8 ms or more)."""
    lines = []
    for server in servers.servers:
        host = server.host
        if servers.backend == "zookeeper":
            answer: list[bytes] = []

            def ask(sock: socket.socket, answer: list[bytes] = answer) -> bool:
                sock.sendall(b"srvr")
                while chunk := sock.recv(4096):
                    answer.append(chunk)
                return True

            if _tcp_ready(host, ZK_PORT, ask):
                text = b"".join(answer).decode()
                lines += [f"{host.name} {line}" for line in text.splitlines() if line.startswith("Latency")]
        elif servers.backend == "etcd":
            url = f"http://{host.address}:{ETCD_PORT}/metrics"

            def fetch(url: str = url) -> str:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    return str(reply.read().decode())

            metrics = host.call_in_namespace(fetch, timeout=10).splitlines()
            for name in ("etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds"):
                values = {}
                for line in metrics:
                    if line.startswith(name):
                        key, _, value = line.rpartition(" ")
                        values[key] = float(value)
                count = values.get(f"{name}_count", 0.0)
                total = values.get(f"{name}_sum", 0.0)
                fast = values.get(f'{name}_bucket{{le="0.008"}}', count)
                if count:
                    lines.append(
                        f"{host.name} {name}: {count:.0f}, mean {total / count * 1000:.2f} ms, "
                        f"{count - fast:.0f} of 8 ms or more"
                    )
    return lines


def one_round(lab: Lab, hosts: list, options: dict, failover_too: bool = True, trace: bool = False) -> dict[str, float]:
    cluster = Cluster(lab)
    windows: list[tuple[str, float, float]] = []
    wrapper = [sys.executable, STEPTRACE] if trace else None
    try:
        processes = [cluster.spawn(host, options=options, wait_go=True, wrapper=wrapper) for host in hosts]
        cluster.wait_ready(60)
        t_go = time.monotonic()
        for process in processes:
            process.send("go")
        first = cluster.wait_agreement(timeout=30)
        cold = first.time - t_go

        if failover_too:
            t_kill = cluster.process_of(first.leader).kill()
            second = cluster.wait_agreement(timeout=30, other_than=first.leader, after_term=first.term)
            failover = second.time - t_kill
        else:
            second, failover = first, float("nan")

        leader_process = cluster.process_of(second.leader)
        leader_process.send("stop 0")
        third = cluster.wait_agreement(timeout=30, other_than=second.leader, after_term=second.term)
        stopping = next(r["t"] for r in leader_process.records if r["kind"] == "stopping")
        successor = next(
            r["t"]
            for p in cluster.processes
            for r in p.records
            if r["kind"] == "leader" and r["node"] == third.leader and r["term"] == third.term
        )
        handover = successor - stopping
        windows.append(("stop()", stopping, successor))

        resign = float("nan")
        if len(hosts) >= 3 + failover_too:  # a node left to hand over to
            t_resign = cluster.process_of(third.leader).send("resign 0")
            fourth = cluster.wait_agreement(timeout=30, other_than=third.leader, after_term=third.term)
            resign = fourth.time - t_resign
            windows.append(("resign()", t_resign, fourth.time))
        overlap = cluster.leader_overlap(since=t_go)
        return {"cold": cold, "failover": failover, "handover": handover, "resign": resign, "overlap": overlap}
    finally:
        cluster.finish()
        if trace:
            print_steps(cluster, windows)


OWN_SERVERS = (
    *("zookeeper", "etcd", "zookeeper://", "etcd://"),
    *("postgresql", "postgresql://", "pgbouncer"),
    *("redis", "redis://"),
)
MEASURES = ("cold", "failover", "handover", "resign", "overlap")


def server_backend(coordinator: str | None) -> str | None:
    """The :class:`ServerSet` backend the benchmark starts for ``coordinator``, or None.

    None means mDNS or unicast mode (no coordinator), or a coordinator URL with hosts, used as
    given.
    """
    if coordinator is None or coordinator not in OWN_SERVERS:
        return None
    return coordinator.split(":")[0]


def print_round(number: int, figures: dict[str, float], file: TextIO | None = None, prefix: str = "") -> None:
    """Prints one round's figures on one line."""
    print(
        f"{prefix}round {number:3d}: cold start {figures['cold'] * 1000:7.1f} ms  "
        f"failover {figures['failover'] * 1000:7.1f} ms  "
        f"handover {figures['handover'] * 1000:6.1f} ms  resign {figures['resign'] * 1000:6.1f} ms  "
        f"overlap {figures['overlap'] * 1000:.1f} ms",
        file=file,
        flush=True,
    )


def run_rounds(
    options: dict[str, object],
    *,
    rounds: int,
    nodes: int,
    peers: str | None = None,
    coordinator: str | None = None,
    servers: int = 1,
    failover_too: bool = True,
    trace: bool = False,
    on_round: Callable[[int, dict[str, float]], None] = print_round,
) -> dict[str, list[float]]:
    """Runs ``rounds`` rounds of :func:`one_round` on ``nodes`` nodes in a lab of its own.

    ``options`` are the nodes' options; this adds ``peers`` (``"list"`` or ``"dns"``: unicast
    mode, multicast dropped) or ``coordinator`` (a URL, or a name of :data:`OWN_SERVERS`: the
    server is started in a lab host and its URL put in ``options``) to it, so that the caller
    can say what ran. ``on_round`` is called, on the calling thread, with each round's number
    and figures. With ``trace``, each round prints its handovers' step timelines, and the
    server's own latency figures are printed at the end. Returns every round's figures by
    measure (NaN where not measured); raises what the lab, the server or the cluster raise
    (the lab is removed first).
    """
    backend = server_backend(coordinator)
    results: dict[str, list[float]] = {key: [] for key in MEASURES}
    with Lab() as lab, contextlib.ExitStack() as stack:
        hosts = [lab.add_host(f"n{i}") for i in range(nodes)]
        if peers is not None:
            lab.block_multicast()
            options["peers"] = [f"{host.address}:9001" for host in hosts]
        if peers == "dns":
            dns = stack.enter_context(DnsServer(lab.add_host("dns")))
            dns.set(PEERS_NAME, [host.address for host in hosts])
            for host in hosts:
                host.set_resolver(dns.address)
            options["peers"] = f"dns:{PEERS_NAME}"
        if backend is not None:
            count = 1 if backend == "redis" else servers  # Redis: one primary
            server_set = ServerSet(backend, [lab.add_host(f"srv{i}") for i in range(count)])
            stack.callback(server_set.close)
            options["coordinator"] = server_set.start().url
        elif coordinator:
            options["coordinator"] = coordinator
        for number in range(1, rounds + 1):
            figures = one_round(lab, hosts, options, failover_too=failover_too, trace=trace)
            for key, value in figures.items():
                results[key].append(value)
            on_round(number, figures)
        if trace and backend is not None:
            print("server figures:")
            for line in server_figures(server_set):
                print("  " + line)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--interval", type=float, default=None, help="heartbeat interval (default: the library's)")
    parser.add_argument(
        "--peers",
        choices=["list", "dns"],
        default=None,
        help="unicast mode: every node's address in a list, or behind one DNS name (multicast dropped)",
    )
    parser.add_argument(
        "--coordinator",
        default=None,
        metavar="URL",
        help="zookeeper, etcd, postgresql, pgbouncer (PostgreSQL behind pgbouncer), redis, or a coordinator URL",
    )
    parser.add_argument("--coordinator-ttl", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--servers", type=int, default=1, help="servers the benchmark starts (1 or 3)")
    parser.add_argument("--no-failover", action="store_true", help="no SIGKILL: measure the handovers only")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="time the coordinator drivers' steps (benchmarks/steptrace.py) and print each handover's",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that the lab is removed
    reason = lab_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    options: dict[str, object] = {} if args.interval is None else {"interval": args.interval}
    if args.coordinator_ttl is not None:
        options["coordinator_ttl"] = args.coordinator_ttl
    backend = server_backend(args.coordinator)
    if backend is not None and (reason := unavailable_reason(backend)):
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    results = run_rounds(
        options,
        rounds=args.rounds,
        nodes=args.nodes,
        peers=args.peers,
        coordinator=args.coordinator,
        servers=args.servers,
        failover_too=not args.no_failover,
        trace=args.trace,
    )
    labels = {
        "cold": f"cold start of {args.nodes} nodes to one agreed leader",
        "failover": "SIGKILL of the leader to a new agreed leader",
        "handover": "stop() of the leader to the successor's leader event",
        "resign": "resign() of the leader to a new agreed leader",
    }
    print()
    mode = "mDNS" if args.peers is None else f"unicast, peers from a {args.peers}, multicast dropped"
    if "coordinator" in options:
        mode = f"coordinator {options['coordinator']}, ttl {options.get('coordinator_ttl', 'default')}"
    print(f"{args.rounds} rounds, {args.nodes} nodes, interval {options.get('interval', 'default')}, {mode}")
    print(f"{'measure':55s} {'p50 ms':>9s} {'p99 ms':>9s} {'max ms':>9s}")
    for key, label in labels.items():
        values = [v for v in results[key] if v == v]  # NaN: not measured
        if not values:
            continue
        print(
            f"{label:55s} {percentile(values, 50) * 1000:9.1f} {percentile(values, 99) * 1000:9.1f} "
            f"{max(values) * 1000:9.1f}"
        )
    print(f"{'total time two nodes held the leader role at once':55s} {sum(results['overlap']) * 1000:9.1f} ms")
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, median round figures: "
        f"{statistics.median(results['cold']) * 1000:.0f}/{statistics.median(results['failover']) * 1000:.0f}/"
        f"{statistics.median(results['handover']) * 1000:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
