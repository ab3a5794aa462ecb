"""The fencing recipe (``examples/fencing.py``), run for real: SQLite, a real Redis, a file,
a real PostgreSQL.

Each guard is run against its real resource: an SQLite database in a temporary directory, a
``redis-server`` that this module starts itself (on a Unix socket only, no TCP port; skipped
when ``redis-server`` or the ``redis`` package is missing), a file, and a PostgreSQL server
that this module starts itself (on a Unix socket only; skipped when PostgreSQL or psycopg is
missing). The tests check that each guard accepts a write exactly when the writer's fence is
not less than the greatest one that wrote: the token's key (the order of
:class:`FencingToken`), or for PostgreSQL's epoch guard its term. They run with real electors
too: in-process ones in the lab's ``local`` namespace, and the example's own command line in
two lab hosts, where the leader is paused in the middle of its work while another node takes
over (for PostgreSQL the copies elect through the database whose epoch fences them).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from followtheleader import Elector, Event, FencingToken, State, elect

from conftest import Local, outlives_its_test
from coordservers import UnixPostgreSQL, unavailable_reason
from netlab import Lab
from recipes import fencing_recipe

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0
GUARDS = ("sqlite", "redis", "file", "postgresql")
T = TypeVar("T")


recipe = fencing_recipe()


def unique(prefix: str) -> str:
    return prefix + os.urandom(4).hex()


# --------------------------------------------------------------------- resources


class RedisServer:
    """A ``redis-server`` of this test session, on a Unix socket only (``--port 0``: no TCP)."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        argv = ["redis-server", "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(directory), "--logfile", ""]
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self._ready = threading.Event()
        # Started by whichever test first needs the server (maybe an in-process lab test).
        self._reader = outlives_its_test(threading.Thread(target=self._read, name="redis-server-output", daemon=True))
        self._reader.start()
        if not self._ready.wait(TIMEOUT) or self.popen.poll() is not None:
            self.stop()
            raise RuntimeError("redis-server did not start:\n" + "\n".join(self.output))

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.output.append(line.rstrip("\n"))
            if "ready to accept connections" in line:
                self._ready.set()
        self._ready.set()  # it exited: do not keep the starter waiting

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(TIMEOUT)
        self._reader.join(TIMEOUT)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    if importlib.util.find_spec("redis") is None:
        pytest.skip("the redis package is not installed (pip install -e '.[test]')")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@contextlib.contextmanager
def _redis(url: str) -> Iterator[Any]:
    """A client of the server at ``url``, closed with its connections afterwards."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        client.close()
        client.connection_pool.disconnect()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[Any]:
    with _redis(redis_server.url) as client:
        yield client


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[UnixPostgreSQL]:
    if reason := unavailable_reason("postgresql"):
        pytest.skip(reason)
    server = UnixPostgreSQL()
    yield server
    server.stop()


@pytest.fixture(params=GUARDS)
def guard_kind(request: pytest.FixtureRequest) -> str:
    """The kind of guard the test is parametrised with."""
    return str(request.param)


@pytest.fixture
def new_guard(guard_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """``new_guard()``: a guard of the kind the test is parametrised with, on a fresh resource."""
    client = request.getfixturevalue("redis_client") if guard_kind == "redis" else None
    dsn = request.getfixturevalue("postgresql_server").dsn if guard_kind == "postgresql" else None

    def make() -> Any:
        if guard_kind == "sqlite":
            return recipe.SqliteGuard(tmp_path / "fencing.db", name=unique("row-"))
        if guard_kind == "redis":
            return recipe.RedisGuard(client, name=unique("fenced:"))
        if guard_kind == "postgresql":
            return recipe.PostgreSQLEpochGuard(dsn, name=unique("row-"))
        return recipe.FileGuard(tmp_path / unique("fenced-"))

    return make


@pytest.fixture
def fence(guard_kind: str) -> Callable[[FencingToken], Any]:
    """``fence(token)``: what the guard compares and ``read()`` returns first. The token's key;
    for PostgreSQL's epoch guard the term alone (in a PostgreSQL group each epoch is one
    leadership, so two tokens of one term are the same leadership there)."""
    if guard_kind == "postgresql":
        return lambda token: token.term
    return lambda token: token.key


# --------------------------------------------------------------------- the guards alone


def test_each_guard_refuses_a_lesser_token_and_accepts_an_equal_or_greater_one(
    new_guard: Callable[[], Any], fence: Callable[[FencingToken], Any]
) -> None:
    guard = new_guard()
    assert guard.read() is None
    current = FencingToken(3, 0, "b-node", 1_700_000_000_000_000)
    assert guard.write(current, "first")
    assert guard.write(current, "again")  # the same leadership writes again
    assert guard.read() == (fence(current), "again")
    older = FencingToken(2, 100, "z-node", 2**63 - 1)  # a former term, whatever the rest
    rival = FencingToken(3, 0, "a-node", 2**63 - 1)  # same term, the rival that gives way
    restarted = FencingToken(3, 0, "b-node", 1_699_999_999_999_999)  # an earlier run of the same node
    # The epoch guard compares terms: rival and restarted share current's (in a PostgreSQL
    # group they cannot exist beside it, an epoch being one leadership); the others refuse them.
    stale_ones = [token for token in (older, rival, restarted) if fence(token) < fence(current)]
    assert older in stale_ones
    for stale in stale_ones:
        assert stale < current
        assert not guard.write(stale, "stale"), stale
    assert guard.read() == (fence(current), "again")
    newer_ones = (
        FencingToken(3, 0, "b-node", 1_700_000_000_000_001),
        FencingToken(3, 1, "a"),
        FencingToken(4, -5, "a"),
    )
    for newer in newer_ones:
        assert newer > current
        assert guard.write(newer, f"by {newer.node_id}"), newer
        current = newer
    assert guard.read() == (fence(current), "by a")


_node_ids = st.sampled_from(["a", "A", "b", "a-1", "a_1", "Z", "0", "9" * 32, "a" * 32, "node-" + "x" * 27])
_tokens = st.builds(
    FencingToken,
    term=st.integers(0, 4) | st.sampled_from([2**53 - 1]),
    priority=st.sampled_from([-(2**31), -1, 0, 1, 2**31 - 1]),
    node_id=_node_ids,
    boot=st.sampled_from([0, 1, 255, 256, 1_764_683_000_000_000, 2**63 - 1]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=st.lists(_tokens, min_size=1, max_size=12))
def test_each_guard_accepts_exactly_what_the_token_order_accepts(
    new_guard: Callable[[], Any], fence: Callable[[FencingToken], Any], tokens: list[FencingToken]
) -> None:
    guard = new_guard()
    greatest: FencingToken | None = None
    last_written = -1
    for index, token in enumerate(tokens):
        expected = greatest is None or fence(token) >= fence(greatest)
        assert guard.write(token, str(index)) is expected, (token, greatest)
        if expected:
            greatest, last_written = token, index
    assert greatest is not None
    assert guard.read() == (fence(greatest), str(last_written))


def test_concurrent_writers_never_leave_a_lesser_key_behind(
    new_guard: Callable[[], Any], fence: Callable[[FencingToken], Any]
) -> None:
    """Four threads write shuffled tokens at once; the key that remains is the greatest accepted.

    A guard whose compare and write were not atomic (no lock around them for the file) could
    accept a greater key and then let a lesser one, compared before, overwrite it.
    """
    guard = new_guard()
    tokens = [FencingToken(term, 0, f"n{writer}", 1) for writer in range(4) for term in range(1, 31)]
    shares = [tokens[i::4] for i in range(4)]
    accepted: list[FencingToken] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def writer(mine: list[FencingToken], seed: int) -> None:
        random.Random(seed).shuffle(mine)
        try:
            start.wait(TIMEOUT)
            for token in mine:
                if guard.write(token, token.node_id):
                    with lock:
                        accepted.append(token)
        except BaseException as exc:  # noqa: BLE001 - reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(share, seed)) for seed, share in enumerate(shares)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    assert guard.read()[0] == fence(max(accepted))
    assert max(tokens) in accepted  # nothing can refuse the greatest token


def test_the_resources_themselves_refuse_what_is_not_a_key(tmp_path: Path, redis_client: Any) -> None:
    """The guards check keys before they send them, and the resources check them again."""
    import sqlite3

    import redis

    key = FencingToken(1, 0, "n").key
    sql = recipe.SqliteGuard(tmp_path / "fencing.db")
    with pytest.raises(sqlite3.IntegrityError), contextlib.closing(sqlite3.connect(sql.path)) as db:
        db.execute(recipe.SqliteGuard.WRITE, {"name": "x", "key": key[:-1], "value": "garbage"})
    for bad in (key[:-1], key.upper(), key[:-1] + "g"):
        with pytest.raises(redis.ResponseError, match="not a fencing token key"):
            redis_client.eval(recipe.RedisGuard.SCRIPT, 1, unique("fenced:"), bad, "garbage")
    path = tmp_path / "not-fenced.txt"
    path.write_text("a file that some other program wrote\n")
    with pytest.raises(ValueError, match="not a fencing token key"):
        recipe.FileGuard(path).write(FencingToken(1, 0, "n"), "overwrite?")
    assert path.read_text() == "a file that some other program wrote\n"


# --------------------------------------------------------------------- with real electors


class Recorder:
    """Events of one elector, from its callback thread; waited for with a deadline."""

    def __init__(self, elector: Elector) -> None:
        self.events: list[Event] = []
        self.changed = threading.Condition()
        for kind in ("leader", "follower", "reelection", "error"):
            elector.on(kind, self._add)

    def _add(self, event: Event) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait(self, kind: str, after: int = 0) -> Event:
        """The first ``kind`` event from index ``after`` on."""
        deadline = time.monotonic() + TIMEOUT
        with self.changed:
            while True:
                found = next((e for e in self.events[after:] if e.kind == kind), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {kind} event within {TIMEOUT}s: {self.events}"
                self.changed.wait(remaining)


@pytest.mark.lab
def test_a_former_leaders_token_is_refused_after_the_new_leader_wrote(
    local: Local, new_guard: Callable[[], Any], fence: Callable[[FencingToken], Any]
) -> None:
    guard = new_guard()
    group = unique("fence")
    first, second = elect(group, node_id="z-first"), elect(group, node_id="a-second")
    first_events, second_events = Recorder(first), Recorder(second)
    try:
        local(first.start)
        led = first_events.wait("leader")
        old = first.fencing_token
        assert old is not None and old == led.fencing_token
        assert old == FencingToken(led.term, 0, "z-first", old.boot) and old.boot > 0
        assert guard.write(old, "first leadership")

        local(second.start)
        assert second_events.wait("follower").fencing_token == old  # a follower holds its leader's token
        assert first.resign()
        new = second_events.wait("leader").fencing_token
        assert new is not None and new == second.fencing_token
        assert new > old and new.term > old.term and new.node_id == "a-second"
        assert guard.write(new, "second leadership")

        # The first leader, late with work it began while leading, is refused.
        assert not guard.write(old, "stale work of the first leadership")
        assert guard.read() == (fence(new), "second leadership")
        following = first_events.wait("follower", after=first_events.events.index(led) + 1)
        assert following.fencing_token == new and first.fencing_token == new
        assert first.state is State.FOLLOWER
    finally:
        first.stop()
        second.stop()


# --------------------------------------------------------------------- the example's command line

WORKING = re.compile(r"fencing \[(?P<pid>\d+)\]: job: working \(term (?P<term>\d+), token (?P<key>[0-9a-f]{104})\)")
WROTE = re.compile(r"fencing \[(?P<pid>\d+)\]: job: wrote \(term (?P<term>\d+), token (?P<key>[0-9a-f]{104})\)")
REFUSED = re.compile(r"fencing \[(?P<pid>\d+)\]: job: refused \(term (?P<term>\d+), token (?P<key>[0-9a-f]{104})\)")
LEADING = re.compile(r"fencing \[(?P<pid>\d+)\]: leading now, term (?P<term>\d+)")
FOLLOWING = re.compile(r"fencing \[(?P<pid>\d+)\]: following (?P<leader>\S+), term (?P<term>\d+)")


class Output:
    """Lines of the example processes, read by threads, waited for with a deadline."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, popen: subprocess.Popen[str]) -> subprocess.Popen[str]:
        self.procs.append(popen)
        threading.Thread(target=self._read, args=(popen,), daemon=True).start()
        return popen

    def _read(self, popen: subprocess.Popen[str]) -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait(self, pattern: re.Pattern[str], what: str, after: int = 0, **groups: str) -> re.Match[str]:
        """The first line from index ``after`` on that matches, with these values of its groups."""
        deadline = time.monotonic() + TIMEOUT
        with self.changed:
            while True:
                for line in self.lines[after:]:
                    found = pattern.search(line)
                    if found and all(found[k] == v for k, v in groups.items()):
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no line for {what} within {TIMEOUT}s:\n" + "\n".join(self.lines))
                self.changed.wait(remaining)

    def finish(self) -> None:
        for popen in self.procs:
            if popen.poll() is None:
                popen.kill()
            popen.wait(TIMEOUT)


@pytest.mark.lab
@pytest.mark.parametrize("kind", GUARDS)
def test_the_example_refuses_a_paused_leader_that_resumes(
    lab: Lab, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """Two copies of the example in two lab hosts, one resource; the leader is paused mid-work.
    For PostgreSQL the resource is a server in the lab that the copies also elect through."""
    if kind == "redis":
        target: str = request.getfixturevalue("redis_server").url
        _clear_redis_guard(target)  # a fresh resource, as tmp_path is for the others
    elif kind == "postgresql":
        servers = request.getfixturevalue("coordinator_servers").get(lab, "postgresql", 1)
        target = servers.url
        _clear_postgresql_guard(lab, target)
    else:
        target = str(tmp_path / ("fencing.db" if kind == "sqlite" else "fencing.txt"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWTHELEADER_")}
    env.update(FTL_GROUP=unique("fence"), JOB_PERIOD="0.1", WORK_SECONDS="2", PYTHONUNBUFFERED="1")
    env.update(COORDINATOR_TTL="3")  # PostgreSQL: the paused leader's claim lapses within the test's waits
    argv = [sys.executable, str(ROOT / "examples" / "fencing.py"), kind, target]
    output = Output()

    def start(host: str) -> subprocess.Popen[str]:
        popen = lab.hosts[host].popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        return output.start(popen)

    try:
        first = start("n0")
        led = output.wait(LEADING, "the first copy to lead", pid=str(first.pid))
        second = start("n1")
        output.wait(FOLLOWING, "the second copy to follow the first", pid=str(second.pid), term=led["term"])
        mark = len(output.lines)
        working = output.wait(WORKING, "the first leader's next work", after=mark, pid=str(first.pid))
        first.send_signal(signal.SIGSTOP)  # in the middle of its work (2 s), before it writes
        try:
            output.wait(LEADING, "the second copy to lead", pid=str(second.pid))
            wrote = output.wait(WROTE, "the second leader's write", pid=str(second.pid))
        finally:
            first.send_signal(signal.SIGCONT)
        refused = output.wait(REFUSED, "the resumed first leader's write to be refused", mark, pid=str(first.pid))
        assert refused["key"] == working["key"] and int(refused["term"]) < int(wrote["term"])
        assert wrote["key"] > working["key"]
        with output.changed:
            paused_at = output.lines.index(working.string, mark)
            later = [line for line in output.lines[paused_at:] if f"[{first.pid}]" in line]
        assert not any(WROTE.search(line) for line in later), later  # nothing of its own got through
        for popen in (first, second):
            popen.send_signal(signal.SIGTERM)
            assert popen.wait(TIMEOUT) == 0
    finally:
        output.finish()
    stored = _read(lab, kind, target)
    if kind == "postgresql":  # the epoch guard stores the term
        assert stored is not None and stored[0] >= int(wrote["term"])
    else:
        assert stored is not None and stored[0] >= wrote["key"]


def _clear_redis_guard(url: str) -> None:
    """Delete the example's hash from the session's server: an earlier run of the test (with
    pytest-repeat) left its greater token there, and the new group's writes were refused."""
    with _redis(url) as client:
        client.delete(recipe.RedisGuard(client).name)


def _in_lab_postgresql(lab: Lab, url: str, fn: Callable[[Any], T]) -> T:
    """``fn(guard)`` with the example's epoch guard on the lab's PostgreSQL server at ``url``
    (reachable from the lab's namespaces only)."""
    return lab.hosts["local"].call_in_namespace(lambda: fn(recipe.PostgreSQLEpochGuard(url)), timeout=30)


def _clear_postgresql_guard(lab: Lab, url: str) -> None:
    """Delete the example's row: the server lives as long as the module, and an earlier run of
    the test left its epoch there (a new group in the same database goes on from it anyway)."""

    def clear(guard: Any) -> None:
        with guard._connect() as db:
            db.execute("DELETE FROM fenced_epoch WHERE name = %s", (guard.name,))

    _in_lab_postgresql(lab, url, clear)


def _read(lab: Lab, kind: str, target: str) -> tuple[Any, str] | None:
    if kind == "postgresql":
        return _in_lab_postgresql(lab, target, lambda guard: guard.read())
    if kind == "redis":
        with _redis(target) as client:
            return recipe.RedisGuard(client).read()  # type: ignore[no-any-return]
    guard = recipe.SqliteGuard(target) if kind == "sqlite" else recipe.FileGuard(target)
    return guard.read()  # type: ignore[no-any-return]
