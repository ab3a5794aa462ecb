"""Scale benchmark in the namespace lab: groups of 3 to 30 nodes, and the npm package beside them.

Every node is one process on a lab host of its own (a network namespace of
``tests/netlab.py``; all hosts share one bridge), driven through ``tests/cluster.py``.
Nothing is sent outside the lab. Phases, for each group size N (``--sizes``):

* **rounds** (``--rounds``): N fresh processes, told to start at once; measured with the
  event times the nodes report on one shared monotonic clock (``benchmarks/election.py``'s
  round): *cold start* from "go" to all N agreeing on one leader (same id and term), *crash
  failover* from SIGKILL of that leader to all N-1 survivors agreeing on a new one, *clean
  handover* from ``stop()`` of that leader to its successor's ``leader`` event, and the total
  time two nodes held the leader role at once.
* **quiet minute** (``--quiet-seconds``, after ``--settle`` seconds of agreement): a fresh
  group of N that has agreed and is left alone. Per node: CPU as a percentage of one core
  (utime + stime from ``/proc/<pid>/stat`` over the period) and peak RSS (``VmHWM`` in
  ``/proc/<pid>/status``, in MB of 10^6 bytes). On the bridge: datagrams and bytes per second
  of mDNS (UDP port 5353, either end) and of the other UDP traffic, which is the heartbeats,
  in windows of a tenth of the period. Bytes are IP datagram sizes (IP and UDP headers
  included, Ethernet header not).
* **hold** (``--hold`` seconds, ``--hold-nodes`` nodes): one group left alone; every role
  event after the agreement counts as a role change, and mDNS is counted per window.

The bridge counters are an nftables table of this script's own (``bridge ftl_scale``, in the
lab's bridge namespace) whose chain sits on the bridge ``prerouting`` hook: it sees each
frame once, as it enters the bridge from a host's port, before the bridge floods it to the
other ports (``forward``, once per output port) and to the bridge itself (``input``). A
self-check at start sends one multicast mDNS datagram and one unicast datagram through a
three-host bridge and requires each counter to grow by exactly one.

**npm** (``--npm-sizes``, ``--npm-rounds``): the npm package followtheleader 2.0.9, installed
with ``npm ci`` into ``benchmarks/npm/`` (``package-lock.json`` pins it) and run by
``benchmarks/npm/harness.js``, one process per lab host. As published it cannot elect at
all: followers browse ``_ftl._tcp`` while leaders publish ``_ftl._udp``. This script patches
its own copy (``benchmarks/npm/node_modules/followtheleader/dist/bonjour.js``) to browse
``_udp``, and nothing else. Its timers are long (a 5-30 s browse window before any decision,
a ping every 5 s, a leader dead after 3 unanswered pings) and it sends no goodbye on exit,
so its handover is a failover. To keep the run short, every npm round is two groups, one
whose leader gets SIGKILL and one whose leader exits (the harness's ``stop``), each on its
own hosts and DNS-SD service type; all npm groups run at the same time. Its miss counter
is never reset, so a follower that lived through a failover re-elects at the first ping of
every later follow: the group is never again all followers at once. The npm failover and
handover times are therefore taken when each survivor has *first* followed the new leader.

Targets (default settings, 2-core machine), each printed as PASS or FAIL: 30 nodes hold 5
minutes with no role change; cold start of 20 nodes p99 < 2 s; idle CPU < 1 % of a core and
peak RSS < 40 MB for every node; heartbeat traffic at most linear in the number of
followers (the datagram rate per follower never more than 15 % above the smallest group's:
protocol 3 makes it fall with size); issue 23's leader under 0.5 % of a core at 30 nodes and
under 1 % at 100, followers under 0.3 %; mDNS traffic flat while nothing
changes (during the hold, leaving out its first tenth for the start-up, at most one mDNS
datagram more per tenth in its second half than in its first).

Run as root (it creates network namespaces; all traffic stays inside them)::

    python benchmarks/scale.py                       # everything: about 17 minutes
    python benchmarks/scale.py --sizes 3,10 --rounds 2 --quiet-seconds 10 --hold 10 --npm-sizes 3 --npm-rounds 1

The report (the tables and the verdicts) is printed and written to ``--output``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from _common import argument_parser, ready_to_run
from election import one_round, percentile

from cluster import Agreement, Cluster, JsonLinesProcess
from netlab import Host, Lab

HERE = os.path.dirname(os.path.abspath(__file__))

NPM_DIR = os.path.join(HERE, "npm")
NPM_HARNESS = os.path.join(NPM_DIR, "harness.js")
NPM_VERSION = "2.0.9"
NPM_BONJOUR_JS = os.path.join(NPM_DIR, "node_modules", "followtheleader", "dist", "bonjour.js")
NPM_BROWSE_AS_PUBLISHED = "bonjour.findOne({ type: this.type }"
NPM_BROWSE_PATCHED = "bonjour.findOne({ type: this.type, protocol: 'udp' /* patched by benchmarks/scale.py */ }"

COUNTER_TABLE = "ftl_scale"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MB = 1_000_000

# Targets of issue 8, at default settings on a 2-core machine.
TARGET_HOLD_NODES = 30
TARGET_HOLD_SECONDS = 300.0
TARGET_COLD_NODES = 20
TARGET_COLD_P99 = 2.0
TARGET_CPU_PERCENT = 1.0
TARGET_RSS_MB = 40.0
TARGET_LINEAR_SPREAD = 0.15
# Targets of issue 23 (protocol 3): the leader's CPU by group size, and every follower's.
TARGET_LEADER_CPU = {30: 0.5, 100: 1.0}
TARGET_FOLLOWER_CPU = 0.3

STARTED = time.monotonic()


def progress(text: str) -> None:
    """A progress line on stdout, with the minutes and seconds since the start of the run."""
    elapsed = int(time.monotonic() - STARTED)
    print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", flush=True)


# ---------------------------------------------------------------------------------------------
# bridge counters


def _nft(lab: Lab, *args: str, ruleset: str | None = None) -> str:
    """Run nft in the lab's bridge namespace (never in the root one)."""
    nft = shutil.which("nft")
    if nft is None:
        raise RuntimeError("nft (nftables) is needed to count the traffic on the bridge")
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.bridge_ns, nft, *args],
        input=ruleset,
        text=True,
        capture_output=True,
        timeout=15,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def install_counters(lab: Lab) -> None:
    """Count every frame once as it enters the bridge: mDNS, other UDP (heartbeats), the rest."""
    ruleset = f"""table bridge {COUNTER_TABLE}
delete table bridge {COUNTER_TABLE}
table bridge {COUNTER_TABLE} {{
  counter mdns {{ }}
  counter heartbeat {{ }}
  counter other {{ }}
  chain count {{
    type filter hook prerouting priority -300; policy accept;
    udp dport 5353 counter name "mdns" accept
    udp sport 5353 counter name "mdns" accept
    meta l4proto udp counter name "heartbeat" accept
    counter name "other"
  }}
}}
"""
    _nft(lab, "-f", "-", ruleset=ruleset)


@dataclass(frozen=True)
class Reading:
    """The bridge counters at one moment: name -> (frames, bytes)."""

    time: float
    counts: dict[str, tuple[int, int]]

    def since(self, earlier: Reading) -> dict[str, tuple[int, int]]:
        return {k: (v[0] - earlier.counts[k][0], v[1] - earlier.counts[k][1]) for k, v in self.counts.items()}


def read_counters(lab: Lab) -> Reading:
    document = json.loads(_nft(lab, "-j", "list", "counters", "table", "bridge", COUNTER_TABLE))
    counts = {}
    for item in document["nftables"]:
        counter = item.get("counter")
        if counter and counter.get("table") == COUNTER_TABLE:
            counts[counter["name"]] = (int(counter["packets"]), int(counter["bytes"]))
    return Reading(time.monotonic(), counts)


SEND_ONE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
s.sendto(b"x" * int(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))
"""


def check_counters(lab: Lab, hosts: list[Host]) -> str:
    """Send one multicast mDNS datagram and one unicast datagram; each must count once."""
    size = 100  # UDP payload; the counted IP datagram is 28 bytes more
    before = read_counters(lab)
    hosts[0].run([sys.executable, "-c", SEND_ONE, "224.0.0.251", "5353", str(size)])
    hosts[0].run([sys.executable, "-c", SEND_ONE, hosts[1].address, "9", str(size)])
    # The frames are in the counters once they have crossed the bridge, which the senders'
    # exit does not wait for: read until both have arrived (at most a second).
    deadline = time.monotonic() + 1.0
    while True:
        delta = read_counters(lab).since(before)
        if (delta["mdns"][0] >= 1 and delta["heartbeat"][0] >= 1) or time.monotonic() > deadline:
            break
    expected = (1, size + 28)
    if delta["mdns"] != expected or delta["heartbeat"] != expected:
        raise RuntimeError(
            f"bridge counter self-check failed: one multicast and one unicast datagram of {size + 28} bytes "
            f"through {len(hosts)} ports counted as mdns={delta['mdns']} heartbeat={delta['heartbeat']}"
        )
    return (
        f"counter self-check: 1 multicast datagram flooded to {len(hosts) - 1} hosts counted once "
        f"({expected[1]} bytes), 1 unicast datagram counted once"
    )


# ---------------------------------------------------------------------------------------------
# /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def peak_rss(pid: int) -> float:
    """VmHWM of a process, in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    raise RuntimeError(f"no VmHWM for pid {pid}")


# ---------------------------------------------------------------------------------------------
# Python groups


@dataclass
class Rounds:
    """Cold start, failover and handover times (s) of the rounds of one group size."""

    nodes: int
    cold: list[float] = field(default_factory=list)
    failover: list[float] = field(default_factory=list)
    handover: list[float] = field(default_factory=list)
    overlap: float = 0.0
    failed: list[str] = field(default_factory=list)


@dataclass
class Quiet:
    """One group left alone: CPU (% of a core), peak RSS (MB), bridge traffic (frames, bytes)."""

    nodes: int
    seconds: float
    cpu_leader: float
    cpu_followers: list[float]
    rss: list[float]
    traffic: dict[str, tuple[int, int]]
    mdns_windows: list[int]
    role_changes: int

    def rate(self, name: str) -> tuple[float, float]:
        frames, size = self.traffic[name]
        return frames / self.seconds, size / self.seconds


@dataclass
class Hold:
    """One group left alone for long: the role events that came, and the traffic."""

    nodes: int
    seconds: float
    role_changes: list[dict[str, Any]]
    alive: int
    traffic: dict[str, tuple[int, int]]
    mdns_windows: list[int]


def start_group(lab: Lab, hosts: list[Host], timeout: float = 60.0) -> tuple[Cluster, Agreement]:
    """Start one node per host at the same moment; return the cluster once all agree, and on whom."""
    cluster = Cluster(lab)
    try:
        processes = [cluster.spawn(host, wait_go=True) for host in hosts]
        cluster.wait_ready(120)
        for process in processes:
            process.send("go")
        agreement = cluster.wait_agreement(timeout=timeout)
    except BaseException:
        cluster.finish()
        raise
    return cluster, agreement


def role_event_count(cluster: Cluster) -> int:
    with cluster.changed:
        return len(cluster.all_events_locked())


def watch(lab: Lab, seconds: float, windows: int = 10) -> list[Reading]:
    """Read the bridge counters now and at the end of each of ``windows`` equal windows."""
    readings = [read_counters(lab)]
    timer = threading.Event()
    for index in range(1, windows + 1):
        timer.wait(max(0.0, readings[0].time + seconds * index / windows - time.monotonic()))
        readings.append(read_counters(lab))
    return readings


def mdns_per_window(readings: list[Reading]) -> list[int]:
    return [later.since(earlier)["mdns"][0] for earlier, later in itertools.pairwise(readings)]


def quiet_period(lab: Lab, hosts: list[Host], seconds: float, settle: float) -> Quiet:
    """A fresh group, ``settle`` seconds after it agreed, watched for ``seconds``."""
    cluster, agreement = start_group(lab, hosts)
    try:
        threading.Event().wait(settle)
        events_before = role_event_count(cluster)
        leader = cluster.process_of(agreement.leader)
        pids = {p.proc.pid: p is leader for p in cluster.processes}
        t_before, cpu_before = time.monotonic(), {pid: cpu_seconds(pid) for pid in pids}
        readings = watch(lab, seconds)
        cpu_after, t_after = {pid: cpu_seconds(pid) for pid in pids}, time.monotonic()
        cpu = {pid: (cpu_after[pid] - cpu_before[pid]) / (t_after - t_before) * 100 for pid in pids}
        rss = [peak_rss(pid) for pid in pids]
        first, last = readings[0], readings[-1]
        return Quiet(
            nodes=len(hosts),
            seconds=last.time - first.time,
            cpu_leader=next(cpu[pid] for pid, is_leader in pids.items() if is_leader),
            cpu_followers=[cpu[pid] for pid, is_leader in pids.items() if not is_leader],
            rss=rss,
            traffic=last.since(first),
            mdns_windows=mdns_per_window(readings),
            role_changes=role_event_count(cluster) - events_before,
        )
    finally:
        cluster.finish()


def hold_period(lab: Lab, hosts: list[Host], seconds: float) -> Hold:
    """A fresh group watched for ``seconds`` from the moment it agreed."""
    cluster, _ = start_group(lab, hosts)
    try:
        with cluster.changed:
            seen = {id(r) for r in cluster.all_events_locked()}
        readings = watch(lab, seconds)
        first, last = readings[0], readings[-1]
        with cluster.changed:
            changes = [r for r in cluster.all_events_locked() if id(r) not in seen]
            alive = sum(1 for p in cluster.processes if p.alive and p.proc.poll() is None)
        return Hold(len(hosts), last.time - first.time, changes, alive, last.since(first), mdns_per_window(readings))
    finally:
        cluster.finish()


PHASE_ERRORS = (TimeoutError, KeyError, StopIteration, OSError, RuntimeError, subprocess.SubprocessError)


def python_rounds(lab: Lab, hosts: list[Host], rounds: int) -> Rounds:
    """``rounds`` rounds of benchmarks/election.py: cold start, SIGKILL of the leader, stop() of the next."""
    result = Rounds(len(hosts))
    for number in range(1, rounds + 1):
        try:
            figures = one_round(lab, hosts, {})
        except PHASE_ERRORS as exc:
            result.failed.append(f"round {number}: {exc}")
            progress(f"  {len(hosts)} nodes, round {number:2d}: FAILED: {exc}")
            continue
        result.cold.append(figures["cold"])
        result.failover.append(figures["failover"])
        result.handover.append(figures["handover"])
        result.overlap += figures["overlap"]
        progress(
            f"  {len(hosts)} nodes, round {number:2d}: cold start {figures['cold'] * 1000:7.1f} ms  "
            f"failover {figures['failover'] * 1000:7.1f} ms  handover {figures['handover'] * 1000:6.1f} ms  "
            f"overlap {figures['overlap'] * 1000:.1f} ms",
        )
    return result


# ---------------------------------------------------------------------------------------------
# npm groups


def npm_install() -> str:
    """Install the pinned npm package into benchmarks/npm if needed, and patch that copy only."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("node and npm are needed for the npm comparison (or pass --npm-sizes '')")
    if not os.path.exists(NPM_BONJOUR_JS):
        progress(f"installing followtheleader {NPM_VERSION} from the npm registry into {NPM_DIR} (npm ci)")
        # --ignore-scripts: nothing of the package runs outside the lab, not even an install script
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=NPM_DIR, check=True)
    with open(os.path.join(NPM_DIR, "node_modules", "followtheleader", "package.json")) as fh:
        version = json.load(fh)["version"]
    if version != NPM_VERSION:
        raise RuntimeError(f"{NPM_DIR} has followtheleader {version}, not {NPM_VERSION}: run npm ci there")
    with open(NPM_BONJOUR_JS) as fh:
        source = fh.read()
    if NPM_BROWSE_PATCHED in source:
        return "already patched"
    if source.count(NPM_BROWSE_AS_PUBLISHED) != 1:
        raise RuntimeError(f"{NPM_BONJOUR_JS}: the browse call to patch is not there as published")
    with open(NPM_BONJOUR_JS, "w") as fh:
        fh.write(source.replace(NPM_BROWSE_AS_PUBLISHED, NPM_BROWSE_PATCHED))
    return "patched now"


class NpmNode(JsonLinesProcess):
    """One npm elector (benchmarks/npm/harness.js) on a lab host; its JSON lines are collected."""

    def __init__(self, group: NpmGroup, host: Host) -> None:
        self.group = group
        self.node_id = f"n{host.name}"
        argv = ["node", NPM_HARNESS, group.name, "--type", group.type, "--hostname", self.node_id]
        super().__init__(host, argv, group.changed)

    def take(self, record: dict[str, Any]) -> None:
        received = time.monotonic()
        if record["kind"] == "ready" and not self.spawned <= record["t"] <= received:
            record["clock_error"] = f"ready at {record['t']}, not within [{self.spawned}, {received}]"

    def kill(self) -> float:
        t = time.monotonic()
        self.proc.kill()
        self.proc.wait(10)
        with self.group.changed:
            self.alive = False
            self.group.changed.notify_all()
        return t

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class NpmGroup:
    """The npm nodes of one group: one service type of their own, one node per host."""

    def __init__(self, hosts: list[Host], name: str, service_type: str, ending: str) -> None:
        self.name = name
        self.type = service_type
        self.ending = ending  # "kill" (failover) or "stop" (handover)
        self.changed = threading.Condition()
        self.cancelled = False
        self.nodes = [NpmNode(self, host) for host in hosts]

    def ready(self) -> bool:
        return all(any(r["kind"] == "ready" for r in n.records) for n in self.nodes)

    def dead(self) -> list[NpmNode]:
        return [n for n in self.nodes if not n.alive]

    def found_locked(self, since: float, other_than: str | None) -> tuple[str, float] | None:
        """When every live node has found one leader since ``since``: (leader, last finding).

        The leader is the only live node whose latest role event is ``leader``; every other live
        node must have had a ``follower`` event naming it since ``since`` (later re-elections
        do not undo that, see the module docstring).
        """
        live = [n for n in self.nodes if n.alive]
        latest = {}
        for node in live:
            roles = [r for r in node.records if r["kind"] in ("leader", "follower")]
            if roles:
                latest[node.node_id] = roles[-1]
        leaders = [node for node, r in latest.items() if r["kind"] == "leader"]
        if len(leaders) != 1 or leaders[0] == other_than:
            return None
        leader = leaders[0]
        if latest[leader]["t"] < since:
            return None
        times = [latest[leader]["t"]]
        for node in live:
            if node.node_id == leader:
                continue
            found = [
                r["t"]
                for r in node.records
                if r["kind"] == "follower" and r.get("leader") == leader and r["t"] >= since
            ]
            if not found:
                return None
            times.append(found[0])
        return leader, max(times)

    def wait_found(self, since: float, timeout: float, other_than: str | None = None) -> tuple[str, float]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = self.found_locked(since, other_than)
                if found:
                    return found
                if self.cancelled:
                    raise TimeoutError("cancelled")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    roles = {
                        n.node_id: [r["kind"] for r in n.records if r["kind"] not in ("ready", "started")]
                        for n in self.nodes
                    }
                    raise TimeoutError(f"no single leader after {timeout:.0f} s; events: {roles}")
                self.changed.wait(remaining)

    def run(self, go: float) -> dict[str, Any]:
        """After "go" at ``go``: cold start, then the leader is killed or stopped."""
        outcome: dict[str, Any] = {"nodes": len(self.nodes), "ending": self.ending}
        try:
            leader, t_agreed = self.wait_found(go, timeout=75)
            outcome["cold"] = t_agreed - go
            with self.changed:
                live = sum(1 for n in self.nodes if n.alive)
            if live < 2:
                raise TimeoutError(f"only {live} node left after the cold start (the others crashed)")
            node = next(n for n in self.nodes if n.node_id == leader)
            t_end = node.kill() if self.ending == "kill" else node.send("stop")
            _, t_again = self.wait_found(t_end, timeout=120, other_than=leader)
            outcome[self.ending] = t_again - t_end
        except TimeoutError as exc:
            outcome["error"] = str(exc)
        with self.changed:
            outcome["crashed"] = sum(1 for n in self.nodes for r in n.records if r["kind"] == "crash")
            outcome["clock_errors"] = [r["clock_error"] for n in self.nodes for r in n.records if "clock_error" in r]
        return outcome

    def finish(self) -> None:
        with self.changed:
            self.cancelled = True
            self.changed.notify_all()
        for node in self.nodes:
            node.finish()


@dataclass
class NpmResults:
    """The npm groups of one size: cold start, failover (SIGKILL) and handover (exit) times (s)."""

    nodes: int
    cold: list[float] = field(default_factory=list)
    failover: list[float] = field(default_factory=list)
    handover: list[float] = field(default_factory=list)
    crashed: int = 0
    failed: list[str] = field(default_factory=list)


def npm_phase(lab: Lab, spare: Iterator[Host], sizes: list[int], rounds: int) -> dict[int, NpmResults]:
    """Every npm group at once, each on hosts of its own with a service type of its own."""
    groups: list[NpmGroup] = []
    for size in sizes:
        for _ in range(rounds):
            for ending in ("kill", "stop"):
                hosts = [next(spare) for _ in range(size)]
                groups.append(NpmGroup(hosts, "grp", f"ftl{len(groups)}", ending))
    results = {size: NpmResults(size) for size in sizes}
    pool = ThreadPoolExecutor(len(groups))
    try:
        deadline = time.monotonic() + 180
        for group in groups:
            with group.changed:
                while not group.ready():
                    if group.dead() or time.monotonic() > deadline:
                        stderr = "".join(n.stderr for n in group.nodes)[-2000:]
                        raise RuntimeError(f"npm nodes did not start: {stderr}")
                    group.changed.wait(1)
        go = {}
        for group in groups:
            go[id(group)] = min(node.send("go") for node in group.nodes)
        outcomes = list(pool.map(lambda g: g.run(go[id(g)]), groups))
    finally:
        for group in groups:
            group.finish()
        pool.shutdown(cancel_futures=True)
    for outcome in outcomes:
        result = results[outcome["nodes"]]
        if outcome["clock_errors"]:
            raise RuntimeError(f"node's hrtime is not Python's monotonic clock: {outcome['clock_errors'][0]}")
        if "cold" in outcome:
            result.cold.append(outcome["cold"])
        if "kill" in outcome:
            result.failover.append(outcome["kill"])
        if "stop" in outcome:
            result.handover.append(outcome["stop"])
        result.crashed += outcome["crashed"]
        if "error" in outcome:
            result.failed.append(f"{outcome['ending']} group: {outcome['error']}")
        progress(
            f"  npm {outcome['nodes']} nodes ({outcome['ending']}): "
            + "  ".join(f"{k} {outcome[k]:.2f} s" for k in ("cold", "kill", "stop") if k in outcome)
            + (f"  crashed nodes {outcome['crashed']}" if outcome["crashed"] else "")
            + (f"  FAILED: {outcome['error'][:300]}" if "error" in outcome else ""),
        )
    return results


# ---------------------------------------------------------------------------------------------
# report


def per_size(value: str, sizes: list[int], what: str) -> dict[int, int]:
    """Rounds per size: "10" -> every size 10 rounds; "20,20,20,10" -> one figure per size, in order."""
    figures = [int(x) for x in value.split(",") if x.strip()]
    if len(figures) == 1:
        return dict.fromkeys(sizes, figures[0])
    if len(figures) != len(sizes):
        raise SystemExit(f"{what}: give one figure or one per size ({len(sizes)})")
    return dict(zip(sizes, figures, strict=True))


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.1f}" if values else "-"


def duration(values: list[float], q: float) -> str:
    """A percentile in ms below one second, else in s."""
    if not values:
        return "-"
    value = percentile(values, q)
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a "}[passed]


def report(
    args: argparse.Namespace,
    started: str,
    setup: list[str],
    rounds: dict[int, Rounds],
    quiet: dict[int, Quiet],
    hold: Hold | None,
    npm: dict[int, NpmResults],
    problems: list[str],
) -> str:
    lines: list[str] = []
    out = lines.append
    out(f"followtheleader scale benchmark, {started}")
    out(
        f"python {platform.python_version()}, zeroconf {zeroconf_version()}, node {node_version()}, "
        f"{os.cpu_count()} cpus, load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    out("command: " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]))
    lines.extend(setup)
    out("")
    out("Python followtheleader, default settings (interval 0.2 s, max_failed_responses 3)")
    out(
        f"{'nodes':>5} {'rounds':>6} | {'cold start ms':>15} | {'crash failover ms':>17} | "
        f"{'clean handover ms':>17} | {'overlap ms':>10} | failed"
    )
    out(f"{'':>5} {'':>6} | {'p50':>7} {'p99':>7} | {'p50':>8} {'p99':>8} | {'p50':>8} {'p99':>8} | {'total':>10} |")
    for size, r in rounds.items():
        out(
            f"{size:5d} {len(r.cold):6d} | {ms(r.cold, 50):>7} {ms(r.cold, 99):>7} | "
            f"{ms(r.failover, 50):>8} {ms(r.failover, 99):>8} | {ms(r.handover, 50):>8} {ms(r.handover, 99):>8} | "
            f"{r.overlap * 1000:10.1f} | {len(r.failed)}"
        )
    if quiet:
        seconds = statistics.median(q.seconds for q in quiet.values())
        out("")
        out(f"Quiet period: {seconds:.0f} s, starting {args.settle:g} s after the group agreed")
        out(
            f"{'nodes':>5} | {'CPU % of a core':>26} | {'peak RSS MB':>11} | {'mDNS (UDP 5353)':>17} | "
            f"{'heartbeats (other UDP)':>23} | {'per follower':>12} | role"
        )
        out(
            f"{'':>5} | {'leader':>7} {'fol. mean':>9} {'max':>8} | {'max':>11} | {'dgram/s':>8} {'B/s':>8} | "
            f"{'dgram/s':>11} {'B/s':>11} | {'dgram/s':>12} | changes"
        )
        for size, q in quiet.items():
            mdns, heartbeat = q.rate("mdns"), q.rate("heartbeat")
            followers = mean(q.cpu_followers)
            out(
                f"{size:5d} | {q.cpu_leader:7.2f} {followers:9.2f} {max([q.cpu_leader, *q.cpu_followers]):8.2f} | "
                f"{max(q.rss):11.1f} | {mdns[0]:8.2f} {mdns[1]:8.0f} | {heartbeat[0]:11.1f} {heartbeat[1]:11.0f} | "
                f"{heartbeat[0] / max(1, size - 1):12.2f} | {q.role_changes}"
            )
        out("mDNS datagrams per tenth of the quiet period:")
        for size, q in quiet.items():
            out(f"  {size:3d} nodes: {' '.join(str(n) for n in q.mdns_windows)}")
    if hold is not None:
        out("")
        mdns = hold.traffic["mdns"]
        out(
            f"Hold: {hold.nodes} nodes left alone for {hold.seconds:.0f} s after agreeing: "
            f"{len(hold.role_changes)} role changes, {hold.alive}/{hold.nodes} processes alive at the end, "
            f"mDNS {mdns[0] / hold.seconds:.2f} dgram/s {mdns[1] / hold.seconds:.0f} B/s, heartbeats "
            f"{hold.traffic['heartbeat'][0] / hold.seconds:.1f} dgram/s"
        )
        out(f"  mDNS datagrams per tenth of the hold: {' '.join(str(n) for n in hold.mdns_windows)}")
        for change in hold.role_changes[:10]:
            out(f"  role change: {change}")
    if npm:
        out("")
        out(
            f"Side by side with npm followtheleader {NPM_VERSION} (patched to browse _udp; "
            "npm with fewer rounds, see the n columns)"
        )
        out(
            f"{'nodes':>5} {'measure':<16} | {'python n':>8} {'p50':>9} {'p99':>9} | "
            f"{'npm n':>5} {'p50':>9} {'p99':>9} | npm, every sample (s)"
        )
        for size, n in npm.items():
            r = rounds.get(size, Rounds(size))
            for label, py, js in (
                ("election", r.cold, n.cold),
                ("crash failover", r.failover, n.failover),
                ("clean handover", r.handover, n.handover),
            ):
                out(
                    f"{size:5d} {label:<16} | {len(py):8d} {duration(py, 50):>9} {duration(py, 99):>9} | "
                    f"{len(js):5d} {duration(js, 50):>9} {duration(js, 99):>9} | "
                    + " ".join(f"{v:.1f}" for v in sorted(js))
                )
            if n.crashed or n.failed:
                out(f"      npm: {n.crashed} nodes crashed (name conflict), {len(n.failed)} groups without a result")
        out(
            "  npm: election, failover and handover end when every live node has found the new leader once "
            "(its followers re-elect every 5 s after a failover); nodes that elect themselves within ~0.75 s "
            "of another leader crash (name conflict) or stay rival leaders, and times are among the nodes left; "
            "each npm round is 2 groups (SIGKILL / exit of the leader), both give a cold start; all npm groups "
            "ran at once, each with its own service type"
        )
    out("")
    out("Targets (default settings)")
    for passed, text in targets(rounds, quiet, hold, problems):
        out(f"  {verdict(passed)}  {text}")
    for size, r in rounds.items():
        for failure in r.failed:
            out(f"  failed, {size} nodes: {failure[:300]}")
    for size, n in npm.items():
        for failure in n.failed:
            out(f"  npm failed, {size} nodes: {failure[:300]}")
    for problem in problems:
        out(f"  {problem[:500]}")
    return "\n".join(lines) + "\n"


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def targets(
    rounds: dict[int, Rounds], quiet: dict[int, Quiet], hold: Hold | None, problems: list[str]
) -> list[tuple[bool | None, str]]:
    found: list[tuple[bool | None, str]] = []
    if hold is None:
        failed = any(p.startswith("hold") for p in problems)
        found.append(
            (
                False if failed else None,
                f"{TARGET_HOLD_NODES} nodes hold {TARGET_HOLD_SECONDS:.0f} s with no role change: "
                + ("the group did not start" if failed else "not run"),
            )
        )
    else:
        short = (
            f" (SHORT RUN: {hold.seconds:.0f} s, {hold.nodes} nodes)"
            if hold.seconds < TARGET_HOLD_SECONDS - 1 or hold.nodes < TARGET_HOLD_NODES
            else ""
        )
        passed = not hold.role_changes and hold.alive == hold.nodes
        found.append(
            (
                passed,
                f"{TARGET_HOLD_NODES} nodes hold {TARGET_HOLD_SECONDS:.0f} s with no role change: "
                f"{len(hold.role_changes)} role changes in {hold.seconds:.0f} s{short}",
            )
        )
    cold = rounds.get(TARGET_COLD_NODES)
    if cold is None or not cold.cold:
        found.append((None, f"cold start of {TARGET_COLD_NODES} nodes p99 < {TARGET_COLD_P99:g} s: not run"))
    else:
        p99 = percentile(cold.cold, 99)
        found.append(
            (
                p99 < TARGET_COLD_P99 and not cold.failed,
                f"cold start of {TARGET_COLD_NODES} nodes p99 < {TARGET_COLD_P99:g} s: {p99:.3f} s over "
                f"{len(cold.cold)} rounds" + (f", {len(cold.failed)} rounds failed" if cold.failed else ""),
            )
        )
    if not quiet:
        found.append((None, "idle CPU, RSS, traffic: no quiet period run"))
        return found
    cpu = max((max([q.cpu_leader, *q.cpu_followers]), size) for size, q in quiet.items())
    found.append(
        (
            cpu[0] < TARGET_CPU_PERCENT,
            f"idle CPU per node < {TARGET_CPU_PERCENT:g} % of a core: highest {cpu[0]:.2f} % ({cpu[1]} nodes; "
            + ", ".join(
                f"{size}: leader {q.cpu_leader:.2f}, followers {mean(q.cpu_followers):.2f}" for size, q in quiet.items()
            )
            + ")",
        )
    )
    rss = max((max(q.rss), size) for size, q in quiet.items())
    found.append(
        (rss[0] < TARGET_RSS_MB, f"peak RSS per node < {TARGET_RSS_MB:g} MB: highest {rss[0]:.1f} MB ({rss[1]} nodes)")
    )
    per_follower = {size: q.rate("heartbeat")[0] / (size - 1) for size, q in quiet.items() if size > 1}
    if len(per_follower) < 2:
        found.append((None, "heartbeat traffic at most linear in followers: needs two group sizes"))
    else:
        # Protocol 3 thins acks from 9 nodes and sends one multicast beat in mDNS mode: the
        # rate per follower falls with size, and must never grow (issue 8's "linear").
        smallest = per_follower[min(per_follower)]
        growth = max(v / smallest - 1 for v in per_follower.values())
        found.append(
            (
                growth <= TARGET_LINEAR_SPREAD,
                "heartbeat traffic at most linear in the number of followers: datagrams/s per follower "
                + ", ".join(f"{v:.2f} ({size} nodes)" for size, v in per_follower.items())
                + f", at most {max(growth, 0.0) * 100:.0f} % above the smallest group's"
                + f" (limit {TARGET_LINEAR_SPREAD * 100:.0f} %)",
            )
        )
    for size, limit in TARGET_LEADER_CPU.items():
        q = quiet.get(size)
        if q is None:
            found.append((None, f"leader CPU at {size} nodes < {limit:g} % of a core (issue 23): not run"))
        else:
            found.append(
                (q.cpu_leader < limit, f"leader CPU at {size} nodes < {limit:g} % of a core: {q.cpu_leader:.2f} %")
            )
    followers_max = max((max(q.cpu_followers, default=0.0), size) for size, q in quiet.items())
    found.append(
        (
            followers_max[0] < TARGET_FOLLOWER_CPU,
            f"follower CPU < {TARGET_FOLLOWER_CPU:g} % of a core (issue 23): highest {followers_max[0]:.2f} %"
            f" ({followers_max[1]} nodes)",
        )
    )
    if hold is None or len(hold.mdns_windows) < 3:
        found.append((None, "mDNS traffic flat while nothing changes: needs the hold"))
    else:
        # The first tenth of the hold has the start-up announcements and queries: left out.
        half = len(hold.mdns_windows) // 2
        early, late = hold.mdns_windows[1:half], hold.mdns_windows[half:]
        found.append(
            (
                mean(late) <= mean(early) + 1,
                f"mDNS traffic flat while nothing changes: {mean(early):.1f} mDNS datagrams per tenth of the hold "
                f"in the first half (after the first tenth), {mean(late):.1f} in the second (limit: first + 1); "
                "quiet periods: " + ", ".join(f"{q.rate('mdns')[0]:.2f}/s ({size} nodes)" for size, q in quiet.items()),
            )
        )
    return found


def zeroconf_version() -> str:
    try:
        from importlib.metadata import version

        return version("zeroconf")
    except Exception:  # noqa: BLE001 - only for the report header
        return "?"


def node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "none"


# ---------------------------------------------------------------------------------------------
# main


def sizes_arg(value: str) -> list[int]:
    sizes = [int(x) for x in value.split(",") if x.strip()]
    if any(n < 2 for n in sizes):
        raise argparse.ArgumentTypeError("group sizes must be at least 2")
    return sizes


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--sizes", type=sizes_arg, default=[3, 10, 20, 30], help="group sizes (default 3,10,20,30)")
    parser.add_argument(
        "--rounds", default="20,15,12,6", help="rounds per size: one figure, or one per size (default 20,15,12,6)"
    )
    parser.add_argument("--quiet-seconds", type=float, default=60.0, help="quiet period per size (default 60)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between agreement and quiet period")
    parser.add_argument("--hold", type=float, default=TARGET_HOLD_SECONDS, help="hold period, 0 to skip (default 300)")
    parser.add_argument("--hold-nodes", type=int, default=TARGET_HOLD_NODES, help="group size of the hold (default 30)")
    parser.add_argument(
        "--npm-sizes", type=sizes_arg, default=[3, 10], help="npm group sizes, '' to skip (default 3,10)"
    )
    parser.add_argument("--npm-rounds", type=int, default=3, help="npm rounds per size, 2 groups each (default 3)")
    parser.add_argument("--output", help="report file (default benchmarks/results/scale-<date>-<time>.txt)")
    args = parser.parse_args()
    rounds_per_size = per_size(args.rounds, args.sizes, "--rounds") if args.sizes else {}
    if not ready_to_run():
        return 2
    now = datetime.datetime.now()
    output = args.output or os.path.join(HERE, "results", f"scale-{now:%Y%m%d-%H%M%S}.txt")
    setup: list[str] = []
    if args.npm_sizes:
        setup.append(f"npm: followtheleader {NPM_VERSION} in {os.path.relpath(NPM_DIR)}, {npm_install()}")
    npm_hosts = sum(args.npm_sizes) * args.npm_rounds * 2
    python_hosts = max([*args.sizes, args.hold_nodes if args.hold else 0, 3])
    rounds: dict[int, Rounds] = {}
    quiet: dict[int, Quiet] = {}
    hold: Hold | None = None
    npm: dict[int, NpmResults] = {}
    problems: list[str] = []
    t0 = time.monotonic()
    with Lab() as lab:
        hosts = [lab.add_host(f"n{i}") for i in range(max(python_hosts, npm_hosts))]
        install_counters(lab)
        setup.append(check_counters(lab, hosts[:3]))
        progress(setup[-1])
        for size in args.sizes:
            progress(f"{size} nodes: {rounds_per_size[size]} rounds")
            rounds[size] = python_rounds(lab, hosts[:size], rounds_per_size[size])
            if args.quiet_seconds > 0:
                progress(f"{size} nodes: quiet period of {args.quiet_seconds:g} s")
                try:
                    q = quiet[size] = quiet_period(lab, hosts[:size], args.quiet_seconds, args.settle)
                except PHASE_ERRORS as exc:
                    problems.append(f"quiet period of {size} nodes FAILED: {exc}")
                    progress(problems[-1])
                    continue
                progress(
                    f"  CPU leader {q.cpu_leader:.2f} %, followers {mean(q.cpu_followers):.2f} %, "
                    f"RSS max {max(q.rss):.1f} MB, mDNS {q.rate('mdns')[0]:.2f} dgram/s, "
                    f"heartbeats {q.rate('heartbeat')[0]:.1f} dgram/s, role changes {q.role_changes}",
                )
        if args.hold > 0:
            progress(f"hold: {args.hold_nodes} nodes for {args.hold:g} s")
            try:
                hold = hold_period(lab, hosts[: args.hold_nodes], args.hold)
                progress(f"  role changes: {len(hold.role_changes)}")
            except PHASE_ERRORS as exc:
                problems.append(f"hold FAILED: {exc}")
                progress(problems[-1])
        if args.npm_sizes:
            progress(
                f"npm: {args.npm_rounds} rounds of 2 groups for sizes {args.npm_sizes}, all at once "
                f"({npm_hosts} hosts; up to 3 minutes)",
            )
            try:
                npm = npm_phase(lab, iter(hosts), args.npm_sizes, args.npm_rounds)
            except PHASE_ERRORS as exc:
                problems.append(f"npm phase FAILED: {exc}")
                progress(problems[-1])
    setup.append(f"total run time {time.monotonic() - t0:.0f} s")
    text = report(args, f"{now:%Y-%m-%d %H:%M}", setup, rounds, quiet, hold, npm, problems)
    print()
    print(text, end="")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as fh:
        fh.write(text)
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
