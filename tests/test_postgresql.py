"""PostgreSQL driver cases beyond the shared coordinator tests: the server ending the nodes'
connections (``pg_terminate_backend``) and the fencing recipe's epoch guard, each connected
directly and through pgbouncer in transaction mode.

``test_coordinator.py`` runs the shared cases against ``postgresql`` and ``pgbouncer`` (cold
start of five, SIGKILL, stop/resign handover, link cut, server killed and restarted, a paused
leader whose old epoch is refused, a client whose clock is a day off).

Servers come from ``coordservers.py`` (one per module); nodes are processes on lab hosts.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_coordinator import TTL, _start

from cluster import Cluster, check_pairing
from coordservers import PG_DATABASE, PG_PORT, PG_USER, POSTGRESQL_BACKENDS, ServerPool, ServerSet
from netlab import Host, Lab
from recipes import fencing_recipe

pytestmark = pytest.mark.lab


@pytest.fixture
def direct(lab: Lab, coordinator_servers: ServerPool) -> ServerSet:
    return coordinator_servers.get(lab, "postgresql", 1)


@pytest.fixture(params=POSTGRESQL_BACKENDS)
def either(request: pytest.FixtureRequest, lab: Lab, coordinator_servers: ServerPool) -> ServerSet:
    """PostgreSQL, connected directly and through pgbouncer in transaction mode."""
    return coordinator_servers.get(lab, request.param, 1)


def _terminate(servers: ServerSet) -> int:
    """``pg_terminate_backend`` on every connection to the test database but this one: the
    nodes' connections (behind pgbouncer: its connections to the server)."""
    import psycopg

    host = servers.hosts[0]

    def terminate() -> int:
        with psycopg.connect(host=host.address, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (PG_DATABASE,),
            ).fetchall()
            return len(rows)

    return host.call_in_namespace(terminate, timeout=10)


def test_terminated_connections_are_replaced_and_leadership_stays_single(
    cluster: Cluster, hosts: list[Host], either: ServerSet
) -> None:
    _start(cluster, hosts, either, 3)
    first = cluster.wait_agreement(timeout=20)
    assert _terminate(either) > 0
    # every node reconnects; the leadership goes on (same term) or a new one starts: never two
    second = cluster.wait_agreement(timeout=TTL + 10)
    assert second.leader == first.leader or second.term > first.term
    assert cluster.leader_overlap() == 0.0
    check_pairing(cluster.all_events())


def test_requests_served_counts_the_test_database_s_transactions(direct: ServerSet) -> None:
    assert direct.requests_served() >= 0


def test_the_epoch_guard_refuses_an_older_epoch(either: ServerSet) -> None:
    """examples/fencing.py's PostgreSQLEpochGuard: a write under an older epoch changes nothing
    (through pgbouncer too: one autocommit statement, no prepared statement)."""
    from followtheleader import FencingToken

    recipe = fencing_recipe()
    host = either.hosts[0]
    dsn = either.url

    def run() -> tuple[bool, bool, bool, Any]:
        guard = recipe.PostgreSQLEpochGuard(dsn, name="epoch-test-" + either.backend)
        new = guard.write(FencingToken(5, 0, "a", 0), "from 5")
        old = guard.write(FencingToken(4, 9, "b", 0), "from 4")
        same = guard.write(FencingToken(5, 0, "a", 0), "again 5")
        return new, old, same, guard.read()

    assert host.call_in_namespace(run, timeout=30) == (True, False, True, (5, "again 5"))


def test_a_unix_socket_directory_as_host(direct: ServerSet) -> None:
    """libpq's form for a local server: the percent-encoded socket directory as the host
    (Django's HOST "/var/run/postgresql"), and a user without a password. The socket is a
    file in the server's own directory: this elector sends nothing over any network."""
    import threading
    import urllib.parse

    from followtheleader import elect

    url = f"postgresql://{PG_USER}@{urllib.parse.quote(direct.dir, safe='')}:{PG_PORT}/{PG_DATABASE}"
    elector = elect("unix-socket-group", coordinator=url, coordinator_ttl=TTL)
    led = threading.Event()
    elector.on("leader", lambda *_: led.set())
    elector.start()
    try:
        assert led.wait(20), "no leadership through the Unix socket"
        assert elector.is_leader and elector.fencing_token is not None
    finally:
        elector.stop()
    assert not elector.is_leader


@pytest.fixture
def pooled(lab: Lab, coordinator_servers: ServerPool) -> ServerSet:
    return coordinator_servers.get(lab, "pgbouncer", 1)


POLLED_CRASH_MARGIN = 0.5
"""Seconds past the TTL by which, behind pgbouncer, the survivors agree on a SIGKILLed leader's
successor: less than one renewal period (TTL / 5 = 0.6 s). They read again just after its row
expires and, having found it vacant, soon after (0.05 s, then 0.1 s): a few round trips. Reading
only once per period, they took up to two periods more (the successor's poll, then the others')."""


def test_behind_pgbouncer_a_sigkilled_leader_s_successor_is_agreed_on_soon_after_its_row_expires(
    cluster: Cluster, hosts: list[Host], pooled: ServerSet
) -> None:
    _start(cluster, hosts, pooled, 3)
    first = cluster.wait_agreement(timeout=20)
    killed_at = cluster.process_of(first.leader).kill()
    second = cluster.wait_agreement(timeout=TTL + 10, other_than=first.leader, after_term=first.term)
    failover = second.time - killed_at
    assert failover <= TTL + POLLED_CRASH_MARGIN, f"failover took {failover:.3f} s (TTL {TTL} s)"
    assert second.leader == "c1"
    assert cluster.leader_overlap() == 0.0
    check_pairing(cluster.all_events())
