"""examples/prometheus_metrics.py, run for real: three copies on three lab hosts, /metrics read
from each; one leader among them, and a failover shows in the survivors' counters."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netlab import Host, Lab

pytest.importorskip("prometheus_client")

pytestmark = pytest.mark.lab

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "prometheus_metrics.py"
PORT = 9464
TIMEOUT = 20.0
SAMPLE = re.compile(r"^(?P<name>\w+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def scrape(host: Host) -> dict[str, float]:
    """The samples of followtheleader metrics served by the copy on ``host``, by name and labels
    without the group and node labels (one copy per host)."""

    def fetch() -> str:
        with urllib.request.urlopen(f"http://{host.address}:{PORT}/metrics", timeout=5) as response:
            return str(response.read().decode())

    samples = {}
    for line in host.call_in_namespace(fetch, timeout=10).splitlines():
        match = SAMPLE.match(line)
        if match and match["name"].startswith("followtheleader_"):
            labels = ",".join(p for p in match["labels"].split(",") if not p.startswith(("group=", "node=")))
            samples[f"{match['name']}{{{labels}}}"] = float(match["value"])
    return samples


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            if condition():
                return
        except OSError:
            pass  # the server is not up yet
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.1)


@pytest.fixture
def copies(lab: Lab) -> Iterator[dict[Host, subprocess.Popen[str]]]:
    group = "prom" + os.urandom(3).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWTHELEADER_")}
    started: dict[Host, subprocess.Popen[str]] = {}
    try:
        for name in ("n0", "n1", "n2"):
            host = lab.hosts[name]
            extra = {"FTL_GROUP": group, "METRICS_PORT": str(PORT), "METRICS_ADDRESS": host.address}
            started[host] = host.popen(
                [sys.executable, str(EXAMPLE)],
                env={**env, **extra, "PYTHONUNBUFFERED": "1"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        yield started
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def leaders(hosts: list[Host]) -> list[Host]:
    return [host for host in hosts if scrape(host)["followtheleader_is_leader{}"] == 1.0]


def test_one_leader_in_metrics_and_failover_counted(copies: dict[Host, subprocess.Popen[str]]) -> None:
    hosts = list(copies)

    def settled() -> bool:
        return len(leaders(hosts)) == 1 and all(scrape(h)["followtheleader_members{}"] == 3 for h in hosts)

    wait_for(settled, "one leader that all three count")
    (leader,) = leaders(hosts)
    survivors = [host for host in hosts if host is not leader]
    copies[leader].send_signal(signal.SIGTERM)
    assert copies[leader].wait(10) == 0
    failover = 'followtheleader_wait_for_leader_seconds_count{phase="failover"}'
    wait_for(lambda: all(scrape(h).get(failover) == 1.0 for h in survivors), "a failover on both survivors")
    wait_for(lambda: len(leaders(survivors)) == 1, "one new leader")
    for host in survivors:
        samples = scrape(host)
        assert samples['followtheleader_leadership_changes_total{kind="reelection"}'] >= 1
        assert samples["followtheleader_term{}"] >= 2
        assert samples['followtheleader_heartbeat_datagrams_total{direction="sent"}'] > 0
        assert samples['followtheleader_heartbeat_datagrams_total{direction="received"}'] > 0
        assert samples['followtheleader_heartbeat_dropped_total{reason="unauthenticated"}'] == 0
