"""The recipes in ``examples/``, run for real: several copies in lab hosts, one runs the job.

Each test starts copies of an example in lab hosts (network namespaces), waits until they
agree on a leader, checks from their log lines that the leader alone runs the job, stops or
kills the leader, and checks that another copy takes over with a greater term and runs the
job alone. Every example logs followtheleader's role changes (INFO, see docs/operations.rst)
and a ``job: ... (term N)`` line per run of its job, with a job period of 0.2 s here.

The examples open sockets when they start (Flask and Django apps, gunicorn workers), so every
one of them runs inside a lab namespace, never in the test's own. Waits are on output lines,
with deadlines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from netlab import Host, Lab

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
TIMEOUT = 20.0
JOB_PERIOD = "0.2"

ROLE = re.compile(r"node (?P<node>\S+): (?P<kind>leader|follower|reelection) \((?P<reason>[^)]*)\), term (?P<term>\d+)")
STARTED = re.compile(r"elector '[^']+' node (?P<node>\S+) started")
STOPPED = re.compile(r"elector '[^']+' node (?P<node>\S+) stopped")
JOB = re.compile(r"job: .*\(term (?P<term>\d+)\)")
PID = re.compile(r"\[(?P<pid>\d+)\]")
STAMP = re.compile(r"^(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def group_name() -> str:
    return "ex" + os.urandom(3).hex()


def example_env(group: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWTHELEADER_")}
    return {**env, "FTL_GROUP": group, "JOB_PERIOD": JOB_PERIOD, "PYTHONUNBUFFERED": "1", **extra}


# --------------------------------------------------------------------- watching example processes


@dataclass
class Line:
    app: App
    pid: int
    text: str


@dataclass
class Node:
    """One elector, as its log lines show it."""

    node_id: str
    pid: int
    app: App
    kind: str = "none"
    reason: str = ""
    term: int = 0
    stopped: bool = False
    jobs: list[Line] = field(default_factory=list)

    @property
    def job_terms(self) -> list[int]:
        return [int(found["term"]) for line in self.jobs if (found := JOB.search(line.text))]


class Apps:
    """Example processes in lab hosts, their output lines, and what the lines say of the group."""

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self.changed = threading.Condition()
        self.apps: list[App] = []
        self.dead: set[int] = set()

    def start(self, host: Host, argv: list[str], env: dict[str, str]) -> App:
        app = App(self, host, argv, env)
        self.apps.append(app)
        return app

    def wait(self, predicate: Callable[[], T | None], what: str, timeout: float = TIMEOUT) -> T:
        """Wait until ``predicate()`` (called with the lock held) gives something truthy."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = predicate()
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; output:\n{self.dump()}")
                self.changed.wait(remaining)

    def dump(self) -> str:
        with self.changed:
            return "\n".join(f"{line.app.host.name}[{line.pid}]: {line.text}" for line in self.lines[-150:])

    def nodes(self) -> dict[str, Node]:
        """Every elector seen so far, with its latest role and its job lines (call with the lock held)."""
        nodes: dict[str, Node] = {}
        by_pid: dict[int, Node] = {}
        for line in self.lines:
            if started := STARTED.search(line.text):
                by_pid[line.pid] = nodes.setdefault(started["node"], Node(started["node"], line.pid, line.app))
            elif role := ROLE.search(line.text):
                # A greeting may be handled before the "started" line is written.
                node = nodes.setdefault(role["node"], Node(role["node"], line.pid, line.app))
                by_pid.setdefault(line.pid, node)
                node.kind, node.reason, node.term = role["kind"], role["reason"], int(role["term"])
                node.stopped = node.reason == "stopped"
            elif (stopped := STOPPED.search(line.text)) and stopped["node"] in nodes:
                # Stopped while electing: no "reelection (stopped)" event (the reelection was reported).
                nodes[stopped["node"]].stopped = True
            elif JOB.search(line.text):
                by_pid[line.pid].jobs.append(line)
        return nodes

    def live(self) -> list[Node]:
        return [n for n in self.nodes().values() if not n.stopped and n.pid not in self.dead and n.app.running]

    def agreement(self, count: int, after_term: int = 0) -> Node | None:
        """The leader, once ``count`` live electors agree on it with a term > ``after_term``."""
        live = self.live()
        leaders = [n for n in live if n.kind == "leader"]
        if len(live) != count or len(leaders) != 1 or leaders[0].term <= after_term:
            return None
        leader = leaders[0]
        if any(n.kind != "follower" or n.term != leader.term for n in live if n is not leader):
            return None
        return leader

    def wait_agreement(self, count: int, after_term: int = 0) -> Node:
        return self.wait(lambda: self.agreement(count, after_term), f"{count} electors to agree on a leader")

    def wait_jobs(self, node_id: str, count: int, term: int) -> Node:
        """Wait until ``node_id`` has run the job ``count`` times in ``term``."""

        def done() -> Node | None:
            node = self.nodes()[node_id]
            return node if node.job_terms.count(term) >= count else None

        return self.wait(done, f"{count} jobs of {node_id} in term {term}")

    def finish(self) -> None:
        """Kill what is still running (whole process groups: gunicorn's workers too)."""
        for app in self.apps:
            if app.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(app.popen.pid, signal.SIGKILL)
                app.popen.wait(10)


class App:
    """One example process in a lab host, in a session of its own; stdout and stderr are read."""

    def __init__(self, apps: Apps, host: Host, argv: list[str], env: dict[str, str]) -> None:
        self.apps = apps
        self.host = host
        self.popen = host.popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=str(ROOT),
            start_new_session=True,
        )
        self.running = True
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for text in self.popen.stdout:
            found = PID.search(text)
            pid = int(found["pid"]) if found else self.popen.pid
            with self.apps.changed:
                self.apps.lines.append(Line(self, pid, text.rstrip("\n")))
                self.apps.changed.notify_all()
        self.popen.wait()
        with self.apps.changed:
            self.running = False
            self.apps.changed.notify_all()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig``; return the exit status."""
        self.popen.send_signal(sig)
        try:
            code = self.popen.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.host.name} did not exit; output:\n{self.apps.dump()}") from None
        self._reader.join(TIMEOUT)
        return code


@pytest.fixture
def apps() -> Iterator[Apps]:
    made = Apps()
    yield made
    made.finish()


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f")


def ran_in_order(apps: Apps, earlier: Line, later: Line) -> bool:
    """``earlier`` was logged no later than ``later``: by their time stamps (to the millisecond;
    the hosts share one clock) when both have one, else by the order they were read in."""
    first, second = (STAMP.search(line.text) for line in (earlier, later))
    if first and second:
        return parse_stamp(first["stamp"]) <= parse_stamp(second["stamp"])
    with apps.changed:
        return apps.lines.index(earlier) < apps.lines.index(later)


def leader_runs_the_job_alone(apps: Apps, count: int, after_term: int = 0) -> Node:
    """Wait for ``count`` agreeing electors and three jobs of the leader; nobody else ran one since."""
    leader = apps.wait_agreement(count, after_term)
    apps.wait_jobs(leader.node_id, 3, leader.term)
    with apps.changed:
        nodes = apps.nodes()
    others = {n.node_id: n.job_terms for n in nodes.values() if n.node_id != leader.node_id}
    assert all(term <= after_term for terms in others.values() for term in terms), others
    return nodes[leader.node_id]


def check_takeover(apps: Apps, old: Node, new: Node, handed_over: bool) -> None:
    """The new leader has a greater term and ran no job before the old one's last; the old
    one's followers saw it resign (handover) or go silent (failover)."""
    assert new.term > old.term and new.node_id != old.node_id and new.reason == "claimed leadership"
    with apps.changed:
        nodes = apps.nodes()
        reasons = [
            role["reason"]
            for line in apps.lines
            if (role := ROLE.search(line.text))
            and role["kind"] == "reelection"
            and role["node"] != old.node_id
            and int(role["term"]) == old.term
        ]
    if handed_over:
        assert reasons and set(reasons) <= {"leader resigned", "leader said goodbye"}, reasons
    else:  # a follower may also switch to a claimant straight away, without a reelection
        assert set(reasons) <= {"leader unreachable"}, reasons
    assert set(nodes[old.node_id].job_terms) == {old.term}
    assert ran_in_order(apps, nodes[old.node_id].jobs[-1], nodes[new.node_id].jobs[0])


def check_stopped_cleanly(apps: Apps, app: App, node: Node) -> None:
    """A copy stopped with SIGTERM handed over: exit 0, and no job after its elector stopped."""
    assert app.stop() == 0
    with apps.changed:
        mine = [line.text for line in apps.lines if line.app is app and line.pid == node.pid]
    stopped = next(i for i, text in enumerate(mine) if f"node {node.node_id}: reelection (stopped)" in text)
    assert not [text for text in mine[stopped:] if JOB.search(text)], mine[stopped:]


def run_one_per_host(
    apps: Apps, hosts: list[Host], argv: list[str], env: dict[str, str], stop: int = signal.SIGTERM
) -> None:
    """The common scenario: the first copy leads, the others follow; stop the leader; another leads."""
    first = apps.start(hosts[0], argv, env)
    apps.wait_agreement(1)
    others = [apps.start(host, argv, env) for host in hosts[1:]]
    leader = leader_runs_the_job_alone(apps, len(hosts))
    assert leader.app is first  # leadership is sticky: the first copy keeps it

    if stop == signal.SIGTERM:
        check_stopped_cleanly(apps, first, leader)
    else:
        first.stop(stop)
        apps.dead.add(leader.pid)
    successor = leader_runs_the_job_alone(apps, len(hosts) - 1, after_term=leader.term)
    check_takeover(apps, leader, successor, handed_over=stop == signal.SIGTERM)
    with apps.changed:
        nodes = {node.app: node for node in apps.live()}
    for index, app in enumerate(others):
        # The remaining copies agree first: one just handed over to is electing for a moment,
        # and an elector stopped while electing logs no "reelection (stopped)".
        apps.wait_agreement(len(others) - index)
        check_stopped_cleanly(apps, app, nodes[app])


def http_get(host: Host, url: str) -> Any:
    """GET ``url`` from inside ``host``'s namespace; the decoded JSON body."""
    code = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    return json.loads(host.run([sys.executable, "-c", code, url]).stdout)


# --------------------------------------------------------------------- the recipes


@pytest.mark.lab
def test_flask_app_runs_its_job_on_the_leader_only(lab: Lab, apps: Apps) -> None:
    pytest.importorskip("flask")
    hosts = [lab.hosts[f"n{i}"] for i in range(3)]
    env = example_env(group_name(), PORT="5000")
    argv = [sys.executable, str(EXAMPLES / "flask_app.py")]
    first = apps.start(hosts[0], argv, env)
    apps.wait_agreement(1)
    for host in hosts[1:]:
        apps.start(host, argv, env)
    leader = leader_runs_the_job_alone(apps, 3)
    assert leader.app is first

    apps.wait(lambda: len({line.app for line in apps.lines if "Running on http://" in line.text}) == 3, "servers")
    views = [http_get(host, "http://127.0.0.1:5000/leader") for host in hosts]
    assert [view["is_leader"] for view in views] == [True, False, False], views
    assert {(view["leader"], view["term"]) for view in views} == {(leader.node_id, leader.term)}

    check_stopped_cleanly(apps, first, leader)
    successor = leader_runs_the_job_alone(apps, 2, after_term=leader.term)
    check_takeover(apps, leader, successor, handed_over=True)
    assert http_get(successor.app.host, "http://127.0.0.1:5000/leader")["is_leader"] is True
    for app in apps.apps[1:]:
        assert app.stop() == 0


@pytest.mark.lab
def test_django_management_command_runs_the_jobs_on_the_leader_only(lab: Lab, apps: Apps) -> None:
    pytest.importorskip("django")
    argv = [sys.executable, str(EXAMPLES / "django_project" / "manage.py"), "run_leader_jobs", "--period", JOB_PERIOD]
    run_one_per_host(apps, [lab.hosts[f"n{i}"] for i in range(3, 6)], argv, example_env(group_name()))


@pytest.mark.lab
def test_django_setup_alone_starts_no_elector(lab: Lab) -> None:
    pytest.importorskip("django")
    # manage.py check loads the settings and every app (AppConfig.ready included).
    manage = str(EXAMPLES / "django_project" / "manage.py")
    result = lab.hosts["n6"].run([sys.executable, manage, "check"], check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    assert "followtheleader" not in result.stdout + result.stderr


@pytest.mark.lab
def test_apscheduler_jobs_run_on_the_leader_only(lab: Lab, apps: Apps) -> None:
    pytest.importorskip("apscheduler")
    argv = [sys.executable, str(EXAMPLES / "apscheduler_jobs.py")]
    run_one_per_host(apps, [lab.hosts[f"n{i}"] for i in range(2)], argv, example_env(group_name()))


@pytest.mark.lab
def test_worker_script_fails_over_when_the_leader_is_killed(lab: Lab, apps: Apps) -> None:
    argv = [sys.executable, str(EXAMPLES / "worker.py")]
    hosts = [lab.hosts[f"n{i}"] for i in range(3)]
    run_one_per_host(apps, hosts, argv, example_env(group_name()), stop=signal.SIGKILL)


def gunicorn(host: Host, apps: Apps, tmp_path: Path, group: str, workers: int, **extra: str) -> App:
    pytest.importorskip("gunicorn")
    runtime = tmp_path / host.name  # gunicorn's control socket, one per "host" (they share a file system)
    runtime.mkdir()
    env = example_env(group, WORKERS=str(workers), BIND="0.0.0.0:8000", XDG_RUNTIME_DIR=str(runtime), **extra)
    return apps.start(host, [str(BIN / "gunicorn"), "-c", str(EXAMPLES / "gunicorn.conf.py")], env)


def booted(apps: Apps, count: int) -> bool:
    return sum("Booting worker with pid" in line.text for line in apps.lines) >= count


@pytest.mark.lab
def test_gunicorn_workers_are_nodes_and_one_worker_runs_the_job(lab: Lab, apps: Apps, tmp_path: Path) -> None:
    group = group_name()
    first = gunicorn(lab.hosts["n0"], apps, tmp_path, group, workers=2)
    second_host = lab.hosts["n1"]
    apps.wait_agreement(2)  # the first host's two workers
    gunicorn(second_host, apps, tmp_path, group, workers=2)
    leader = leader_runs_the_job_alone(apps, 4)
    assert leader.app is first
    view = http_get(second_host, "http://127.0.0.1:8000/")
    assert view["leader"] == leader.node_id and view["term"] == leader.term and view["is_leader"] is False

    # SIGTERM to the leading worker: it hands over as it exits; gunicorn starts a new worker.
    os.kill(leader.pid, signal.SIGTERM)
    apps.dead.add(leader.pid)
    successor = leader_runs_the_job_alone(apps, 4, after_term=leader.term)
    check_takeover(apps, leader, successor, handed_over=True)
    with apps.changed:
        assert apps.nodes()[leader.node_id].stopped, "the worker did not stop its elector as it exited"

    for app in apps.apps:
        assert app.stop() == 0
    with apps.changed:
        running = [node.node_id for node in apps.nodes().values() if not node.stopped and node.pid not in apps.dead]
    assert not running, f"electors not stopped: {running}; output:\n{apps.dump()}"


@pytest.mark.lab
def test_gunicorn_one_node_per_host_with_a_lock_file(lab: Lab, apps: Apps, tmp_path: Path) -> None:
    group = group_name()
    first = gunicorn(lab.hosts["n2"], apps, tmp_path, group, workers=3, FTL_HOST_LOCK=str(tmp_path / "n2.lock"))
    apps.wait_agreement(1)
    gunicorn(lab.hosts["n3"], apps, tmp_path, group, workers=3, FTL_HOST_LOCK=str(tmp_path / "n3.lock"))
    apps.wait(lambda: booted(apps, 6), "six workers")
    leader = leader_runs_the_job_alone(apps, 2)
    assert leader.app is first
    with apps.changed:
        assert len(apps.nodes()) == 2, "more than one node per host"

    # SIGKILL the leading worker: no handover, but the kernel frees its lock, so another worker of
    # its host joins; one of the two nodes takes over after the failure window.
    os.kill(leader.pid, signal.SIGKILL)
    apps.dead.add(leader.pid)
    successor = leader_runs_the_job_alone(apps, 2, after_term=leader.term)
    check_takeover(apps, leader, successor, handed_over=False)
    with apps.changed:
        nodes = apps.nodes()
    assert len(nodes) == 3
    (replacement,) = [n for n in nodes.values() if n.app is first and n.node_id != leader.node_id]
    assert replacement.pid != leader.pid

    for app in apps.apps:
        assert app.stop() == 0


# --------------------------------------------------------------------- systemd


UNIT = EXAMPLES / "systemd" / "reports.service"
UNIT_KEYS = {
    "Unit": {"Description", "Wants", "After"},
    "Service": {
        "Type",
        "User",
        "Group",
        "Environment",
        "ExecStart",
        "KillMode",
        "TimeoutStopSec",
        "Restart",
        "RestartSec",
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
    },
    "Install": {"WantedBy"},
}


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` for every assignment of a unit file, in order."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, equals, value = line.partition("=")
        assert equals and section and not raw.endswith("\\"), f"line {number}: {raw!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def installed_unit(tmp_path: Path) -> Path:
    """The unit with its /opt/reports paths pointing at this checkout and this virtual environment."""
    text = UNIT.read_text().replace("/opt/reports/venv/bin/", f"{BIN}/").replace("/opt/reports/", f"{UNIT.parent}/")
    path = tmp_path / "reports.service"
    path.write_text(text)
    return path


def unit_command(path: Path, group: str) -> tuple[list[str], dict[str, str]]:
    """ExecStart (with the group renamed) and the Environment= settings of the unit."""
    entries = unit_entries(path.read_text())
    (exec_start,) = [value for section, key, value in entries if (section, key) == ("Service", "ExecStart")]
    assert "%" not in exec_start and "$" not in exec_start, "specifiers would need systemd's expansion"
    argv = shlex.split(exec_start)
    argv[argv.index("run") + 1] = group
    env = dict(v.split("=", 1) for section, key, value in entries if key == "Environment" for v in shlex.split(value))
    return argv, env


def test_systemd_unit_is_valid_and_its_command_line_parses(tmp_path: Path) -> None:
    entries = unit_entries(UNIT.read_text())
    for section, key, _ in entries:
        assert key in UNIT_KEYS.get(section, set()), f"[{section}] {key} is not a key this test knows"
    settings = {(section, key): value for section, key, value in entries}
    assert settings[("Service", "KillMode")] == "mixed"
    path = installed_unit(tmp_path)
    argv, env = unit_command(path, "reports")
    assert env["PYTHONUNBUFFERED"] == "1"

    # The command line as the CLI's own parser reads it (no socket is opened by parsing).
    from followtheleader._cli.main import _parser

    assert Path(argv[0]).name == "followtheleader" and "--" in argv
    split = argv.index("--")
    args = _parser().parse_args(argv[1:split])
    command = argv[split + 1 :]
    assert args.command == "run" and args.name == "reports" and args.log_level == "INFO"
    assert args.grace < float(settings[("Service", "TimeoutStopSec")]), "systemd would SIGKILL during --grace"
    assert all(Path(word).exists() for word in (argv[0], *command[:2])), argv

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit was checked by this test's parser only")
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False)
    ours = [line for line in result.stderr.splitlines() if path.name in line]
    assert result.returncode == 0 and not ours, result.stderr


@pytest.mark.lab
def test_systemd_unit_command_runs_the_job_on_the_leader_only(lab: Lab, apps: Apps, tmp_path: Path) -> None:
    argv, unit_env = unit_command(installed_unit(tmp_path), group_name())
    env = {**example_env("unused"), **unit_env, "JOB_PERIOD": JOB_PERIOD}
    hosts = [lab.hosts[f"n{i}"] for i in (7, 8)]
    first = apps.start(hosts[0], argv, env)
    apps.wait_agreement(1)
    second = apps.start(hosts[1], argv, env)
    leader = leader_runs_the_job_alone(apps, 2)
    assert leader.app is first

    # systemctl stop (KillMode=mixed): SIGTERM to `followtheleader run` alone.
    assert first.stop() == 0
    with apps.changed:
        lines = [line.text for line in apps.lines if line.app is first]
    stopped = next(i for i, text in enumerate(lines) if "reelection (stopped)" in text)
    assert any("exited with status 0" in text for text in lines[:stopped]), lines  # the job stopped first
    successor = leader_runs_the_job_alone(apps, 1, after_term=leader.term)
    check_takeover(apps, leader, successor, handed_over=True)
    assert successor.app is second
    assert second.stop() == 0


# --------------------------------------------------------------------- code health


def test_examples_pass_ruff() -> None:
    pytest.importorskip("ruff")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "examples"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
