"""All backends side by side: election.py's rounds and the idle load per member, one table.

For each backend, one after another and at the same settings, it runs the rounds of
``benchmarks/election.py`` (:func:`election.run_rounds`: cold start, SIGKILL failover,
``stop()`` handover, ``resign()`` handover, overlap) on ``--nodes`` nodes, and for the four
servers also ``benchmarks/idle_load.py``'s measurement (:func:`idle_load.idle_rate`: requests
per second per idle member, by the server's own counter, over a quiet window of ``--quiet``
seconds, at ``--idle-ttl``, by default the same TTL: a member renews every TTL/5, so its idle
load grows as the TTL shrinks). For mDNS and listed peers, which have no server, the idle load
is the UDP datagrams (heartbeats, acks, mDNS) per second per member over the same window, by
``benchmarks/scale.py``'s bridge counters (every datagram counted once, as it enters the lab's
bridge: a multicast one once, not once per host it reaches), 10 s after the group agreed. Each
measurement runs in a lab of its own. The backends:

* ``mdns``: the nodes find each other by mDNS, at the library's default ``interval``;
* ``peers``: unicast mode, every node given every node's address, multicast dropped;
* ``zookeeper``, ``etcd``, ``postgresql``, ``redis``: one server of that kind in a lab host,
  the nodes' leadership held there with ``coordinator_ttl`` = ``--coordinator-ttl``
  (``pgbouncer``, PostgreSQL behind pgbouncer in transaction mode, can be asked for too).

The crash failover of the coordinators is bound by the TTL (the server expires the dead
leader's session, lease or row); that of mDNS and listed peers is not: it is the heartbeats'
failure window (``interval`` times ``max_failed_responses``, 0.2 s and 3 by default) and the
election after it. Progress goes to standard error; the table, with the date, the machine
(nproc, load average at start and end) and the settings in its header, to standard output.

Run as root (it creates network namespaces; all traffic stays inside them)::

    python benchmarks/compare.py
    python benchmarks/compare.py --backends peers,redis --rounds 2 --format rst
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import election
import idle_load
import scale

from cluster import Cluster
from coordservers import unavailable_reason
from netlab import Lab, lab_unavailable_reason

BACKENDS = ("mdns", "peers", "zookeeper", "etcd", "postgresql", "redis")
OPTIONAL_BACKENDS = ("pgbouncer",)
SERVERS = ("zookeeper", "etcd", "postgresql", "redis", "pgbouncer")
TITLES = {
    "mdns": "mDNS",
    "peers": "listed peers",
    "zookeeper": "ZooKeeper",
    "etcd": "etcd",
    "postgresql": "PostgreSQL",
    "redis": "Redis",
    "pgbouncer": "PostgreSQL via pgbouncer",
}
# What each server's counter counts (tests/coordservers.py, ServerSet.requests_served).
IDLE_UNITS = {
    "zookeeper": "requests",
    "etcd": "requests",
    "postgresql": "transactions",
    "pgbouncer": "transactions",
    "redis": "commands",
    "mdns": "UDP datagrams",
    "peers": "UDP datagrams",
}
DATAGRAM_SETTLE = 10.0  # seconds from agreement to the window, as benchmarks/scale.py's --settle
TIMED = ("cold", "failover", "handover", "resign")
HEADINGS = {
    "cold": "cold start",
    "failover": "crash failover",
    "handover": "stop() handover",
    "resign": "resign() handover",
}


@dataclass
class Row:
    """One backend's figures, or why it has none."""

    backend: str
    results: dict[str, list[float]] = field(default_factory=dict)
    idle: float | None = None
    failure: str | None = None  # skipped, or the rounds failed: the reason
    idle_failure: str | None = None  # the idle-load measurement failed: the reason

    def cell(self, key: str) -> str:
        """``p50 / p99`` in ms of one timed measure."""
        values = [v for v in self.results.get(key, []) if not math.isnan(v)]
        if not values:
            return "n/a"
        p50, p99 = (election.percentile(values, q) * 1000 for q in (50, 99))
        return f"{number(p50)} / {number(p99)}"

    def overlap(self) -> str:
        """Total time two nodes held the leader role at once, all rounds, in ms."""
        values = self.results.get("overlap", [])
        return f"{sum(values) * 1000:.1f}" if values else "n/a"

    def idle_cell(self) -> str:
        if self.idle_failure is not None:
            return self.idle_failure
        if self.idle is None:
            return "n/a"
        return f"{self.idle:.2f} {IDLE_UNITS[self.backend]}"

    def cells(self) -> list[str]:
        if self.failure is not None:
            return [self.failure] + [""] * (len(TIMED) + 1)
        return [self.cell(key) for key in TIMED] + [self.overlap(), self.idle_cell()]


def number(ms: float) -> str:
    """Milliseconds as the docs write them: one decimal below 100, thousands separated above."""
    return f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def idle_datagrams(lab: Lab, backend: str, nodes: int, quiet: float) -> float:
    """UDP datagrams per second per idle member of an mDNS (``mdns``) or listed-peers group.

    Counted by :mod:`scale`'s bridge counters (checked first with one datagram of each kind)
    over ``quiet`` seconds, :data:`DATAGRAM_SETTLE` seconds after the group agreed.
    """
    hosts = [lab.add_host(f"q{i}") for i in range(nodes)]
    scale.install_counters(lab)
    scale.check_counters(lab, hosts)
    options: dict[str, object] = {}
    if backend == "peers":
        lab.block_multicast()
        options["peers"] = [f"{host.address}:9001" for host in hosts]
    cluster = Cluster(lab)
    try:
        cluster.start_together(hosts, options=options)
        cluster.wait_agreement(timeout=60)
        time.sleep(DATAGRAM_SETTLE)  # a benchmark: past the start-up announcements
        first, last = scale.watch(lab, quiet, windows=1)
        counted = last.since(first)
        return (counted["mdns"][0] + counted["heartbeat"][0]) / (last.time - first.time) / nodes
    finally:
        cluster.finish()


def failure(error: Exception) -> str:
    """Prints the traceback to standard error; returns a one-line account for the table."""
    traceback.print_exc(file=sys.stderr)
    return f"failed: {type(error).__name__}: {error}".splitlines()[0][:200]


def measure(backend: str, args: argparse.Namespace) -> Row:
    """Runs election.py's rounds, then the idle-load window, for one backend."""
    row = Row(backend)
    server = backend in SERVERS
    if server and (reason := unavailable_reason(backend)):
        row.failure = f"skipped: {reason}"
        return row
    options: dict[str, object] = {}
    if server:
        options["coordinator_ttl"] = args.coordinator_ttl

    def progress(number: int, figures: dict[str, float]) -> None:
        election.print_round(number, figures, file=sys.stderr, prefix=f"{backend:10s} ")

    try:
        row.results = election.run_rounds(
            options,
            rounds=args.rounds,
            nodes=args.nodes,
            peers="list" if backend == "peers" else None,
            coordinator=backend if server else None,
            failover_too=True,
            on_round=progress,
        )
    except Exception as error:  # noqa: BLE001 - reported in the table; the other backends still run
        row.failure = failure(error)
        return row
    if args.quiet > 0:
        try:
            with Lab() as lab:
                if server:
                    row.idle = idle_load.idle_rate(lab, backend, args.nodes, args.quiet, args.idle_ttl)
                else:
                    row.idle = idle_datagrams(lab, backend, args.nodes, args.quiet)
        except Exception as error:  # noqa: BLE001 - reported in the table; the rounds' figures stay
            row.idle_failure = failure(error)
        else:
            print(f"{backend:10s} idle: {row.idle:.2f} {IDLE_UNITS[backend]}/s per member", file=sys.stderr, flush=True)
    return row


def header(args: argparse.Namespace, started: datetime.datetime, load_start: tuple[float, ...]) -> list[str]:
    """The lines above the table: command, date, machine, settings, units."""
    ended = datetime.datetime.now(datetime.timezone.utc)
    loads = " -> ".join("/".join(f"{x:.2f}" for x in load) for load in (load_start, os.getloadavg()))
    return [
        f"python benchmarks/compare.py {' '.join(sys.argv[1:])}".rstrip(),
        f"date: {started:%Y-%m-%d %H:%M} to {ended:%H:%M} UTC",
        f"machine: nproc {len(os.sched_getaffinity(0))}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; load average (1/5/15 min) at start -> end: {loads}",
        f"settings: {args.nodes} nodes, {args.rounds} rounds per backend; coordinators: one server in a lab host, "
        f"coordinator_ttl {args.coordinator_ttl:g} s (bounds their crash failover)",
        f"idle load: {args.nodes} members after agreement, a {args.quiet:g} s quiet window, "
        f"coordinator_ttl {args.idle_ttl:g} s, counted by the server's own counter; mDNS and listed peers: "
        f"UDP datagrams entering the lab bridge (each once), {DATAGRAM_SETTLE:g} s after agreement",
        "mDNS and listed peers: library defaults (interval 0.2 s, max_failed_responses 3); "
        "their failover is not TTL-bound",
        "times in ms, p50 / p99 of the rounds (nearest rank: below 100 rounds the p99 is the maximum); "
        "overlap: total ms two nodes held the leader role at once, all rounds",
    ]


def text_table(rows: list[Row]) -> list[str]:
    """A plain table: one line per backend, a skipped or failed one with its reason."""
    titles = ["backend", *(f"{HEADINGS[key]} p50/p99" for key in TIMED), "overlap ms", "idle load /s per member"]
    measured = [[TITLES[row.backend], *row.cells()] for row in rows if row.failure is None]
    widths = [max(len(line[i]) for line in [titles, *measured]) for i in range(len(titles))]
    lines = ["  ".join(f"{cell:{width}s}" for cell, width in zip(titles, widths, strict=True)).rstrip()]
    for row in rows:
        if row.failure is not None:
            lines.append(f"{TITLES[row.backend]:{widths[0]}s}  {row.failure}")
        else:
            cells = [TITLES[row.backend], *row.cells()]
            lines.append("  ".join(f"{cell:{width}s}" for cell, width in zip(cells, widths, strict=True)).rstrip())
    return lines


def rst_table(rows: list[Row]) -> list[str]:
    """A list-table in the layout of docs/performance.rst: one column per backend."""
    width = 78 // (len(rows) + 1)
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        f"   :widths: {' '.join(['22'] + [str(width)] * len(rows))}",
        "",
        "   * - p50 / p99, ms",
        *(f"     - {TITLES[row.backend]}" for row in rows),
    ]
    labels = {
        "cold": "Cold start to one leader",
        "failover": "SIGKILL failover",
        "handover": "``stop()`` handover",
        "resign": "``resign()`` handover",
        "overlap": "Overlap (two leaders at once), ms, all rounds",
        "idle": "Idle load per member per second (server's counter; bridge for mDNS, peers)",
    }
    for index, label in enumerate(labels.values()):
        lines.append(f"   * - {label}")
        for row in rows:
            cell = row.cells()[index] if row.failure is None else (row.failure if index == 0 else "")
            lines.append(f"     - {cell}" if cell else "     -")
    return lines


def parse_backends(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS + OPTIONAL_BACKENDS]
    if unknown or not names:
        known = ", ".join(BACKENDS + OPTIONAL_BACKENDS)
        raise argparse.ArgumentTypeError(f"unknown backend {', '.join(unknown) or '(none)'}: choose from {known}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backends",
        type=parse_backends,
        default=list(BACKENDS),
        metavar="NAME,...",
        help=f"comma-separated subset of {','.join(BACKENDS)} (or pgbouncer); default: all six",
    )
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--coordinator-ttl", type=float, default=3.0, metavar="SECONDS")
    parser.add_argument("--quiet", type=float, default=30.0, help="seconds of the idle window (0: no idle load)")
    parser.add_argument(
        "--idle-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="coordinator_ttl of the idle-load measurement (default: --coordinator-ttl; the load is about 1/TTL)",
    )
    parser.add_argument(
        "--format",
        choices=["text", "rst"],
        action="append",
        default=None,
        help="text (default) or rst (a list-table for docs/performance.rst); repeatable to print both",
    )
    args = parser.parse_args()
    if args.nodes < 4:
        parser.error("--nodes must be at least 4 (a resign() handover needs 3 nodes left after the failover)")
    if args.idle_ttl is None:
        args.idle_ttl = args.coordinator_ttl
    if args.rounds < 1 or args.coordinator_ttl <= 0 or args.idle_ttl <= 0 or args.quiet < 0:
        parser.error("--rounds must be at least 1, the TTLs positive and --quiet not negative")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that the labs are removed
    if reason := lab_unavailable_reason():
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    started, load_start = datetime.datetime.now(datetime.timezone.utc), os.getloadavg()
    rows = [measure(backend, args) for backend in args.backends]
    lines = header(args, started, load_start)
    for form in args.format or ["text"]:
        print()
        print("\n".join(lines if form == "text" else [f".. {lines[0]}", *(f"   {line}" for line in lines[1:])]))
        print()
        print("\n".join(text_table(rows) if form == "text" else rst_table(rows)))
    failed = any((row.failure or "").startswith("failed") or row.idle_failure for row in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
