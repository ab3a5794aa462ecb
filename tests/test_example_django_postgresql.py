"""examples/django_postgresql/: a Django project whose singleton job elects its leader in the
project's own PostgreSQL database, for real.

A PostgreSQL server from ``coordservers.py`` runs on a lab host; ``manage.py migrate`` creates
the job's tables; three copies of ``manage.py run_singleton`` on three other lab hosts elect
their leader in that database (the coordinator URL derived from ``DATABASES["default"]``).
The test reads the job's rows (``jobs_jobrun``, one per run, written under the epoch fence):
one copy alone runs the job; after a SIGKILL of that copy another takes over with a greater
epoch; and in commit order the epochs of the runs never go backwards.

The unit tests of ``coordinator_url_from_django`` need no server: they check the URLs it
writes and that followtheleader parses them back to the same connection settings.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pytest

from followtheleader._coordinators.base import CoordinatorConfig
from followtheleader._coordinators.base import parse_coordinator as parse_url

from coordservers import PG_DATABASE, PG_PORT, PG_USER, ServerPool, ServerSet
from netlab import Host, Lab

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "django_postgresql"
MANAGE = str(PROJECT / "manage.py")
TTL = 3.0
JOB_PERIOD = "0.2"
TIMEOUT = 30.0
PAUSED_WORK_SECONDS = 5.0


def _load_coordinator_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("django_pg_coordinator", PROJECT / "jobs" / "coordinator.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


url_from_django: Callable[..., str] = _load_coordinator_module().coordinator_url_from_django


def parse_coordinator(url: str) -> CoordinatorConfig:
    """followtheleader's own reading of a coordinator URL (it checks that psycopg is installed)."""
    pytest.importorskip("psycopg")
    return parse_url(url)


ENGINE = "django.db.backends.postgresql"


# --------------------------------------------------------------------- coordinator_url_from_django


def test_every_connection_setting_reaches_the_coordinator_url() -> None:
    database = {
        "ENGINE": ENGINE,
        "HOST": "db.internal",
        "PORT": "6543",
        "NAME": "my site",
        "USER": "web@example",
        "PASSWORD": "p:@/?#&= %",
        "OPTIONS": {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/ca.pem", "isolation_level": 2, "pool": True},
        "CONN_MAX_AGE": 60,
    }
    url = url_from_django(database, schema="ops", table_prefix="ftl_")
    config = parse_coordinator(url)
    assert config.backend == "postgresql"
    assert config.hosts == (("db.internal", 6543),)
    assert config.path == "my site"
    assert (config.username, config.password) == ("web@example", "p:@/?#&= %")
    # Django's own OPTIONS (isolation_level, pool) are not libpq's: left out.
    assert config.query == (
        ("sslmode", "verify-full"),
        ("sslrootcert", "/etc/ssl/ca.pem"),
        ("schema", "ops"),
        ("table_prefix", "ftl_"),
    )


def test_several_hosts_ipv6_default_port_and_no_user() -> None:
    url = url_from_django({"ENGINE": ENGINE, "HOST": "pg1, ::1", "PORT": "", "NAME": "app", "USER": ""})
    assert url == "postgresql://pg1,[::1]/app"
    config = parse_coordinator(url)
    assert config.hosts == (("pg1", 5432), ("::1", 5432))
    assert (config.username, config.password) == (None, None)
    url = url_from_django({"ENGINE": ENGINE, "HOST": "pg1,pg2", "PORT": "5433,5434", "NAME": "app"})
    assert parse_coordinator(url).hosts == (("pg1", 5433), ("pg2", 5434))
    one_port = url_from_django({"ENGINE": ENGINE, "HOST": "pg1,pg2", "PORT": 5433, "NAME": "app"})
    assert parse_coordinator(one_port).hosts == (("pg1", 5433), ("pg2", 5433))


def test_a_user_without_password_and_the_postgis_engine() -> None:
    url = url_from_django(
        {"ENGINE": "django.contrib.gis.db.backends.postgis", "HOST": "db", "NAME": "gis", "USER": "u"}
    )
    config = parse_coordinator(url)
    assert config.username == "u" and not config.password  # libpq then reads ~/.pgpass


def test_a_socket_directory_is_written_as_libpq_writes_it() -> None:
    url = url_from_django({"ENGINE": ENGINE, "HOST": "/var/run/postgresql", "NAME": "app", "USER": "web"})
    assert url == "postgresql://web@%2Fvar%2Frun%2Fpostgresql/app"
    config = parse_coordinator(url)
    assert (config.hosts, config.username, config.password) == ((("%2Fvar%2Frun%2Fpostgresql", 5432),), "web", None)


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ({"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}, "is not PostgreSQL"),
        ({"ENGINE": ENGINE, "HOST": "", "NAME": "app"}, "default Unix socket"),
        ({"ENGINE": ENGINE, "NAME": "app"}, "default Unix socket"),
        ({"ENGINE": ENGINE, "HOST": "@pg", "NAME": "app"}, "'@pg' is a Linux abstract Unix socket"),
        ({"ENGINE": ENGINE, "HOST": "db,@pg", "NAME": "app"}, "'@pg' is a Linux abstract Unix socket"),
        ({"ENGINE": ENGINE, "HOST": "db", "NAME": ""}, "NAME is empty"),
        ({"ENGINE": ENGINE, "HOST": "db", "NAME": "app", "PASSWORD": "x"}, "PASSWORD without USER"),
        ({"ENGINE": ENGINE, "HOST": "a,b,c", "PORT": "1,2", "NAME": "app"}, "2 ports for 3 hosts"),
        ({"ENGINE": ENGINE, "NAME": None, "OPTIONS": {"service": "mysite"}}, "service"),
    ],
)
def test_what_a_coordinator_url_cannot_name_is_a_clear_error(database: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        url_from_django(database)


def test_an_option_the_driver_does_not_pass_is_refused_by_name() -> None:
    url = url_from_django({"ENGINE": ENGINE, "HOST": "db", "NAME": "app", "OPTIONS": {"client_encoding": "UTF8"}})
    with pytest.raises(ValueError, match=r"unknown setting.*client_encoding"):
        parse_coordinator(url)


# --------------------------------------------------------------------- the project, in the lab


def _wait(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)  # polling a database from outside: no event to wait on
    return found


class Copies:
    """Copies of ``manage.py run_singleton`` on lab hosts, with their output in files."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.processes: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}

    def start(self, host: Host, node_id: str) -> None:
        log = open(self.tmp_path / f"{node_id}.log", "wb")  # noqa: SIM115 - closed in close()
        env = {**self.env, "FTL_NODE_ID": node_id}
        argv = [sys.executable, MANAGE, "run_singleton"]
        process = host.popen(argv, env=env, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT)
        self.processes[node_id] = (process, log)

    def output(self, node_id: str) -> str:
        return (self.tmp_path / f"{node_id}.log").read_text(errors="replace")

    def outputs(self) -> str:
        return "\n".join(f"--- {node}\n{self.output(node)[-3000:]}" for node in self.processes)

    def close(self) -> None:
        for process, log in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
            log.close()


@pytest.fixture
def postgresql(request: pytest.FixtureRequest, lab: Lab, coordinator_servers: ServerPool) -> ServerSet:
    """The PostgreSQL server (``postgresql``), or pgbouncer in transaction mode in front of one
    (``pgbouncer``, by indirect parametrisation): ``DB_PORT`` is then pgbouncer's, and Django
    and the elector both go through it."""
    pytest.importorskip("django")
    return coordinator_servers.get(lab, getattr(request, "param", "postgresql"), 1)


@pytest.fixture
def copies(tmp_path: Path, postgresql: ServerSet) -> Iterator[Copies]:
    group = "dj" + os.urandom(3).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FOLLOWTHELEADER_", "FTL_", "DB_", "PG"))}
    env |= {
        "DB_HOST": postgresql.hosts[0].address,
        "DB_PORT": str(urllib.parse.urlsplit(postgresql.url).port),
        "DB_NAME": PG_DATABASE,
        "DB_USER": PG_USER,
        "FTL_GROUP": group,
        "FTL_TTL": str(TTL),
        "JOB_PERIOD": JOB_PERIOD,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    }
    if postgresql.backend == "pgbouncer":  # what Django's documentation asks behind a transaction pooler
        env["DB_DISABLE_SERVER_SIDE_CURSORS"] = "1"
    made = Copies(tmp_path, env)
    yield made
    made.close()


def _runs(server: ServerSet, group: str) -> list[tuple[int, int, str]]:
    """``(id, epoch, node_id)`` of every run of ``group``'s job, in commit order (ids)."""
    import psycopg

    host = server.hosts[0]

    def read() -> list[tuple[int, int, str]]:
        with psycopg.connect(host=host.address, port=PG_PORT, user=PG_USER, dbname=PG_DATABASE) as conn:
            rows = conn.execute('SELECT id, epoch, node_id FROM jobs_jobrun WHERE "group" = %s ORDER BY id', (group,))
            return [(int(a), int(b), str(c)) for a, b, c in rows.fetchall()]

    return host.call_in_namespace(read, timeout=10)


def _fence(server: ServerSet, group: str) -> int | None:
    import psycopg

    host = server.hosts[0]

    def read() -> int | None:
        with psycopg.connect(host=host.address, port=PG_PORT, user=PG_USER, dbname=PG_DATABASE) as conn:
            row = conn.execute("SELECT epoch FROM fenced_epoch WHERE name = %s", (group,)).fetchone()
            return None if row is None else int(row[0])

    return host.call_in_namespace(read, timeout=10)


def _check_history(runs: list[tuple[int, int, str]]) -> None:
    """In commit order, epochs never go backwards, and each epoch's runs are one node's."""
    epochs = [epoch for _, epoch, _ in runs]
    assert epochs == sorted(epochs), f"a run committed after a newer leadership's: {runs}"
    writers: dict[int, set[str]] = {}
    for _, epoch, node in runs:
        writers.setdefault(epoch, set()).add(node)
    assert all(len(nodes) == 1 for nodes in writers.values()), f"two nodes ran the job in one epoch: {writers}"


def _migrate(host: Host, env: dict[str, str]) -> None:
    """``manage.py migrate``: the job's tables (followtheleader's are made on first use)."""
    argv = [sys.executable, MANAGE, "migrate", "--no-input"]
    migrate = host.popen(argv, env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = migrate.communicate(timeout=120)
    assert migrate.returncode == 0, output.decode(errors="replace")


@pytest.mark.lab
@pytest.mark.parametrize("postgresql", ["postgresql", "pgbouncer"], indirect=True)
def test_one_copy_runs_the_job_and_another_takes_over_after_a_sigkill(
    lab: Lab, postgresql: ServerSet, copies: Copies
) -> None:
    group = copies.env["FTL_GROUP"]
    hosts = [lab.hosts[f"n{i}"] for i in (7, 8, 9)]
    _migrate(hosts[0], copies.env)
    for index, host in enumerate(hosts):
        copies.start(host, f"d{index}")

    # One copy runs the job, and it alone, over several runs.
    first = _wait(lambda: (runs := _runs(postgresql, group)) and runs, "the first run of the job")
    leader, epoch = first[0][2], first[0][1]
    _wait(lambda: len(_runs(postgresql, group)) >= len(first) + 10, "ten more runs")
    runs = _runs(postgresql, group)
    assert {node for _, _, node in runs} == {leader}, copies.outputs()
    assert {e for _, e, _ in runs} == {epoch}
    assert "leading (term" in copies.output(leader)
    for node in copies.processes:
        if node != leader:
            assert "job: ran" not in copies.output(node), copies.outputs()

    # SIGKILL the leader: it hands nothing over; another copy takes over once its lease ends.
    process, _ = copies.processes[leader]
    killed_at = time.monotonic()
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    after = _wait(
        lambda: [run for run in _runs(postgresql, group) if run[1] > epoch],
        "a run by a new leader",
        timeout=TTL + TIMEOUT,
    )
    took_over = time.monotonic() - killed_at
    successor, new_epoch = after[0][2], after[0][1]
    assert successor != leader
    assert took_over < TTL + 5.0, f"the takeover took {took_over:.1f} s"
    _wait(lambda: len(_runs(postgresql, group)) >= len(runs) + len(after) + 5, "more runs by the new leader")

    history = _runs(postgresql, group)
    _check_history(history)
    assert {node for _, e, node in history if e > epoch} == {successor}
    assert max(e for _, e, _ in history) == new_epoch
    assert _fence(postgresql, group) == new_epoch

    # SIGTERM to the new leader: it stops its job, then hands over; the third copy runs the job
    # at once, not once a lease has run out (behind pgbouncer it polls, every TTL / 5).
    (third,) = set(copies.processes) - {leader, successor}
    successor_process, _ = copies.processes[successor]
    terminated_at = time.monotonic()
    successor_process.send_signal(signal.SIGTERM)
    assert successor_process.wait(TIMEOUT) == 0, copies.outputs()
    assert "not leading any more (stopped)" in copies.output(successor)
    last = _wait(
        lambda: [run for run in _runs(postgresql, group) if run[1] > new_epoch], "a run by the third copy", TTL + 10
    )
    handed_over = time.monotonic() - terminated_at  # an upper bound: it includes the polling
    assert {node for _, _, node in last} == {third}
    print(f"SIGTERM handover: the third copy's first run {handed_over:.2f} s after the signal (TTL {TTL} s)")
    assert handed_over < TTL, f"the third copy's first run came {handed_over:.1f} s after the SIGTERM"
    third_process, _ = copies.processes[third]
    third_process.send_signal(signal.SIGTERM)
    assert third_process.wait(TIMEOUT) == 0, copies.outputs()
    history = _runs(postgresql, group)
    _check_history(history)
    assert _fence(postgresql, group) == max(e for _, e, _ in history)


@pytest.mark.lab
def test_a_paused_leader_s_late_run_is_refused_by_the_epoch_fence(
    lab: Lab, postgresql: ServerSet, copies: Copies
) -> None:
    """SIGSTOP the leader during the job's work (before its write), until another copy leads
    and writes; SIGCONT: the paused copy's write, under the older epoch, is refused.

    The work lasts PAUSED_WORK_SECONDS, long compared with the test's reaction (a 0.1 s poll
    of the log, then the signal), and the test checks that the pause did land before the
    write: its database rows and its log, both frozen by the SIGSTOP."""
    group = copies.env["FTL_GROUP"]
    copies.env["JOB_WORK_SECONDS"] = str(PAUSED_WORK_SECONDS)
    hosts = [lab.hosts["n7"], lab.hosts["n8"]]
    _migrate(hosts[0], copies.env)
    for index, host in enumerate(hosts):
        copies.start(host, f"p{index}")
    first = _wait(lambda: _runs(postgresql, group), "the first run of the job")
    leader, epoch = first[0][2], first[0][1]
    other = next(node for node in copies.processes if node != leader)
    process, _ = copies.processes[leader]

    # Pause it right after it starts a run's work: it will write after the pause.
    working = copies.output(leader).count("job: working")
    _wait(lambda: copies.output(leader).count("job: working") > working, "the leader starting its work")
    process.send_signal(signal.SIGSTOP)
    try:
        # Paused between a run's "working" and its write: one run of this epoch fewer than
        # "working" lines (the write is one statement of milliseconds after the work).
        started = copies.output(leader).count(f"job: working (term {epoch})")
        written = sum(1 for _, e, _ in _runs(postgresql, group) if e == epoch)
        assert written == started - 1, f"the SIGSTOP came after the write: {copies.outputs()}"
        assert _fence(postgresql, group) == epoch
        after = _wait(
            lambda: [run for run in _runs(postgresql, group) if run[1] > epoch],
            "a run by the other copy",
            timeout=TTL + TIMEOUT,
        )
        assert {node for _, _, node in after} == {other}
    finally:
        process.send_signal(signal.SIGCONT)
    _wait(lambda: f"job: refused (term {epoch})" in copies.output(leader), "the paused copy's write refused")
    history = _runs(postgresql, group)
    _check_history(history)
    assert [node for _, e, node in history if e == epoch] == [leader] * sum(1 for run in history if run[1] == epoch)
    new_epoch = max(e for _, e, _ in history)
    assert new_epoch > epoch and _fence(postgresql, group) == new_epoch
    assert f"job: ran (term {epoch})" not in copies.output(leader).split("job: refused", 1)[1]


@pytest.mark.lab
def test_django_setup_alone_starts_no_elector(lab: Lab) -> None:
    pytest.importorskip("django")
    # manage.py check loads the settings and every app (AppConfig.ready included).
    result = lab.hosts["n6"].run([sys.executable, MANAGE, "check"], check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    assert "followtheleader" not in result.stdout + result.stderr
