"""The command line, run as a subprocess inside lab namespaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from netlab import Lab

pytestmark = pytest.mark.lab


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "followtheleader", *args]


def test_elect_prints_events_and_hands_over_on_sigterm(lab: Lab) -> None:
    group = "cli" + os.urandom(3).hex()
    leader = lab.hosts["n0"].popen(
        cli("elect", group, "--node-id", "z-cli", "--json"), stdout=subprocess.PIPE, text=True
    )
    follower = lab.hosts["n1"].popen(cli("elect", group, "--node-id", "a-cli"), stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(leader.stdout.readline())
        assert first["event"] == "leader" and first["term"] == 1 and first["node_id"] == "z-cli"
        assert follower.stdout.readline().startswith("joined group")
        line = follower.stdout.readline()
        assert " follower " in line and "leader z-cli at 198.18." in line, line
        leader.send_signal(signal.SIGTERM)
        assert leader.wait(10) == 0
        last = json.loads(leader.stdout.readline())
        assert last["event"] == "reelection" and last["state"] == "stopped"
        assert " reelection " in follower.stdout.readline()
        promoted = follower.stdout.readline()
        assert " leader " in promoted and "term 2" in promoted, promoted
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        for proc in (leader, follower):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_bad_arguments_exit_2_with_one_line_error(lab: Lab) -> None:
    result = lab.hosts["n0"].run(cli("elect", "x", "--interval", "0"), check=False)
    assert result.returncode == 2
    assert "option 'interval' must be from 0.01 to 60 seconds" in result.stderr
    assert lab.hosts["n0"].run(cli(), check=False).returncode == 2
