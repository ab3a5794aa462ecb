"""Groups of elector processes in a :class:`netlab.Lab`, watched through their event streams.

Each node process runs ``tests/node_runner.py`` inside a lab namespace and prints its
events as JSON lines; a reader thread per process collects them. Tests and benchmarks wait
on a condition with a deadline (never a sleep) for the group to agree on a leader.

All processes share one monotonic clock, so event times from different nodes compare
exactly: overlap of two leaders and failover times are measured, not guessed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from netlab import Host, Lab

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_runner.py")
ROLE_KINDS = ("leader", "follower", "reelection")


@dataclass
class Role:
    """The latest role event of one elector."""

    kind: str = "none"
    term: int = 0
    leader: str | None = None
    time: float = 0.0


@dataclass
class Agreement:
    """One leader that every live elector agrees on."""

    leader: str
    term: int
    time: float
    """When the last elector came to agree (its event's monotonic time)."""


class JsonLinesProcess:
    """A process in a lab host that prints one JSON object a line (node runner, npm harness).

    A reader thread appends each object to :attr:`records` under ``changed`` and notifies it;
    :attr:`alive` turns False when its output ends. Stderr is kept in :attr:`stderr`.
    Python processes run with ``PYTHONFAULTHANDLER=1``: :meth:`abort_with_stacks` makes one
    that hangs print the stack of each of its threads there. ``env`` adds to their environment.
    """

    def __init__(
        self, host: Host, argv: list[str], changed: threading.Condition, env: dict[str, str] | None = None
    ) -> None:
        self.host = host
        self.changed = changed
        self.records: list[dict[str, Any]] = []
        self.stderr = ""
        self.alive = True
        self.spawned = time.monotonic()
        environment = {**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})}
        self.proc = host.popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
        )
        self._reader = threading.Thread(target=self._read, name=f"reader-{host.name}", daemon=True)
        self._reader.start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    def take(self, record: dict[str, Any]) -> None:
        """Called on the reader thread with ``changed`` held, before a record is appended."""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self.changed:
                self.take(record)
                self.records.append(record)
                self.changed.notify_all()
        with self.changed:
            self.alive = False
            self.changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line

    def abort_with_stacks(self) -> str:
        """For a process that hangs: SIGABRT, on which faulthandler prints every thread's stack
        to stderr before the process dies (SIGKILL if it does not); returns all of stderr."""
        self.proc.send_signal(signal.SIGABRT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr_reader.join(10)
        return self.stderr

    def send(self, command: str) -> float:
        """Write one command line to the process's stdin; returns the monotonic time just before."""
        assert self.proc.stdin is not None
        t = time.monotonic()
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return t


class NodeProcess(JsonLinesProcess):
    """One node process (one or more electors) in a lab host.

    ``wrapper`` goes before the command (e.g. ``["faketime", "-1d"]``), ``env`` adds to its
    environment. ``package_path`` is a directory holding another copy of the ``followtheleader`` package
    (an older release) for the process to import instead of this checkout's; :attr:`package`
    and :attr:`version` are the package directory and version the process reports it imported.
    """

    def __init__(
        self,
        cluster: Cluster,
        host: Host,
        group: str,
        count: int = 1,
        options: dict[str, Any] | None = None,
        node_ids: list[str] | None = None,
        wait_go: bool = False,
        package_path: str | None = None,
        wrapper: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.node_ids: list[str] = []
        self.package = ""
        self.version = ""
        argv = [sys.executable, RUNNER, group, "--count", str(count), "--options", json.dumps(options or {})]
        if node_ids:
            argv += ["--node-ids", ",".join(node_ids)]
        if wait_go:
            argv.append("--wait-go")
        environment = {"NODE_RUNNER_PACKAGE_PATH": package_path} if package_path else {}
        environment.update(env or {})
        super().__init__(host, [*(wrapper or []), *argv], cluster.changed, environment or None)

    def take(self, record: dict[str, Any]) -> None:
        if record["kind"] == "ready":
            self.node_ids = record["nodes"]
            self.package = record["package"]
            self.version = record["version"]

    def kill(self) -> float:
        """SIGKILL the process; returns the monotonic time just before."""
        t = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        with self.cluster.changed:
            self.alive = False
            self.records.extend({"kind": "killed", "node": node, "t": t} for node in self.node_ids)
            self.cluster.changed.notify_all()
        return t

    def finish(self, timeout: float = 15.0) -> dict[str, Any]:
        """Close stdin (every elector stops) and return the runner's final ``exit`` record."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.proc.wait(timeout)
        self._reader.join(timeout)
        exits = [r for r in self.records if r["kind"] == "exit"]
        return exits[-1] if exits else {}

    def events(self, kinds: Iterable[str] = ROLE_KINDS, index: int | None = None) -> list[dict[str, Any]]:
        """This process's events of ``kinds`` (of one elector, or of all)."""
        with self.cluster.changed:
            return [r for r in self.records if r["kind"] in kinds and (index is None or r.get("i") == index)]


@dataclass
class Cluster:
    """Node processes of one group, spread over lab hosts."""

    lab: Lab
    group: str = field(default_factory=lambda: "grp" + os.urandom(3).hex())
    processes: list[NodeProcess] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    stopped: set[str] = field(default_factory=set)

    def spawn(self, host: Host, **kwargs: Any) -> NodeProcess:
        """Start a node process on ``host`` (see :class:`NodeProcess` for the options)."""
        process = NodeProcess(self, host, self.group, **kwargs)
        self.processes.append(process)
        return process

    def start_together(self, hosts: list[Host], node_ids: list[str] | None = None, **kwargs: Any) -> list[NodeProcess]:
        """One node process per host, all told to start at the same moment (once imported).

        Python start-up times vary by hundreds of milliseconds on a loaded machine; a test
        that expects the best-ranked node to lead starts its nodes this way.
        """
        processes = [
            self.spawn(host, wait_go=True, node_ids=[node_ids[i]] if node_ids else None, **kwargs)
            for i, host in enumerate(hosts)
        ]
        self.wait_ready()
        for process in processes:
            process.send("go")
        return processes

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until every process has created its electors (imports done)."""
        self.wait(lambda: all(p.node_ids for p in self.processes), timeout, "node processes ready")

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait for ``predicate()`` to be truthy (evaluated under the lock); return its value."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; roles: {self.roles_locked()}")
                self.changed.wait(remaining)

    def roles_locked(self) -> dict[str, Role]:
        """The latest role of every live elector (call with ``changed`` held)."""
        roles: dict[str, Role] = {}
        for process in self.processes:
            if not process.alive:
                continue
            for record in process.records:
                node = record.get("node")
                if node is None or node in self.stopped:
                    continue
                if record["kind"] in ("stopped", "stopping"):
                    self.stopped.add(node)
                    roles.pop(node, None)
                    continue
                if record["kind"] == "started":
                    roles.setdefault(node, Role())
                elif record["kind"] in ROLE_KINDS:
                    roles[node] = Role(record["kind"], record["term"], record["leader"], record["t"])
            for node in process.node_ids:
                if node not in self.stopped:
                    roles.setdefault(node, Role())
        return {node: role for node, role in roles.items() if node not in self.stopped}

    def agreement_locked(self) -> Agreement | None:
        """The leader all live electors agree on, or None (call with ``changed`` held).

        None while a live process has not created its electors yet: they are electors of the
        group too, and a process spawned last may start well after the first has led alone.
        """
        if any(p.alive and not p.node_ids for p in self.processes):
            return None
        roles = self.roles_locked()
        if not roles:
            return None
        views = {(r.leader, r.term) for r in roles.values()}
        leaders = [node for node, r in roles.items() if r.kind == "leader"]
        if len(views) != 1 or len(leaders) != 1 or any(r.kind not in ("leader", "follower") for r in roles.values()):
            return None
        leader, term = views.pop()
        if leader != leaders[0]:
            return None
        return Agreement(leader, term, max(r.time for r in roles.values()))

    def wait_agreement(self, timeout: float = 10.0, other_than: str | None = None, after_term: int = 0) -> Agreement:
        """Wait until every live elector agrees on one leader (not ``other_than``, term > ``after_term``)."""

        def agreed() -> Agreement | None:
            found = self.agreement_locked()
            if found and found.leader != other_than and found.term > after_term:
                return found
            return None

        return self.wait(agreed, timeout, "one agreed leader")  # type: ignore[no-any-return]

    def status(self, process: NodeProcess, index: int = 0) -> dict[str, Any]:
        """Ask one elector of a process for its status and wait for the answer."""
        with self.changed:
            before = len([r for r in process.records if r["kind"] == "status"])
        process.send(f"status {index}")
        return self.wait(  # type: ignore[no-any-return]
            lambda: ([r for r in process.records if r["kind"] == "status"][before:] or [None])[0], 10, "status"
        )

    def wait_counter(self, process: NodeProcess, key: str, at_least: int, timeout: float = 20.0) -> dict[str, Any]:
        """Ask a node for its status until its counter ``key`` reaches ``at_least``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.status(process)
            if found["counters"].get(key, 0) >= at_least:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"counter {key} of {process.node_ids} stayed below {at_least}: {found['counters']}"
                )

    def wait_members(self, process: NodeProcess, expected: list[str], timeout: float = 10.0) -> None:
        """Ask a node for its member list until it is ``expected`` (the list follows the leader's)."""
        deadline = time.monotonic() + timeout
        while sorted(found := self.status(process)["members"]) != sorted(expected):
            if time.monotonic() > deadline:
                raise AssertionError(f"members of {process.node_ids}: {found}, expected {expected}")

    def wait_stopped(self, process: NodeProcess, index: int = 0, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for the ``stopped`` record of elector ``index`` (after a ``stop`` command).

        stop() returns once the callback thread has delivered every event, so by then the
        stopped elector's own ``reelection`` is among the records too: a wait for the others
        to agree does not cover it (a stopping elector no longer counts for agreement).
        """
        return self.wait(  # type: ignore[no-any-return]
            lambda: next((r for r in process.records if r["kind"] == "stopped" and r.get("i") == index), None),
            timeout,
            f"stop() of elector {index} of {process.node_ids} to return",
        )

    def wait_quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Wait ``seconds`` for any new role event; return the ones that came (none expected)."""
        with self.changed:
            seen = {id(r) for r in self.all_events_locked()}
        try:
            self.wait(lambda: len(self.all_events_locked()) > len(seen), seconds, "a role event")
        except TimeoutError:
            return []
        with self.changed:
            return sorted((r for r in self.all_events_locked() if id(r) not in seen), key=lambda r: r["t"])

    def all_events_locked(self) -> list[dict[str, Any]]:
        return [r for p in self.processes for r in p.records if r["kind"] in ROLE_KINDS]

    def process_of(self, node_id: str) -> NodeProcess:
        for process in self.processes:
            if node_id in process.node_ids:
                return process
        raise KeyError(node_id)

    def all_events(self) -> list[dict[str, Any]]:
        """Every role event of every process, in time order."""
        with self.changed:
            records = [r for p in self.processes for r in p.records if r["kind"] in (*ROLE_KINDS, "killed")]
        return sorted(records, key=lambda r: r["t"])

    def diagnosis(self, status_timeout: float = 3.0) -> str:
        """What a failed test needs to be understood from its log alone.

        Asks every live elector for its status (counters, members) first, then lists every
        record of every process on the shared clock (seconds since the first process was
        spawned), and the last lines each process wrote to stderr (its warnings).
        """

        def answers(process: NodeProcess) -> int:
            return sum(r["kind"] == "status" for r in process.records)

        with self.changed:
            expected = {p: answers(p) + len(p.node_ids) for p in self.processes if p.alive and p.proc.poll() is None}
        for process in expected:
            for index in range(len(process.node_ids)):
                with contextlib.suppress(OSError, ValueError):
                    process.send(f"status {index}")
        deadline = time.monotonic() + status_timeout
        with self.changed:
            while any(p.alive and answers(p) < n for p, n in expected.items()) and time.monotonic() < deadline:
                self.changed.wait(max(0.0, deadline - time.monotonic()))
            records = sorted((r for p in self.processes for r in p.records), key=lambda r: r.get("t", 0.0))
        origin = min((p.spawned for p in self.processes), default=0.0)
        lines = [f"group {self.group}: {len(self.processes)} process(es); times in s since the first was spawned"]
        for process in self.processes:
            state = "running" if process.proc.poll() is None else f"exit code {process.proc.returncode}"
            lines.append(f"  {process.host.name} ({process.host.address}) {process.node_ids}: {state}")
        lines.append("records:")
        for record in records:
            fields = {k: v for k, v in record.items() if k not in ("t", "threads", "fds") and v is not None}
            lines.append(f"  {record.get('t', origin) - origin:9.4f} {json.dumps(fields, sort_keys=True)}")
        for process in self.processes:
            tail = process.stderr.splitlines()[-40:]
            if tail:
                lines.append(f"stderr of {process.host.name} {process.node_ids} (last {len(tail)} lines):")
                lines.extend(f"  {line}" for line in tail)
        return "\n".join(lines)

    def leader_overlap(self, since: float = 0.0) -> float:
        """Seconds during which two or more electors held the leader role at once.

        Waits first until every elector told to ``stop`` has returned from ``stop()``. Its own
        demotion is printed by its callback thread while ``stop()`` still closes its sockets,
        and may be read after its successor's events: the others agree on the successor
        without it (a stopping elector no longer counts), and without it the stopped leader
        would seem to lead on beside its successor.
        """

        def every_stop_returned() -> bool:
            for process in self.processes:
                kinds = [(r["kind"], r.get("i")) for r in process.records]
                stopping = {i for kind, i in kinds if kind == "stopping"}
                if process.alive and not stopping <= {i for kind, i in kinds if kind == "stopped"}:
                    return False
            return True

        self.wait(every_stop_returned, 15, "every stopped elector's stop() to return")
        return leader_overlap(self.all_events(), since)

    def finish(self) -> list[dict[str, Any]]:
        """Stop every process; return their ``exit`` records."""
        return [p.finish() for p in self.processes]


def leader_overlap(events: list[dict[str, Any]], since: float = 0.0) -> float:
    """Total time two or more nodes held the leader role at once, from their event streams.

    A node leads from its ``leader`` event until its next role event, or until it was killed
    (a ``killed`` record written by :meth:`NodeProcess.kill`).
    """
    leading: dict[str, float] = {}
    overlap = 0.0
    last = since
    for record in sorted(events, key=lambda r: r["t"]):
        t = record["t"]
        if len(leading) >= 2 and t > last:
            overlap += t - max(last, since)
        last = max(last, t)
        if record["kind"] == "leader":
            leading[record["node"]] = t
        else:
            leading.pop(record["node"], None)
    return overlap


def check_pairing(events: list[dict[str, Any]]) -> None:
    """Assert every elector's ``leader`` is followed by a demotion before its next ``leader``."""
    by_node: dict[str, list[str]] = {}
    for record in events:
        by_node.setdefault(record["node"], []).append(record["kind"])
    for node, kinds in by_node.items():
        leading = False
        for kind in kinds:
            if kind == "leader":
                assert not leading, f"{node}: two leader events without a demotion between: {kinds}"
                leading = True
            elif kind in ("reelection", "follower"):
                leading = False
