"""The command line, run as subprocesses: ``elect``, ``status`` and ``run``.

Everything that opens a socket runs inside lab namespaces; only ``--help`` and argument
errors (which fail before any socket exists) run in the test's own namespace. Tests wait for
output lines with deadlines, never with sleeps. All processes share one monotonic clock and
one file system, so the ``run`` tests log every start and stop of CMD, with times, to one file.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from followtheleader import FencingToken
from followtheleader._cli.console import Console
from followtheleader._cli.status import format_table, to_json
from followtheleader._coordinators.base import GroupInfo
from followtheleader._coordinators.survey import group_view
from followtheleader._core.lease import Leadership, View
from followtheleader._core.model import Event, Member, State

from netlab import Host, Lab

T = TypeVar("T")

TIMEOUT = 15.0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "followtheleader", *args]


def unique_group() -> str:
    return "cli" + os.urandom(3).hex()


# --------------------------------------------------------------------- helpers


@dataclass
class Line:
    """One output line of a watched process: JSON when it parses, else ``text``."""

    proc: Proc
    stream: str
    text: str
    record: dict[str, Any] = field(default_factory=dict)


class Watch:
    """Output lines of several processes, collected by reader threads, waited for with deadlines."""

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self.changed = threading.Condition()
        self.procs: list[Proc] = []

    def spawn(self, host: Host, args: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(self, host, args, name, env)
        self.procs.append(proc)
        return proc

    def wait(self, predicate: Callable[[list[Line]], T | None], what: str, timeout: float = TIMEOUT) -> T:
        """Wait until ``predicate(lines)`` gives something truthy; return it."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = predicate(self.lines)
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; output:\n{self.dump()}")
                self.changed.wait(remaining)

    def dump(self) -> str:
        """Every line so far, for failure messages."""
        with self.changed:
            return "\n".join(f"{line.proc.name}/{line.stream}: {line.text}" for line in self.lines)

    def first(self, match: Callable[[Line], bool], what: str, timeout: float = TIMEOUT) -> Line:
        """The first line (so far or to come) that ``match`` accepts."""
        return self.wait(lambda lines: next((line for line in lines if match(line)), None), what, timeout)

    def records(self, proc: Proc | None = None, **fields: Any) -> list[dict[str, Any]]:
        """The JSON records so far (of ``proc``) whose fields have the given values."""
        with self.changed:
            return [
                line.record
                for line in self.lines
                if line.record
                and (proc is None or line.proc is proc)
                and all(line.record.get(k) == v for k, v in fields.items())
            ]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(10)


class Proc:
    """A command-line process in a lab host; both its streams are read line by line."""

    def __init__(self, watch: Watch, host: Host, args: list[str], name: str, env: dict[str, str] | None) -> None:
        self.watch = watch
        self.name = name
        env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
        self.popen = host.popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True) for stream in ("stdout", "stderr")
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: str) -> None:
        for text in getattr(self.popen, stream):
            text = text.rstrip("\n")
            try:
                record = json.loads(text)
            except ValueError:
                record = {}
            with self.watch.changed:
                self.watch.lines.append(Line(self, stream, text, record if isinstance(record, dict) else {}))
                self.watch.changed.notify_all()

    def record(self, what: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        """Wait for this process's first JSON record with the given field values."""

        def match(line: Line) -> bool:
            return line.proc is self and bool(line.record) and all(line.record.get(k) == v for k, v in fields.items())

        return self.watch.first(match, f"{self.name}: {what}", timeout).record

    def exit_code(self, timeout: float = TIMEOUT) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            self.popen.wait(timeout)
            for reader in self._readers:
                reader.join(timeout)
            raise AssertionError(f"{self.name} did not exit within {timeout}s; output:\n{self.watch.dump()}") from None
        for reader in self._readers:
            reader.join(timeout)
        return code


def wait_pid_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` has exited (zombies count as exited), False at the deadline."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


CMD_SCRIPT = textwrap.dedent(
    """
    # A stand-in for the singleton work. Writes "start", "check" and "stop" lines (with the
    # shared monotonic time) to the log given as argv[1] and to stdout. "check" lists the
    # pids of every other CMD started so far that is still alive: it must be empty.
    import os, signal, subprocess, sys, time

    log, mode = sys.argv[1], sys.argv[2]
    node = os.environ["FOLLOWTHELEADER_NODE_ID"]

    def write(*words):
        line = " ".join(str(w) for w in words)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (line + "\\n").encode())
        os.close(fd)
        print(line, flush=True)

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                data = stat.read()
        except OSError:
            return False
        return data[data.rindex(")") + 2] not in "ZX"

    def on_term(signum, frame):
        write("term" if mode == "ignore" else "stop", node, os.getpid(), f"{time.monotonic():.6f}")
        if mode != "ignore":
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    env = os.environ
    term, name = env["FOLLOWTHELEADER_TERM"], env["FOLLOWTHELEADER_NAME"]
    secret = "secret" if "FOLLOWTHELEADER_SECRET" in env else "no-secret"
    token = env["FOLLOWTHELEADER_FENCING_TOKEN"]
    write("start", node, os.getpid(), f"{time.monotonic():.6f}", term, name, secret, token)
    with open(log) as previous:
        pids = [int(line.split()[2]) for line in previous if line.startswith("start ")]
    others = [pid for pid in pids if pid != os.getpid() and alive(pid)]
    write("check", node, os.getpid(), ",".join(map(str, others)) or "-")
    if mode.startswith("exit"):
        sys.exit(int(mode[4:]))
    if mode == "ignore":
        child = subprocess.Popen(["sleep", "600"])
        write("child", node, child.pid)
    while True:
        signal.pause()
    """
)


@pytest.fixture
def cmd(tmp_path: Path) -> Callable[[str], list[str]]:
    """``cmd(mode)``: the argv of CMD; modes ``wait``, ``ignore`` (SIGTERM), ``exitN``."""
    script = tmp_path / "cmd.py"
    script.write_text(CMD_SCRIPT)
    return lambda mode: [sys.executable, str(script), str(tmp_path / "cmd.log"), mode]


@pytest.fixture
def watch() -> Any:
    made = Watch()
    yield made
    made.stop_all()


def cmd_lines(watch: Watch, kind: str) -> list[list[str]]:
    """The ``kind`` lines CMD wrote so far (split into words), from every process's stdout."""
    with watch.changed:
        return [line.text.split() for line in watch.lines if line.stream == "stdout" and line.text.startswith(kind)]


def run_args(group: str, node_id: str, command: list[str], *options: str) -> list[str]:
    return ["run", group, "--node-id", node_id, "--interval", "0.1", "--json", *options, "--", *command]


# --------------------------------------------------------------------- help and argument errors (no sockets)


@pytest.mark.parametrize("args", [[], ["elect"], ["status"], ["run"]])
def test_help_of_every_command_has_examples(args: list[str]) -> None:
    result = subprocess.run(cli(*args, "--help"), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "usage: followtheleader" in result.stdout and "examples:" in result.stdout
    assert "followtheleader " + (args[0] if args else "elect") in result.stdout.split("examples:")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "a command is required"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["elect"], "the following arguments are required: NAME"),
        (["elect", "x", "--interval", "0"], "option 'interval' must be from 0.01 to 60 seconds"),
        (["elect", "x", "--port", "many"], "argument --port: invalid int value"),
        (["status", "--timeout", "0"], "argument --timeout: must be a number of seconds greater than 0"),
        (["status", "--type", "no_underscores"], "option 'type' must be a DNS-SD service label"),
        (["status", "x", "y"], "unrecognized arguments: y"),
        (["run", "x"], "give the command to run after '--'"),
        (["run", "x", "sleep", "1"], "unrecognized arguments: sleep 1 (CMD goes after '--')"),
        (["run", "x", "--"], "give the command to run after '--'"),
        (["run", "x", "--on-exit", "never", "--", "true"], "argument --on-exit: invalid choice: 'never'"),
        (["run", "x", "--grace", "-1", "--", "true"], "argument --grace: must be a number of seconds 0 or more"),
        (["run", "x", "--", "/nonexistent/command"], "command not found or not executable"),
        (["run", "x", "--priority", "high", "--", "true"], "argument --priority: invalid int value"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_error(args: list[str], message: str) -> None:
    result = subprocess.run(cli(*args), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr and "error:" in result.stderr


# --------------------------------------------------------------------- elect


def test_console_holds_event_lines_back_until_released() -> None:
    """``elect`` prints "joined group" once start() returned; an event of the start comes after it."""
    out = io.StringIO()
    console = Console(out, "a-node", json_lines=False, hold_events=True)
    leader = Member("z-node", 0, "198.18.0.1", 9001)
    found = Event("follower", "a-node", State.FOLLOWER, State.ELECTING, 1, leader, "found the leader", 0.0)
    console.event(found)
    assert out.getvalue() == ""
    console.release("joined group 'g' as node a-node (heartbeat port 9001)")
    console.event(Event("reelection", "a-node", State.ELECTING, State.FOLLOWER, 1, None, "leader resigned", 1.0))
    console.release()  # a second call writes nothing more
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["group", "follower", "reelection"], lines
    assert lines[0].startswith("joined group") and "leader z-node at 198.18.0.1:9001" in lines[1]


def test_a_leader_known_by_its_id_only_is_printed_without_an_address() -> None:
    """With a coordinator, the leader has no heartbeat address: no bogus ``at :0``."""
    out = io.StringIO()
    console = Console(out, "a-node", json_lines=False)
    token = FencingToken(7, 5, "z-node", 0)
    leader = Member("z-node", 5)
    console.event(
        Event("follower", "a-node", State.FOLLOWER, State.ELECTING, 7, leader, "following z-node", 0.0, None, token)
    )
    [line] = out.getvalue().splitlines()
    assert line.endswith(" token 7/5/z-node/000000 leader z-node (following z-node)"), line


def test_status_has_one_table_and_one_json_form_for_every_mode() -> None:
    """A coordinator's group is shown with the LAN's columns; what it cannot know is ``-``/null."""
    held = group_view(
        GroupInfo("jobs", View(Leadership(Member("web-2", 3), 42, False), (Member("web-2", 3), Member("web-1"))))
    )
    vacant = group_view(GroupInfo("idle", View(None, (Member("web-1"),))))
    rows = [row.split() for row in format_table([held, vacant], "etcd://e1:2379").splitlines()]
    assert rows == [
        ["GROUP", "LEADER", "TERM", "TOKEN", "MEMBERS"],
        ["jobs", "web-2", "42", "42/3/web-2/000000", "web-2", "leader,", "web-1", "follower"],
        ["idle", "none", "-", "-", "web-1", "electing"],
    ]
    report = to_json([held, vacant], "coordinator", "etcd://e1:2379")
    assert report["coordinator"] == "etcd://e1:2379"
    jobs, idle = report["groups"]
    assert set(jobs) == {
        "group",
        "leader",
        "term",
        "fencing_token",
        "confirmed",
        "authenticated",
        "unanswered",
        "members",
    }
    assert jobs["leader"] == {
        "node_id": "web-2",
        "priority": 3,
        "host": None,
        "port": None,
        "role": "leader",
        "term": 42,
        "live": True,
    }
    assert jobs["fencing_token"] == FencingToken(42, 3, "web-2", 0).key and jobs["confirmed"] is True
    assert (idle["leader"], idle["term"], idle["fencing_token"]) == (None, None, None)
    assert idle["members"] == [
        {"node_id": "web-1", "priority": 0, "host": None, "port": None, "role": "electing", "term": None, "live": True}
    ]


@pytest.mark.lab
def test_elect_prints_events_and_hands_over_on_sigterm(lab: Lab) -> None:
    group = unique_group()
    leader = lab.hosts["n0"].popen(
        cli("elect", group, "--node-id", "z-cli", "--json"), stdout=subprocess.PIPE, text=True
    )
    follower = None
    try:
        first = json.loads(leader.stdout.readline())
        assert first["event"] == "leader" and first["term"] == 1 and first["node_id"] == "z-cli"
        # Only now: started at once, a-cli could claim before z-cli's process is up. It may
        # find z-cli while it starts; "joined group" comes first all the same.
        follower = lab.hosts["n1"].popen(cli("elect", group, "--node-id", "a-cli"), stdout=subprocess.PIPE, text=True)
        token = FencingToken.from_key(first["fencing_token"])
        assert (token.term, token.priority, token.node_id) == (1, 0, "z-cli") and token.boot > 0
        assert follower.stdout.readline().startswith("joined group")
        line = follower.stdout.readline()
        assert " follower " in line and "leader z-cli at 198.18." in line, line
        assert f" term 1    token 1/0/z-cli/{token.boot & 0xFFFFFF:06x} " in line, line
        leader.send_signal(signal.SIGTERM)
        assert leader.wait(10) == 0
        last = json.loads(leader.stdout.readline())
        assert last["event"] == "reelection" and last["state"] == "stopped"
        assert last["fencing_token"] == first["fencing_token"]  # the last leadership it held
        assert " reelection " in follower.stdout.readline()
        promoted = follower.stdout.readline()
        assert " leader " in promoted and "term 2    token 2/0/a-cli/" in promoted, promoted
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        for proc in (leader, follower):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.lab
def test_elect_with_a_secret_file_ignores_nodes_without_the_secret(lab: Lab, tmp_path: Path) -> None:
    group = unique_group()
    secret = tmp_path / "secret"
    secret.write_text("s3cret-for-the-test\n")
    secured = [
        lab.hosts[f"n{i}"].popen(
            cli("elect", group, "--node-id", f"s-{i}", "--secret-file", str(secret), "--json"),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in (2, 3)
    ]
    rogue = lab.hosts["n4"].popen(
        cli("elect", group, "--node-id", "zz-rogue", "--priority", "1000", "--json"), stdout=subprocess.PIPE, text=True
    )
    try:
        events = [json.loads(proc.stdout.readline()) for proc in (*secured, rogue)]
        assert {e["event"] for e in events[:2]} == {"leader", "follower"}
        assert all(e["leader"]["node_id"] in ("s-2", "s-3") for e in events[:2])
        assert events[2]["event"] == "leader" and events[2]["node_id"] == "zz-rogue"  # alone, outside the group
    finally:
        for proc in (*secured, rogue):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# --------------------------------------------------------------------- status


@pytest.mark.lab
def test_status_lists_groups_leaders_and_members(lab: Lab, watch: Watch) -> None:
    group, other = unique_group(), unique_group()
    leader = watch.spawn(lab.hosts["n0"], ["elect", group, "--node-id", "c-stat", "--json"], "c-stat")
    key = leader.record("to lead", event="leader")["fencing_token"]
    for index, node_id in [(1, "b-stat"), (2, "a-stat")]:
        watch.spawn(lab.hosts[f"n{index}"], ["elect", group, "--node-id", node_id, "--json"], node_id)
        watch.procs[-1].record("to follow", event="follower")
    lonely_key = watch.spawn(lab.hosts["n3"], ["elect", other, "--node-id", "lonely", "--json"], "lonely").record(
        "to lead", event="leader"
    )["fencing_token"]

    observer = lab.hosts["n5"]
    result = observer.run(cli("status", group, "--json"), check=False)
    assert result.returncode == 0, result.stdout + result.stderr + watch.dump()
    report = json.loads(result.stdout)
    assert report["service_type"] == "_ftl._udp.local."
    (view,) = report["groups"]
    assert view["group"] == group and view["confirmed"] is True and view["term"] == 1, result.stdout + watch.dump()
    assert view["leader"]["node_id"] == "c-stat" and view["leader"]["host"] == lab.hosts["n0"].address
    assert view["fencing_token"] == key  # from the leader's pong: its term, priority, id and boot
    members = {m["node_id"]: m for m in view["members"]}
    assert sorted(members) == ["a-stat", "b-stat", "c-stat"]
    for index, node_id in enumerate(["c-stat", "b-stat", "a-stat"]):
        assert members[node_id]["host"] == lab.hosts[f"n{index}"].address
        assert members[node_id]["port"] == 9001 and members[node_id]["live"] is True
        assert members[node_id]["role"] == ("leader" if node_id == "c-stat" else "follower")
    assert view["members"][0]["node_id"] == "c-stat"

    table = observer.run(cli("status"), check=False)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].split() == ["GROUP", "LEADER", "TERM", "TOKEN", "MEMBERS"]
    ours = next(row for row in rows if row.startswith(group + " "))
    n0, n1 = lab.hosts["n0"].address, lab.hosts["n1"].address
    short = f"1/0/c-stat/{FencingToken.from_key(key).boot & 0xFFFFFF:06x}"
    assert f"c-stat@{n0}:9001" in ours and f"b-stat@{n1}:9001 follower" in ours and " 1 " in ours, ours
    assert ours.split()[3] == short, ours
    assert any(row.startswith(other + " ") and "lonely@" in row for row in rows), table.stdout

    unchecked = observer.run(cli("status", other, "--no-ping"), check=False)
    assert unchecked.returncode == 0 and "(not checked)" in unchecked.stdout, unchecked.stdout
    from_record = json.loads(observer.run(cli("status", other, "--no-ping", "--json"), check=False).stdout)
    assert from_record["groups"][0]["fencing_token"] == lonely_key  # from the leader's TXT record

    # The probe neither disturbed the group nor stays in its member list.
    again = json.loads(observer.run(cli("status", group, "--json"), check=False).stdout)["groups"][0]
    assert sorted(m["node_id"] for m in again["members"]) == ["a-stat", "b-stat", "c-stat"]
    assert again["term"] == 1
    assert [r["event"] for r in watch.records(watch.procs[1])] == ["follower"]


@pytest.mark.lab
def test_status_of_a_group_without_leader_exits_1(lab: Lab) -> None:
    group = unique_group()
    result = lab.hosts["n5"].run(cli("status", group, "--timeout", "0.5"), check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines()[1].split() == [group, "none", "-", "-", "-"]
    result = lab.hosts["n5"].run(cli("status", group, "--timeout", "0.5", "--json"), check=False)
    assert result.returncode == 1
    assert json.loads(result.stdout)["groups"] == [
        {
            "group": group,
            "leader": None,
            "term": None,
            "fencing_token": None,
            "confirmed": False,
            "authenticated": False,
            "unanswered": [],
            "members": [],
        }
    ]


@pytest.mark.lab
def test_status_after_the_leader_stopped_names_the_new_leader(lab: Lab, watch: Watch) -> None:
    group = unique_group()
    first = watch.spawn(lab.hosts["n0"], ["elect", group, "--node-id", "z-gone", "--json"], "z-gone")
    first.record("to lead", event="leader")
    # Only now: started at once, a-next could claim before z-gone's process is up.
    second = watch.spawn(lab.hosts["n1"], ["elect", group, "--node-id", "a-next", "--json"], "a-next")
    second.record("to follow", event="follower")
    first.popen.send_signal(signal.SIGTERM)
    assert first.exit_code() == 0
    key = second.record("to lead", event="leader", term=2)["fencing_token"]
    result = lab.hosts["n5"].run(cli("status", group, "--json"), check=False)
    assert result.returncode == 0, result.stdout
    view = json.loads(result.stdout)["groups"][0]
    assert view["leader"]["node_id"] == "a-next" and view["term"] == 2 and view["fencing_token"] == key
    assert [m["node_id"] for m in view["members"]] == ["a-next"]


@pytest.mark.lab
def test_status_lists_an_authenticated_group_without_probing_it(lab: Lab, watch: Watch) -> None:
    group = unique_group()
    env = {**os.environ, "FOLLOWTHELEADER_SECRET": "correct horse battery staple"}
    leader = watch.spawn(lab.hosts["n0"], ["elect", group, "--node-id", "signed", "--json"], "signed", env)
    key = leader.record("to lead", event="leader")["fencing_token"]
    result = lab.hosts["n5"].run(cli("status", group, "--json"), check=False)
    assert result.returncode == 0, result.stdout
    view = json.loads(result.stdout)["groups"][0]
    assert view["authenticated"] is True and view["confirmed"] is False and view["unanswered"] == []
    assert view["leader"]["node_id"] == "signed" and view["term"] == 1 and view["fencing_token"] == key
    table = lab.hosts["n5"].run(cli("status", group), check=False).stdout
    assert "signed@" in table and "(authenticated group: not checked)" in table, table


# --------------------------------------------------------------------- run


@pytest.mark.lab
def test_run_starts_cmd_with_its_environment_and_stops_it_on_sigint(
    lab: Lab, watch: Watch, cmd: Callable[[str], list[str]]
) -> None:
    group = unique_group()
    env = {**os.environ, "FOLLOWTHELEADER_SECRET": "correct horse battery staple"}
    node = watch.spawn(lab.hosts["n0"], run_args(group, "solo-run", cmd("wait")), "solo", env)
    node.record("to join", event="joined")
    started = node.record("CMD to start", event="command", action="started")
    assert started["term"] == 1
    token = FencingToken.from_key(started["fencing_token"])
    assert (token.term, token.node_id) == (1, "solo-run")
    assert watch.records(node, event="leader")[0]["fencing_token"] == token.key
    start = watch.wait(lambda _: cmd_lines(watch, "start"), "CMD's start line")[0]
    assert start[1:3] == ["solo-run", str(started["pid"])] and start[4:8] == ["1", group, "no-secret", token.key]
    watch.wait(lambda _: cmd_lines(watch, "check"), "CMD's check line")
    node.popen.send_signal(signal.SIGINT)
    assert node.exit_code() == 0
    assert cmd_lines(watch, "stop")[0][1:3] == ["solo-run", str(started["pid"])]
    (exited,) = watch.records(node, event="command", action="exited")
    assert exited["pid"] == started["pid"] and exited["returncode"] == 0
    # CMD was stopped first, then the elector handed over.
    kinds = [r["event"] + "/" + r.get("action", r.get("state", "")) for r in watch.records(node)]
    assert kinds.index("command/exited") < kinds.index("reelection/stopped"), kinds
    assert wait_pid_gone(started["pid"])


@pytest.mark.lab
def test_run_kills_the_process_group_after_the_grace_period(
    lab: Lab, watch: Watch, cmd: Callable[[str], list[str]]
) -> None:
    group = unique_group()
    node = watch.spawn(lab.hosts["n0"], run_args(group, "stubborn", cmd("ignore"), "--grace", "0.5"), "stubborn")
    started = node.record("CMD to start", event="command", action="started")
    child = int(watch.wait(lambda _: cmd_lines(watch, "child"), "CMD's own child")[0][2])
    sent = time.monotonic()
    node.popen.send_signal(signal.SIGTERM)
    assert node.exit_code() == 0
    assert time.monotonic() - sent >= 0.5
    assert cmd_lines(watch, "term"), "CMD got no SIGTERM"
    assert node.record("SIGKILL", event="command", action="killing")["pid"] == started["pid"]
    assert node.record("exit", event="command", action="exited")["signal"] == "SIGKILL"
    assert wait_pid_gone(started["pid"]) and wait_pid_gone(child), "CMD or its child outlived the stop"


@pytest.mark.lab
def test_run_keeps_one_cmd_in_the_group_through_handover_and_sigkill(
    lab: Lab, watch: Watch, cmd: Callable[[str], list[str]]
) -> None:
    group = unique_group()
    nodes = {
        node_id: watch.spawn(lab.hosts[f"n{index}"], run_args(group, node_id, cmd("wait")), node_id)
        for index, node_id in enumerate(["c-run", "b-run", "a-run"])
    }

    def started(count: int) -> Callable[[list[Line]], list[Line] | None]:
        def found(lines: list[Line]) -> list[Line] | None:
            done = [line for line in lines if line.record.get("action") == "started"]
            return done if len(done) >= count else None

        return found

    def checked(count: int) -> Callable[[list[Line]], bool]:
        return lambda _: len(cmd_lines(watch, "check")) >= count

    first = watch.wait(started(1), "a first CMD")[0]
    watch.wait(checked(1), "the first CMD's check")
    for proc in nodes.values():
        if proc is not first.proc:
            proc.record("to follow", event="follower")

    # SIGTERM: the leader stops its CMD, then hands over; the next one starts its own.
    first.proc.popen.send_signal(signal.SIGTERM)
    assert first.proc.exit_code() == 0
    second = watch.wait(started(2), "a second CMD")[1]
    assert second.proc is not first.proc
    watch.wait(checked(2), "the second CMD's check")
    assert not wait_pid_gone(second.record["pid"], 0), "the second CMD is not running"

    # SIGKILL of `run`: its CMD dies with it (parent-death signal), then a third one starts.
    second.proc.popen.kill()
    second.proc.exit_code()
    assert wait_pid_gone(second.record["pid"]), "CMD outlived its killed `run` process"
    third = watch.wait(started(3), "a third CMD")[2]
    assert third.proc not in (first.proc, second.proc)
    watch.wait(checked(3), "the third CMD's check")
    third.proc.popen.send_signal(signal.SIGTERM)
    assert third.proc.exit_code() == 0

    starts, stops = (sorted(cmd_lines(watch, kind), key=lambda w: float(w[3])) for kind in ("start", "stop"))
    checks = cmd_lines(watch, "check")
    assert [s[2] for s in starts] == [str(line.record["pid"]) for line in (first, second, third)]
    assert [s[1] for s in starts] == [line.proc.name for line in (first, second, third)]
    assert [int(s[4]) for s in starts] == sorted({int(s[4]) for s in starts}), "terms must grow"
    assert [s[7] for s in starts] == sorted({s[7] for s in starts}), "fencing tokens must grow"
    assert [FencingToken.from_key(s[7]).node_id for s in starts] == [s[1] for s in starts]
    assert [c[3] for c in checks] == ["-", "-", "-"], f"another CMD was alive when one started: {checks}"
    # The first and the third CMD stopped on SIGTERM; the second was killed (no stop line).
    assert [s[2] for s in stops] == [starts[0][2], starts[2][2]]
    assert float(stops[0][3]) < float(starts[1][3]) < float(starts[2][3]) < float(stops[1][3])


@pytest.mark.lab
def test_run_demotion_stops_cmd(lab: Lab, watch: Watch, cmd: Callable[[str], list[str]]) -> None:
    group = unique_group()
    paused = watch.spawn(lab.hosts["n0"], run_args(group, "z-paused", cmd("wait")), "z-paused")
    first = paused.record("CMD to start", event="command", action="started")
    other = watch.spawn(lab.hosts["n1"], run_args(group, "a-other", cmd("wait")), "a-other")
    other.record("to follow", event="follower")
    paused.popen.send_signal(signal.SIGSTOP)
    try:
        other.record("CMD to start", event="command", action="started")
    finally:
        paused.popen.send_signal(signal.SIGCONT)
    # On resume it steps down (its lease ran out, or it hears the new leader first): CMD stops.
    watch.first(lambda line: line.proc is paused and line.record.get("event") in ("reelection", "follower"), "demotion")
    assert paused.record("CMD to stop", event="command", action="exited")["pid"] == first["pid"]
    assert cmd_lines(watch, "stop")[0][1:3] == ["z-paused", str(first["pid"])]
    assert paused.popen.poll() is None, "run must go on as a follower"
    paused.record("to follow", event="follower")
    for proc in (paused, other):
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.exit_code() == 0


@pytest.mark.lab
def test_run_on_exit_resign_lets_another_node_take_over(
    lab: Lab, watch: Watch, cmd: Callable[[str], list[str]]
) -> None:
    group = unique_group()
    first = watch.spawn(lab.hosts["n0"], run_args(group, "z-quits", cmd("exit0")), "z-quits")
    first.record("CMD to start", event="command", action="started")
    assert first.record("CMD to exit", event="command", action="exited")["returncode"] == 0
    first.record("resignation", event="reelection", reason="resigned")
    # Alone, it leads again after one failure window; with a second node, that one takes over.
    second = watch.spawn(lab.hosts["n1"], run_args(group, "a-takes", cmd("exit0")), "a-takes")
    taken = second.record("CMD to start", event="command", action="started")
    assert taken["term"] > 1
    assert watch.records(first, event="reelection", reason="resigned")
    for proc in (first, second):
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.exit_code() == 0


@pytest.mark.lab
def test_run_on_exit_exit_returns_the_status_of_cmd(lab: Lab, watch: Watch, cmd: Callable[[str], list[str]]) -> None:
    node = watch.spawn(lab.hosts["n0"], run_args(unique_group(), "exits", cmd("exit3"), "--on-exit", "exit"), "exits")
    assert node.exit_code() == 3
    assert watch.records(node, action="exited")[0]["returncode"] == 3
    assert watch.records(node, event="reelection")[-1]["state"] == "stopped"


@pytest.mark.lab
def test_run_on_exit_restart_starts_cmd_again_in_the_same_term(
    lab: Lab, watch: Watch, cmd: Callable[[str], list[str]]
) -> None:
    node = watch.spawn(lab.hosts["n0"], run_args(unique_group(), "again", cmd("exit0"), "--on-exit", "restart"), "x")

    def two_starts(lines: list[Line]) -> list[Line] | None:
        done = [line for line in lines if line.record.get("action") == "started"]
        return done if len(done) >= 2 else None

    first, second = watch.wait(two_starts, "CMD to start twice")[:2]
    assert first.record["term"] == second.record["term"] == 1
    assert first.record["fencing_token"] == second.record["fencing_token"]  # one leadership
    assert first.record["pid"] != second.record["pid"]
    node.popen.send_signal(signal.SIGTERM)
    assert node.exit_code() == 0
    assert not watch.records(node, event="reelection", reason="resigned")


@pytest.mark.lab
def test_run_cmd_that_cannot_start_counts_as_status_127(lab: Lab, watch: Watch, tmp_path: Path) -> None:
    broken = tmp_path / "not-a-program"
    broken.write_bytes(b"\x00\x01 no interpreter line, not an executable format\n")
    broken.chmod(0o755)
    args = run_args(unique_group(), "broken", [str(broken)], "--on-exit", "exit")
    node = watch.spawn(lab.hosts["n0"], args, "broken")
    assert node.exit_code() == 127
    assert "Exec format error" in watch.records(node, action="failed")[0]["error"]
