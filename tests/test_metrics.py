"""Elector.stats() and followtheleader.metrics, with the in-memory driver (no root, no network
but loopback for the /metrics server)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest

from followtheleader import Elector, elect
from followtheleader._core.model import Event, State
from followtheleader._runtime.stats import Stats

pytest.importorskip("prometheus_client")

from prometheus_client import generate_latest

from followtheleader.metrics import make_registry, serve_metrics

TIMEOUT = 10.0
TTL = 2.0


def store() -> str:
    return "memory://m" + os.urandom(4).hex()


def member(url: str, node_id: str) -> Elector:
    return elect("g", coordinator=url, node_id=node_id, coordinator_ttl=TTL)


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        threading.Event().wait(0.02)


def test_stats_count_election_and_failover() -> None:
    url = store()
    a, b = member(url, "a"), member(url, "b")
    with a, b:
        assert a.wait_for_leader(TIMEOUT) is not None and b.wait_for_leader(TIMEOUT) is not None
        leader, other = (a, b) if a.is_leader else (b, a)
        wait_until(lambda: other.stats()["members"] == 2)
        figures = leader.stats()
        assert figures["is_leader"] is True and figures["term"] >= 1
        assert figures["leadership_changes"].get("leader") == 1
        assert figures["wait_for_leader"]["election"]["count"] == 1
        assert figures["wait_for_leader"]["failover"]["count"] == 0
        assert isinstance(figures["counters"], dict) and figures["io"].get("coordinator-errors", 0) == 0
        leader.stop()
        wait_until(lambda: other.is_leader)
        wait_until(lambda: other.stats()["wait_for_leader"]["failover"]["count"] == 1)
        figures = other.stats()
        assert figures["leadership_changes"]["reelection"] >= 1
        assert figures["leadership_changes"]["leader"] == 1
        histogram = figures["wait_for_leader"]["failover"]
        assert histogram["buckets"][60.0] == 1 and 0 <= histogram["sum"] < TIMEOUT


def test_stats_keep_unread_waits_only_once_asked() -> None:
    """Pure: waits are kept for drain_waits() only after keep_waits(), each read once."""
    stats = Stats()

    def settle(kind: str, state: State, previous: State, at: float) -> None:
        stats.event(Event(kind, "n", state, previous, 1, None, "test", at))

    stats.started(10.0)
    settle("leader", State.LEADER, State.ELECTING, 10.5)
    assert stats.drain_waits() == []  # not kept before keep_waits()
    stats.keep_waits()
    settle("reelection", State.ELECTING, State.LEADER, 20.0)
    settle("follower", State.FOLLOWER, State.ELECTING, 22.0)
    assert stats.drain_waits() == [("failover", 2.0)]
    assert stats.drain_waits() == []
    assert stats.snapshot()["wait_for_leader"]["election"]["count"] == 1


def test_collector_output_labels_each_elector() -> None:
    url = store()
    a, b = member(url, "a"), member(url, "b")
    with a, b:
        assert a.wait_for_leader(TIMEOUT) is not None and b.wait_for_leader(TIMEOUT) is not None
        text = generate_latest(make_registry([a, b])).decode()
    assert 'followtheleader_is_leader{group="g",node="a"}' in text
    assert 'followtheleader_is_leader{group="g",node="b"}' in text
    leaders = [line for line in text.splitlines() if line.startswith("followtheleader_is_leader{")]
    assert sum(float(line.split()[-1]) for line in leaders) == 1.0
    assert 'followtheleader_leadership_changes_total{group="g",kind="leader"' in text
    assert 'followtheleader_coordinator_errors_total{group="g",node="a"} 0.0' in text
    assert 'followtheleader_wait_for_leader_seconds_count{group="g",node="a",phase="election"} 1.0' in text


def test_serve_metrics_serves_and_stops_cleanly() -> None:
    url = store()
    with member(url, "a") as a:
        assert a.wait_for_leader(TIMEOUT) is not None
        server = serve_metrics([a], 0)
        assert any(t.name == "followtheleader-metrics" for t in threading.enumerate())
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=TIMEOUT).read()
        finally:
            server.stop()
    assert b'followtheleader_is_leader{group="g",node="a"} 1.0' in body
    assert not any(t.name == "followtheleader-metrics" for t in threading.enumerate())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_elect_serves_metrics_port() -> None:
    port = free_port()
    argv = [sys.executable, "-m", "followtheleader", "elect", "cligroup"]
    argv += ["--coordinator", store(), "--node-id", "solo", "--json", "--metrics-port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert '"leader"' in proc.stdout.readline()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT).read()
        assert b'followtheleader_is_leader{group="cligroup",node="solo"} 1.0' in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


CHILD = """
import os, sys, threading, time
from followtheleader import elect
from followtheleader.metrics import track_multiprocess
elector = elect("mp", coordinator="memory://mp", node_id=sys.argv[1], coordinator_ttl=2.0)
track_multiprocess(elector)
with elector:
    assert elector.wait_for_leader(10) is not None
    # counts that grow without an event (as datagrams do on a LAN backend) reach the shared
    # files through the sync thread
    elector._backend.io.add("heartbeat-sent", 5)
    deadline = time.monotonic() + 10  # the sync thread starts at the first callback
    while not (syncs := [t for t in threading.enumerate() if t.name == "followtheleader-metrics-sync"]):
        assert time.monotonic() < deadline, "no sync thread"
        threading.Event().wait(0.02)
    assert len(syncs) == 1, "one sync thread per tracked elector"
    print("ready", flush=True)
    sys.stdin.readline()
for thread in syncs:
    thread.join(5)
    assert not thread.is_alive(), "sync thread left running"
print("clean", flush=True)
"""


def series(text: str, name: str) -> dict[str, float]:
    """The samples of ``name`` in an exposition text, by their label text."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            found[labels] = float(value)
    return found


def test_multiprocess_mode_two_processes(tmp_path: object) -> None:
    """Two processes write to one PROMETHEUS_MULTIPROC_DIR; a third reads both: gauges, counters
    (including one grown without an event) and the wait histogram, summed over both; a dead
    one's is_leader drops out (livesum) once marked dead, its counts stay."""
    directory = str(tmp_path)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, node], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        for node in ("p1", "p2")
    ]
    read = [
        sys.executable,
        "-c",
        "from followtheleader.metrics import make_registry; "
        "from prometheus_client import generate_latest; print(generate_latest(make_registry([])).decode())",
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        scraped: list[str] = []

        def scrape_shows_datagrams() -> bool:
            scraped[:] = [subprocess.run(read, env=env, capture_output=True, text=True, timeout=30, check=True).stdout]
            sent = series(scraped[0], "followtheleader_heartbeat_datagrams_total")
            return sum(v for k, v in sent.items() if 'direction="sent"' in k) == 10.0

        wait_until(scrape_shows_datagrams, timeout=20)  # both processes' sync threads wrote 5
        text = scraped[0]
        assert 'followtheleader_is_leader{group="mp",node="p1"} 1.0' in text
        assert 'followtheleader_is_leader{group="mp",node="p2"} 1.0' in text  # one memory store each
        assert 'followtheleader_leadership_changes_total{group="mp",kind="leader",node="p1"} 1.0' in text
        changes = series(text, "followtheleader_leadership_changes_total")
        assert sum(v for k, v in changes.items() if 'kind="leader"' in k) == 2.0
        waits = series(text, "followtheleader_wait_for_leader_seconds_count")
        assert sum(v for k, v in waits.items() if 'phase="election"' in k) == 2.0
        inf = series(text, "followtheleader_wait_for_leader_seconds_bucket")
        assert sum(v for k, v in inf.items() if 'le="+Inf"' in k and 'phase="election"' in k) == 2.0
        assert sum(series(text, "followtheleader_wait_for_leader_seconds_sum").values()) >= 0.0
        for name in ("heartbeat_dropped", "trouble", "coordinator_errors"):
            assert all(v == 0.0 for v in series(text, f"followtheleader_{name}_total").values()), name
        assert 'followtheleader_heartbeat_dropped_total{group="mp",node="p2",reason="replayed"} 0.0' in text
        assert 'followtheleader_coordinator_errors_total{group="mp",node="p1"} 0.0' in text
        first = children[0]
        assert first.stdin is not None and first.stdout is not None
        first.stdin.close()
        assert first.stdout.readline().strip() == "clean"  # its sync thread ended with the elector
        assert first.wait(TIMEOUT) == 0
        mark = f"from prometheus_client import multiprocess; multiprocess.mark_process_dead({first.pid})"
        subprocess.run([sys.executable, "-c", mark], env=env, timeout=30, check=True)
        text = subprocess.run(read, env=env, capture_output=True, text=True, timeout=30, check=True).stdout
        assert 'node="p1"} 1.0' not in text.split("followtheleader_is_leader{")[1].split("# HELP")[0]
        assert 'followtheleader_is_leader{group="mp",node="p2"} 1.0' in text
        # counters and the histogram keep a dead process's counts (prometheus-client sums them)
        changes = series(text, "followtheleader_leadership_changes_total")
        assert sum(v for k, v in changes.items() if 'kind="leader"' in k) == 2.0
        assert sum(series(text, "followtheleader_wait_for_leader_seconds_count").values()) == 2.0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


@pytest.mark.parametrize("command", [["elect", "busy"], ["run", "busy"]])
def test_cli_metrics_port_in_use_is_a_clear_error(command: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        argv = [sys.executable, "-m", "followtheleader", *command, "--coordinator", store(), "--metrics-port", port]
        if command[0] == "run":
            argv += ["--", "true"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("Address already in use"), result.stderr
