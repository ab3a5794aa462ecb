"""The race between a new npm leader's name probing and our nodes, with the real npm package.

An npm ``followtheleader`` 2.0.9 node that decides to lead emits ``leader`` at once, then
probes its name ``<group>._ftl._udp.local.`` for 0.75 to 1 s before it announces it; any
mDNS answer that carries that name meanwhile makes it exit ("Service name is already in use
on the network"). These tests start nodes of ours at offsets across that window (and the
other way round) and check that the npm node lives on, ends as the one leader, and that
every node of ours follows it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from npm_node import NpmNode, npm_id

from followtheleader._core.machine import NPM_HOLD

from cluster import Cluster, NodeProcess
from netlab import Host

pytestmark = pytest.mark.lab

BROWSE_WINDOW = 30.0
"""An npm node browses this long at most before it follows or leads."""
OFFSETS = (0.0, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)
"""Seconds after the npm node's ``leader`` event at which our nodes start."""


def wait_until(deadline: float) -> None:
    """Return at the monotonic time ``deadline`` (a scheduled action, not a synchronisation)."""
    pause = threading.Event()  # never set: only its timed wait is used
    while (remaining := deadline - time.monotonic()) > 0:
        pause.wait(remaining)


def latest_roles(cluster: Cluster, processes: list[NodeProcess]) -> dict[str, dict[str, Any]]:
    """The latest role event of every elector of ``processes`` (call with ``changed`` held)."""
    roles: dict[str, dict[str, Any]] = {}
    for process in processes:
        for record in process.records:
            if record["kind"] in ("leader", "follower", "reelection"):
                roles[record["node"]] = record
    return roles


def all_follow(cluster: Cluster, processes: list[NodeProcess], leader: str) -> bool:
    """Every elector of ``processes`` follows ``leader`` (call with ``changed`` held)."""
    roles = latest_roles(cluster, processes)
    expected = {node for p in processes for node in p.node_ids}
    return set(roles) == expected and all(
        r["kind"] == "follower" and r["leader"] == leader and r["leader_npm"] for r in roles.values()
    )


def wait_following(cluster: Cluster, processes: list[NodeProcess], npm: NpmNode, leader: str) -> None:
    """Wait until every elector of ``processes`` follows the npm node; else say what the npm node did."""
    try:
        cluster.wait(lambda: all_follow(cluster, processes, leader), 10, f"our nodes following {leader}")
    except TimeoutError as exc:
        failures = [r for r in npm.records if r["kind"] in ("crash", "error", "exit")]
        raise AssertionError(
            f"{exc}; the npm node: exit status {npm.proc.poll()}, {npm.kinds()}, {failures}, "
            f"stderr {npm.stderr[-300:]!r}"
        ) from None


def check_npm_survived(npm: NpmNode, kinds: list[str]) -> None:
    assert npm.proc.poll() is None, f"the npm node exited: {npm.kinds()} {npm.stderr[-500:]!r}"
    assert npm.kinds() == kinds, npm.stderr[-500:]
    assert "already in use" not in npm.stderr, npm.stderr[-500:]


@pytest.mark.parametrize("offset", OFFSETS)
def test_our_nodes_started_while_an_npm_leader_probes_follow_it(
    cluster: Cluster, hosts: list[Host], npm_nodes: list[NpmNode], offset: float
) -> None:
    npm = NpmNode(hosts[0], cluster.group, "npmrace")
    npm_nodes.append(npm)
    # Imports done beforehand: each node starts electing when told "go", at the offset.
    ours = [cluster.spawn(host, wait_go=True) for host in hosts[1:3]]
    cluster.wait_ready()
    led = npm.wait("leader", timeout=BROWSE_WINDOW + 10)
    wait_until(led["t"] + offset)
    started = [process.send("go") for process in ours]
    npm_leader = npm_id(hosts[0])
    wait_following(cluster, ours, npm, npm_leader)
    published = npm.wait("published", timeout=5)
    # Settled: no role changes for a while, the npm node answers our PINGs and lives.
    assert not cluster.wait_quiet(2.0)
    for host in hosts[1:3]:
        npm.wait("received", timeout=5, data="PING", sender=host.address)
    check_npm_survived(npm, ["ready", "leader", "published"])
    with cluster.changed:
        assert all_follow(cluster, ours, npm_leader)
        events = sorted(cluster.all_events_locked(), key=lambda r: r["t"])
    print(
        f"offset {offset:.2f}: started at +{started[0] - led['t']:.3f}/+{started[1] - led['t']:.3f} s, "
        f"npm published at +{published['t'] - led['t']:.3f} s; our events: "
        + ", ".join(f"{e['node'][:4]} {e['kind']}@+{e['t'] - led['t']:.3f}" for e in events)
    )


def test_an_npm_node_that_missed_our_leader_is_not_killed_by_it(
    cluster: Cluster, hosts: list[Host], npm_nodes: list[NpmNode]
) -> None:
    """The other direction: a leader of ours has published for npm nodes when an npm node leads.

    An npm node keeps only the first ``_ftl._tcp`` service it sees; here the leader of another
    group (same service type, same network) answers its query, so the npm node never takes
    ours, which comes up right after, and leads when its window (5 s at least) ends.
    """
    other = Cluster(cluster.lab)
    try:
        decoy = other.spawn(hosts[3])
        decoy_agreed = other.wait_agreement(timeout=10)
        wait_until(decoy_agreed.time + NPM_HOLD + 0.5)  # the decoy's _tcp record is out
        ours = [cluster.spawn(hosts[1], wait_go=True)]
        cluster.wait_ready()
        npm = NpmNode(hosts[0], cluster.group, "npmlate")
        npm_nodes.append(npm)
        npm.wait("ready", timeout=10)
        ours[0].send("go")
        agreed = cluster.wait_agreement(timeout=10)
        led = npm.wait("leader", timeout=BROWSE_WINDOW + 10)
        assert led["t"] > agreed.time + NPM_HOLD + 0.5, "our leader had not published before the npm node led"
        npm_leader = npm_id(hosts[0])
        wait_following(cluster, ours, npm, npm_leader)
        npm.wait("published", timeout=5)
        assert not cluster.wait_quiet(2.0)
        npm.wait("received", timeout=5, data="PING", sender=hosts[1].address)
        check_npm_survived(npm, ["ready", "leader", "published"])
        assert decoy.proc.poll() is None
    finally:
        other.finish()


@pytest.mark.parametrize("offset", (0.5, 2.5))
def test_an_npm_node_started_around_our_publication_follows_our_leader(
    cluster: Cluster, hosts: list[Host], npm_nodes: list[NpmNode], offset: float
) -> None:
    """The other direction, as it should go: the npm node starts ``offset`` s after our
    ``leader`` event (before and after the leader publishes for npm nodes, 1.5 s after it),
    finds our leader while it browses, follows it and lives on."""
    ours = [cluster.spawn(host) for host in hosts[1:3]]
    agreed = cluster.wait_agreement(timeout=10)
    led = next(e for e in cluster.all_events() if e["kind"] == "leader")
    wait_until(led["t"] + offset)
    npm = NpmNode(hosts[0], cluster.group, "npmnew")
    npm_nodes.append(npm)
    followed = npm.wait("follower", timeout=BROWSE_WINDOW + 10)
    leader_host = cluster.process_of(agreed.leader).host
    assert followed["leader"]["name"] == cluster.group
    assert followed["leader"]["addresses"][0] == leader_host.address
    npm.wait("received", timeout=10, data="PONG")
    check_npm_survived(npm, ["ready", "follower"])
    others = [node for process in ours for node in process.node_ids if node != agreed.leader]
    expected = sorted([("leader", agreed.leader), *(("follower", node) for node in others)])
    assert sorted((e["kind"], e["node"]) for e in cluster.all_events()) == expected  # no role change
