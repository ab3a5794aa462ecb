"""examples/celery_beat/: ``followtheleader run --coordinator unix://... -- celery beat`` on two
nodes, for real: a redis-server of the test's own on a Unix socket (no TCP) is both the Celery
broker and the coordinator. Exactly one ``celery beat`` runs and sends its ticks to the
broker's queue; when its node stops (SIGTERM), the other node's beat takes over."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from teardown import terminate_or_kill

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "celery_beat"
DEADLINE = 30.0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _beats(pid: int) -> list[int]:
    """The ``celery beat`` processes started by supervisor ``pid``."""
    found = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"beat" in cmdline:
            found.append(child)
    return found


def _wait(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # polling processes and a queue from outside: no event to wait on


@pytest.fixture
def redis_socket(tmp_path: Path) -> Iterator[Path]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    if importlib.util.find_spec("celery") is None or importlib.util.find_spec("redis") is None:
        pytest.skip("celery and redis are not installed (pip install celery redis)")
    sock = tmp_path / "redis.sock"
    argv = ["redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700", "--save", ""]
    server = subprocess.Popen([*argv, "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log")])
    try:
        _wait(sock.exists, "redis-server's socket")
        yield sock
    finally:
        server.kill()
        server.wait(10)


def test_one_celery_beat_in_the_group_and_the_other_takes_over(redis_socket: Path, tmp_path: Path) -> None:
    import redis

    env = {
        **os.environ,
        "CELERY_BROKER_URL": f"redis+socket://{redis_socket}",
        "TICK_SECONDS": "0.5",
        "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    coordinator = f"unix://{redis_socket}?prefix=/beat-election"
    supervisors = []
    for node in ("a", "b"):
        argv = [sys.executable, "-m", "followtheleader", "run", "beat", "--coordinator", coordinator]
        argv += ["--coordinator-ttl", "3", "--node-id", node, "--grace", "5", "--"]
        argv += [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "beat",
            "--schedule",
            str(tmp_path / f"schedule-{node}"),
        ]
        log = open(tmp_path / f"{node}.log", "wb")  # noqa: SIM115 - closed with the process below
        supervisors.append((subprocess.Popen(argv, env=env, cwd=EXAMPLE, stdout=log, stderr=subprocess.STDOUT), log))
    client = redis.Redis(unix_socket_path=str(redis_socket))
    try:
        _wait(lambda: sum(len(_beats(p.pid)) for p, _ in supervisors) == 1, "one celery beat")
        _wait(lambda: client.llen("celery") >= 3, "beat's ticks in the broker's queue")
        for _ in range(10):  # still exactly one, over a few ticks
            assert sum(len(_beats(p.pid)) for p, _ in supervisors) == 1
            time.sleep(0.1)  # sampling the process tree: nothing to wait on
        leader, log = next((p, log) for p, log in supervisors if _beats(p.pid))
        other = next(p for p, _ in supervisors if p is not leader)
        leader.send_signal(signal.SIGTERM)
        assert leader.wait(DEADLINE) is not None
        _wait(lambda: len(_beats(other.pid)) == 1, "the other node's celery beat")
        queued = client.llen("celery")
        _wait(lambda: client.llen("celery") > queued, "ticks from the new beat")
    finally:
        for process, log in supervisors:
            terminate_or_kill(process, DEADLINE)
            log.close()
        client.close()
