"""The asyncio recipes in ``examples/``, run for real with uvicorn in lab hosts (mDNS inside the lab).

Times are compared on ``time.monotonic()``: every network namespace shares that clock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import Lab

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMEOUT = 30.0
TAKEOVER = 1.5


def read_runs(log: Path) -> list[tuple[int, float]]:
    if not log.exists():
        return []
    runs = []
    for line in log.read_text(encoding="ascii").splitlines():
        pid, stamp = line.split()
        runs.append((int(pid), float(stamp)))
    return runs


def wait_runs(log: Path, until: float, deadline: float) -> list[tuple[int, float]]:
    """The runs logged, once one is stamped at or after ``until`` (polled until ``deadline``)."""
    while True:
        runs = read_runs(log)
        if runs and runs[-1][1] >= until:
            return runs
        if time.monotonic() > deadline:
            raise AssertionError(f"no job run after {until}; runs: {runs[-10:]}")
        time.sleep(0.05)  # polling a file for a condition, with a deadline


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in started:
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.lab
def test_fastapi_job_runs_on_one_worker_and_fails_over(
    lab: Lab, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    pytest.importorskip("fastapi")
    log = tmp_path / "jobs.log"
    group = "fa" + os.urandom(3).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWTHELEADER_")}
    env.update(FTL_GROUP=group, FOLLOWTHELEADER_JOB_LOG=str(log), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    argv = [str(BIN / "uvicorn"), "--app-dir", str(ROOT / "examples"), "fastapi_app:app", "--workers", "3"]
    argv += ["--host", "127.0.0.1", "--port", "8000", "--log-level", "warning"]
    for name in ("n0", "n1"):
        processes.append(
            lab.hosts[name].popen(argv, env=env, cwd=str(tmp_path), start_new_session=True)  # type: ignore[arg-type]
        )

    first = wait_runs(log, 0.0, time.monotonic() + TIMEOUT)
    settled = first[-1][1] + 3.0  # six workers have had time to join; one must write alone since
    runs = wait_runs(log, settled + 2.0, time.monotonic() + TIMEOUT)
    writers = {pid for pid, stamp in runs if stamp >= settled}
    assert len(writers) == 1, f"several workers ran the job: {writers}"
    (leader,) = writers

    killed = time.monotonic()
    os.kill(leader, signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while True:
        after = [(pid, stamp) for pid, stamp in wait_runs(log, killed, deadline) if stamp >= killed]
        others = [(pid, stamp) for pid, stamp in after if pid != leader]
        if others:
            break
        time.sleep(0.05)
    successor, took_over = others[0]
    assert took_over - killed < TAKEOVER, f"took {took_over - killed:.2f} s"
    print(f"takeover after SIGKILL: {took_over - killed:.3f} s")
    later = wait_runs(log, took_over + 2.0, time.monotonic() + TIMEOUT)
    assert {pid for pid, stamp in later if stamp > took_over} == {successor}


@pytest.mark.lab
def test_apscheduler_asyncio_runs_on_the_leader_only(
    lab: Lab, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    pytest.importorskip("apscheduler")
    log = tmp_path / "jobs.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWTHELEADER_")}
    env.update(FTL_GROUP="ap" + os.urandom(3).hex(), FOLLOWTHELEADER_JOB_LOG=str(log), PYTHONPATH=str(ROOT))
    argv = [sys.executable, str(ROOT / "examples" / "apscheduler_asyncio.py")]
    for name in ("n2", "n3"):
        processes.append(lab.hosts[name].popen(argv, env=env, cwd=str(tmp_path), start_new_session=True))

    first = wait_runs(log, 0.0, time.monotonic() + TIMEOUT)
    settled = first[-1][1] + 3.0
    runs = wait_runs(log, settled + 2.0, time.monotonic() + TIMEOUT)
    writers = {pid for pid, stamp in runs if stamp >= settled}
    assert len(writers) == 1, f"both nodes ran the job: {writers}"
    (leader,) = writers
    (leading,) = [p for p in processes if p.pid == leader]

    # SIGTERM: the leader shuts its scheduler down, then hands over; the other node takes over.
    stopped = time.monotonic()
    leading.send_signal(signal.SIGTERM)
    assert leading.wait(TIMEOUT) == 0
    later = wait_runs(log, time.monotonic() + 1.0, time.monotonic() + TIMEOUT)
    assert {pid for pid, stamp in later if stamp > stopped + 0.5} == {p.pid for p in processes} - {leader}
