"""The Redis driver's own cases (issue 21); what every driver does is in test_driver_contract.py
and test_coordinator.py (cold start of five, SIGKILL, stop/resign handover, link cut, server
killed and restarted without persistence run there against ``redis`` too).

* A ``redis-server`` of this module's own on a Unix socket (``--port 0``: no TCP), killed and
  restarted with and without persistence: fencing tokens never repeat.
* Lab: a leader stopped (SIGSTOP) past its TTL, then continued: a successor leads first, the
  old leader demotes, and a write with its old token is refused by the fencing recipe.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from followtheleader import FencingToken, elect
from followtheleader._coordinators.base import CoordinatorError, make_coordinator, parse_coordinator
from followtheleader._core.model import Member

from cluster import Cluster, check_pairing, leader_overlap
from coordservers import ServerPool, make_certificates, unavailable_reason
from netlab import Host, Lab

DEADLINE = 20.0


def _skip_reason() -> str | None:
    return unavailable_reason("redis")


class UnixRedis:
    """A redis-server on a Unix socket of a temporary directory; :meth:`restart` kills it
    (SIGKILL) and starts it again with the same settings."""

    def __init__(self, directory: Path, appendonly: bool) -> None:
        self.appendonly = appendonly
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.argv = ["redis-server", "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        self.argv += ["--save", "", "--dir", str(directory), "--logfile", str(directory / "redis.log")]
        self.argv += ["--appendonly", "yes" if appendonly else "no", "--appendfsync", "always"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def client(self) -> Any:
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)  # polling a server's socket from outside: no event to wait on

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture(params=[False, True], ids=["no-persistence", "appendonly"])
def unix_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UnixRedis]:
    if reason := _skip_reason():
        pytest.skip(reason)
    server = UnixRedis(tmp_path, appendonly=request.param)
    try:
        yield server
    finally:
        server.kill()


def _claim_once(url: str, node_id: str) -> int:
    """One member claims the vacant leadership and releases it; its term."""
    url = url if "prefix=" in url else url + "?prefix=/tokens"
    coordinator = make_coordinator(parse_coordinator(url), "g", Member(node_id), 5.0)
    try:
        coordinator.open()
        coordinator.join()
        term = coordinator.claim()
        assert term is not None
        coordinator.release(term)
        return term
    finally:
        coordinator.close()


def test_tokens_never_repeat_across_restarts_with_or_without_persistence(unix_redis: UnixRedis) -> None:
    with unix_redis.client() as client:
        seconds, micros = client.time()
    first = _claim_once(unix_redis.url, "a")
    assert first > (seconds * 1_000_000 + micros), "a missing counter starts from the server's time in µs"
    second = _claim_once(unix_redis.url, "b")
    assert second == first + 1
    unix_redis.restart()  # SIGKILL: without persistence the counter is gone
    with unix_redis.client() as client:
        kept = client.exists("/tokens/g/fence")
    third = _claim_once(unix_redis.url, "c")
    assert third > second
    assert bool(kept) == unix_redis.appendonly
    if kept:  # appendonly, fsync always: the counter survived, it goes on
        assert third == second + 1


def test_unix_socket_electors_elect_one_and_hand_over_on_stop(unix_redis: UnixRedis) -> None:
    electors = [
        elect("unixgroup", coordinator=unix_redis.url, coordinator_ttl=3.0, node_id=f"u{i}", priority=i).start()
        for i in range(3)
    ]
    try:
        deadline = time.monotonic() + DEADLINE
        while not electors[2].is_leader:
            assert time.monotonic() < deadline, "no leader"
            time.sleep(0.01)  # polling the elector's state: the test's own thread has no event to wait on
        first = electors[2].fencing_token
        assert first is not None
        electors[2].stop()
        while not electors[1].is_leader:
            assert time.monotonic() < deadline, "no handover"
            time.sleep(0.01)
        assert electors[1].fencing_token is not None and electors[1].fencing_token.term > first.term
        assert not electors[0].is_leader
    finally:
        for elector in electors:
            elector.stop()


# --------------------------------------------------------------------- lab: a paused leader


@pytest.mark.lab
def test_a_paused_leader_demotes_and_its_old_token_is_refused(
    cluster: Cluster, hosts: list[Host], lab: Lab, coordinator_servers: ServerPool
) -> None:
    servers = coordinator_servers.get(lab, "redis", 1)
    ttl = 3.0
    options = {"coordinator": servers.url, "coordinator_ttl": ttl}
    processes = [
        cluster.spawn(host, wait_go=True, node_ids=[f"c{i}"], options={**options, "priority": i})
        for i, host in enumerate(hosts[:3])
    ]
    cluster.wait_ready()
    for process in processes:
        process.send("go")
    first = cluster.wait_agreement(timeout=DEADLINE)
    old = cluster.process_of(first.leader)
    old.proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()

    def others_lead() -> tuple[str, int] | None:
        roles = {node: r for node, r in cluster.roles_locked().items() if node != first.leader}
        leaders = [(node, r.term) for node, r in roles.items() if r.kind == "leader" and r.term > first.term]
        return leaders[0] if leaders else None

    try:
        successor, term = cluster.wait(others_lead, ttl + DEADLINE, "a successor while the leader is stopped")
    finally:
        continued_at = time.monotonic()
        old.proc.send_signal(signal.SIGCONT)
    assert continued_at - stopped_at > ttl * 0.8  # the successor waited for the stopped leader's key to expire
    second = cluster.wait_agreement(timeout=DEADLINE, after_term=first.term)
    assert (second.leader, second.term) == (successor, term)
    demotions = cluster.wait(
        lambda: [e for e in old.events() if e["kind"] != "leader" and e["t"] >= stopped_at] or None,
        DEADLINE,
        "the paused leader to demote itself once continued",
    )
    assert demotions
    # A stopped process cannot say it stopped leading: on the shared clock its leader role ends
    # only once it runs again (its lease ended at its deadline, the ticker says so at once).
    # That window is what the fencing token is for.
    assert demotions[0]["kind"] == "reelection" and demotions[0]["t"] - continued_at < 1.0
    assert leader_overlap([e for e in cluster.all_events() if e["node"] != first.leader]) == 0.0
    check_pairing(cluster.all_events())
    # The fencing recipe (examples/fencing.py): the successor's write goes, the old leader's is refused.
    spec = importlib.util.spec_from_file_location(
        "fencing_recipe", Path(__file__).parent.parent / "examples/fencing.py"
    )
    assert spec is not None and spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    server_host = servers.servers[0].host

    def fenced_writes() -> tuple[bool, bool]:
        import redis

        with redis.Redis(host=server_host.address, port=6379, socket_timeout=5) as client:
            guard = recipe.RedisGuard(client, "fenced:paused")
            new = guard.write(FencingToken(second.term, int(second.leader[1:]), second.leader, 0), "successor")
            stale = guard.write(FencingToken(first.term, int(first.leader[1:]), first.leader, 0), "paused leader")
            return new, stale

    assert server_host.call_in_namespace(fenced_writes, timeout=30) == (True, False)


def test_redis_binaries_or_a_clear_skip() -> None:
    reason = _skip_reason()
    if shutil.which("redis-server") is None:
        assert reason and "redis-server" in reason


# --------------------------------------------------------------------- rediss:// (TLS)


def _certificates(directory: Path) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1: (ca, cert, key) paths."""
    certificates = make_certificates(str(directory), ["127.0.0.1"])
    return certificates.ca, certificates.server_cert, certificates.server_key


def test_rediss_url_talks_tls_and_refuses_an_unknown_certificate(tmp_path: Path) -> None:
    if reason := _skip_reason():
        pytest.skip(reason)
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    import socket

    ca, cert, key = _certificates(tmp_path)
    with socket.socket() as probe:  # a free loopback port (the server listens on loopback only)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["redis-server", "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port), "--save", ""]
    argv += ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
    argv += ["--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log")]
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                assert _claim_once(url.replace("?", "?prefix=/tls&"), "t") > 0
                break
            except CoordinatorError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the server is starting: polling its port, no event to wait on
        other = tmp_path / "other"
        other.mkdir()
        other_ca, _, _ = _certificates(other)
        coordinator = make_coordinator(
            parse_coordinator(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={other_ca}"), "g", Member("x"), 5.0
        )
        with pytest.raises(CoordinatorError, match=r"(?i)certificate|SSL"):
            coordinator.open()
        coordinator.close()
    finally:
        server.kill()
        server.wait(10)


# --------------------------------------------------------------------- a client with a wrong clock


@pytest.mark.lab
def test_a_client_whose_wall_clock_is_a_day_off_elects_and_hands_over(
    cluster: Cluster, hosts: list[Host], lab: Lab, coordinator_servers: ServerPool
) -> None:
    """Expiries are the server's (PX, and member entries scored by the server's TIME): a
    member whose wall clock is wrong (libfaketime, monotonic clock left alone so that the
    shared clock of the events stays true) leads and hands over like the others."""
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (apt-get install faketime)")
    servers = coordinator_servers.get(lab, "redis", 1)
    options = {"coordinator": servers.url, "coordinator_ttl": 3.0}
    skewed = cluster.spawn(
        hosts[2],
        node_ids=["c2"],
        options={**options, "priority": 2},
        wrapper=["faketime", "-f", "-1d"],
        env={"FAKETIME_DONT_FAKE_MONOTONIC": "1"},
    )
    first = cluster.wait_agreement(timeout=DEADLINE)
    assert first.leader == "c2" and skewed.alive
    for i in (0, 1):  # the others follow it (a leadership is sticky)
        cluster.spawn(hosts[i], node_ids=[f"c{i}"], options={**options, "priority": i})
    cluster.wait(
        lambda: [r.leader for r in cluster.roles_locked().values()] == ["c2"] * 3 or None,
        DEADLINE,
        "the others to follow the skewed leader",
    )
    sent = cluster.process_of("c2").send("stop 0")
    second = cluster.wait_agreement(timeout=DEADLINE, other_than="c2", after_term=first.term)
    assert second.leader == "c1" and second.time - sent < 0.5
    assert cluster.leader_overlap() == 0.0
    check_pairing(cluster.all_events())


@pytest.mark.parametrize("url", ["redis://127.0.0.1/notanumber", "unix:///tmp/r.sock?db=x"])
def test_a_database_that_is_no_number_fails_at_elect(url: str) -> None:
    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis-py is not installed")
    with pytest.raises(ValueError, match="a Redis database is a number"):
        elect("g", coordinator=url)
