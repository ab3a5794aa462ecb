"""A group that mixes nodes of release 0.2.0 with nodes of this checkout, in the namespace lab.

Release 0.2.0 is installed by pip from this checkout's own git history into a temporary
directory, offline (no package index: the build tools come from the test extra); its node
processes import it from there (``NodeProcess(package_path=...)``), and every process
reports the package it imported.
The wire protocol is unchanged since 0.2.0, so a mixed group must behave as one of a single
release: one leader, a handover through the resign message, a failover after SIGKILL, with
an old node leading new ones and a new node leading old ones along the way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

import followtheleader

from cluster import Cluster, NodeProcess, check_pairing
from netlab import Host, Lab

pytestmark = pytest.mark.lab

# Release 0.2.0: the commit whose package is the 0.2.0 of the changelog (the library was
# restructured after it, with the same wire protocol).
RELEASE_0_2_0 = "6587e3a1280b32c246f2416c7b2cb2785a9f39ce"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "release-interop-secret"

# (node id, priority, of release 0.2.0): priorities choose the leaders in turn. old-a leads
# first (an old leader of new followers); when it stops, new-b (a new leader of old
# followers); when new-b is killed, old-c.
GROUP = [("old-a", 3, True), ("new-b", 2, False), ("old-c", 1, True), ("new-d", 0, False)]
NODES = [node for node, _, _ in GROUP]
OLD = {node for node, _, old in GROUP if old}


@pytest.fixture(scope="module")
def release_0_2_0() -> Iterator[str]:
    """A directory holding the ``followtheleader`` package of release 0.2.0, from git."""
    if shutil.which("git") is None:
        pytest.fail("this test installs release 0.2.0 from the checkout's git history, and git is not installed")
    found = subprocess.run(
        ["git", "-C", ROOT, "cat-file", "-e", f"{RELEASE_0_2_0}^{{commit}}"], capture_output=True, text=True
    )
    if found.returncode != 0:
        pytest.fail(
            f"commit {RELEASE_0_2_0} (release 0.2.0) is not in the git history of {ROOT}: this test installs the "
            f"release from it, so it needs a git clone with the full history (not a source archive or a shallow "
            f"clone: git fetch --unshallow). git said: {found.stderr.strip()}"
        )
    with tempfile.TemporaryDirectory(prefix="ftl-release-0.2.0-") as target:
        install = subprocess.run(
            [
                # offline: the code comes from git, the build tools from this environment
                # (setuptools and wheel are in the test extra); no package index is asked
                *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-cache-dir"),
                *("--no-index", "--no-build-isolation"),
                *("--target", target, f"git+file://{ROOT}@{RELEASE_0_2_0}"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if install.returncode != 0:
            pytest.fail(f"pip could not install release 0.2.0 from git:\n{install.stdout}\n{install.stderr}")
        yield target


def start_mixed(cluster: Cluster, hosts: list[Host], release: str, options: dict[str, Any]) -> list[NodeProcess]:
    """The nodes of GROUP, one a host, started at once once each has shown the release it imported."""
    processes = [
        cluster.spawn(
            host,
            wait_go=True,
            node_ids=[node],
            options={**options, "priority": priority},
            package_path=release if old else None,
        )
        for host, (node, priority, old) in zip(hosts, GROUP, strict=True)
    ]
    cluster.wait_ready()
    for process in processes:
        if process.node_ids[0] in OLD:
            expected = (os.path.join(release, "followtheleader"), "0.2.0")
        else:
            expected = (os.path.join(ROOT, "followtheleader"), followtheleader.__version__)
        imported = (process.package, process.version)
        assert imported == expected, f"{process.node_ids[0]} imported {imported}, not {expected}"
    for process in processes:
        process.send("go")
    return processes


def hand_over_and_fail_over(cluster: Cluster, processes: list[NodeProcess]) -> None:
    """The group agrees on old-a, hands over to new-b on stop, fails over to old-c on SIGKILL."""
    first = cluster.wait_agreement()
    assert (first.leader, first.term) == ("old-a", 1)
    for process in processes:
        cluster.wait_members(process, NODES)

    old_leader = cluster.process_of("old-a")
    old_leader.send("stop 0")
    second = cluster.wait_agreement(other_than="old-a", after_term=first.term)
    assert (second.leader, second.term) == ("new-b", 2)
    assert cluster.wait_stopped(old_leader)["result"] is True
    reasons = {e["reason"] for e in cluster.all_events() if e["kind"] == "reelection" and e["node"] != "old-a"}
    assert reasons <= {"leader resigned", "leader said goodbye"}, reasons  # the resign message, not a timeout
    assert cluster.leader_overlap() == 0
    for process in processes[1:]:
        cluster.wait_members(process, NODES[1:])

    cluster.process_of("new-b").kill()
    third = cluster.wait_agreement(other_than="new-b", after_term=second.term)
    assert (third.leader, third.term) == ("old-c", 3)
    assert cluster.leader_overlap() == 0
    check_pairing(cluster.all_events())

    events = cluster.all_events()
    assert [e["node"] for e in events if e["kind"] == "leader"] == ["old-a", "new-b", "old-c"]
    led = {(e["node"] in OLD, e["leader"] in OLD) for e in events if e["kind"] == "follower"}
    assert {(False, True), (True, False)} <= led, f"(follower is old, leader is old) seen: {led}"


def trouble(cluster: Cluster, process: NodeProcess) -> dict[str, int]:
    """A node's counters of trouble (malformed or unauthenticated datagrams, send errors)."""
    counters = cluster.status(process)["counters"]
    return {key: count for key, count in counters.items() if key != "npm-pings-answered"}


def test_mixed_releases_by_mdns(release_0_2_0: str, cluster: Cluster, hosts: list[Host]) -> None:
    processes = start_mixed(cluster, hosts[:4], release_0_2_0, {})
    hand_over_and_fail_over(cluster, processes)
    for process in processes[2:]:
        assert trouble(cluster, process) == {}, process.node_ids


@pytest.mark.parametrize("secret", [None, SECRET], ids=["open", "secret"])
def test_mixed_releases_by_listed_peers(
    release_0_2_0: str, no_multicast: Lab, cluster: Cluster, hosts: list[Host], secret: str | None
) -> None:
    options = {"peers": [f"{host.address}:9001" for host in hosts[:4]], **({"secret": secret} if secret else {})}
    processes = start_mixed(cluster, hosts[:4], release_0_2_0, options)
    hand_over_and_fail_over(cluster, processes)
    for process in processes[2:]:
        assert cluster.status(process)["udp_ports"] == [9001]  # unicast only: no mDNS socket
        assert trouble(cluster, process) == {}, process.node_ids
