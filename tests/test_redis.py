"""The Redis driver's own cases (issue 21); what every driver does is in test_driver_contract.py
and test_coordinator.py (cold start of five, SIGKILL, stop/resign handover, link cut, server
killed and restarted without persistence run there against ``redis`` too).

* A ``redis-server`` of this module's own on a Unix socket (``--port 0``: no TCP), killed and
  restarted with and without persistence: fencing tokens never repeat.

The lab cases of a leader stopped (SIGSTOP) past its TTL and of a client whose wall clock is a
day off run in test_coordinator.py, for Redis, PostgreSQL and PostgreSQL behind pgbouncer.
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

from followtheleader import elect
from followtheleader._coordinators.base import CoordinatorError, make_coordinator, parse_coordinator
from followtheleader._core.model import Member

from coordservers import make_certificates, unavailable_reason

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


@pytest.mark.parametrize("url", ["redis://127.0.0.1/notanumber", "unix:///tmp/r.sock?db=x"])
def test_a_database_that_is_no_number_fails_at_elect(url: str) -> None:
    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis-py is not installed")
    with pytest.raises(ValueError, match="a Redis database is a number"):
        elect("g", coordinator=url)
