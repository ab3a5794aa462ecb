"""PostgreSQL driver cases beyond the shared coordinator tests (``test_coordinator.py`` runs
those against PostgreSQL too): pgbouncer in transaction mode in front of the server, and the
server ending the leader's connection (``pg_terminate_backend``).

Servers come from ``coordservers.py`` (one per module); nodes are processes on lab hosts.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_coordinator import TTL, _start

from cluster import Cluster, check_pairing
from coordservers import PG_DATABASE, PG_PORT, PG_USER, ServerPool, ServerSet
from netlab import Host, Lab

pytestmark = pytest.mark.lab


@pytest.fixture
def direct(lab: Lab, coordinator_servers: ServerPool) -> ServerSet:
    return coordinator_servers.get(lab, "postgresql", 1)


@pytest.fixture
def bouncer(lab: Lab, coordinator_servers: ServerPool) -> ServerSet:
    return coordinator_servers.get(lab, "pgbouncer", 1)


def _terminate(servers: ServerSet) -> int:
    """``pg_terminate_backend`` on every connection but this one: the nodes' connections."""
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


def test_through_pgbouncer_cold_start_and_stop_handover_by_polling(
    cluster: Cluster, hosts: list[Host], bouncer: ServerSet
) -> None:
    """Behind a transaction pooler LISTEN hears nothing: the members read the group at every
    renewal (a fifth of the TTL), so a handover takes up to that period, not a TTL."""
    _start(cluster, hosts, bouncer, 3)
    first = cluster.wait_agreement(timeout=20)
    assert first.leader == "c2"
    sent = cluster.process_of(first.leader).send("stop 0")
    second = cluster.wait_agreement(timeout=TTL + 5, other_than=first.leader, after_term=first.term)
    assert second.time - sent < TTL * 0.2 + 1.0, f"handover took {second.time - sent:.3f} s"
    assert second.leader == "c1"
    assert cluster.leader_overlap() == 0.0
    check_pairing(cluster.all_events())


def test_terminated_connections_are_replaced_and_leadership_stays_single(
    cluster: Cluster, hosts: list[Host], direct: ServerSet
) -> None:
    _start(cluster, hosts, direct, 3)
    first = cluster.wait_agreement(timeout=20)
    assert _terminate(direct) > 0
    # every node reconnects; the leadership goes on (same term) or a new one starts: never two
    second = cluster.wait_agreement(timeout=TTL + 10)
    assert second.leader == first.leader or second.term > first.term
    assert cluster.leader_overlap() == 0.0
    check_pairing(cluster.all_events())


def test_requests_served_counts_the_test_database_s_transactions(direct: ServerSet) -> None:
    assert direct.requests_served() >= 0


def test_the_epoch_guard_refuses_an_older_epoch(direct: ServerSet) -> None:
    """examples/fencing.py's PostgreSQLEpochGuard: a write under an older epoch changes nothing."""
    import importlib.util
    import pathlib

    from followtheleader import FencingToken

    path = pathlib.Path(__file__).parent.parent / "examples" / "fencing.py"
    spec = importlib.util.spec_from_file_location("fencing_recipe_pg", path)
    assert spec is not None and spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    host = direct.hosts[0]
    dsn = f"host={host.address} port={PG_PORT} user={PG_USER} dbname={PG_DATABASE}"

    def run() -> tuple[bool, bool, bool, Any]:
        guard = recipe.PostgreSQLEpochGuard(dsn, name="epoch-test")
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
