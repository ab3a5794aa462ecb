"""Mixed groups with the published npm package ``followtheleader`` 2.0.9 (real Node.js processes).

The npm nodes run ``tests/npm/harness.js`` in lab hosts of their own; our nodes are node
processes of this package (``tests/node_runner.py``) with the default options (``npm_compat``
on). An npm follower picks its leader after browsing for a random 5 to 30 seconds and pings it
every 5 seconds, so these tests take a while.
"""

from __future__ import annotations

from typing import Any

import pytest
from npm_node import NpmNode, npm_id

from cluster import Cluster, check_pairing
from netlab import Host

pytestmark = pytest.mark.lab

BROWSE_WINDOW = 30.0
"""An npm node browses this long at most before it follows or leads."""
PING_EVERY = 5.0


def follower_events(cluster: Cluster) -> list[dict[str, Any]]:
    return [e for e in cluster.all_events() if e["kind"] == "follower"]


def test_npm_nodes_follow_a_leader_of_ours_and_stay(
    cluster: Cluster, hosts: list[Host], npm_nodes: list[NpmNode]
) -> None:
    ours = cluster.spawn(hosts[0])
    agreed = cluster.wait_agreement()
    port = cluster.status(ours)["port"]
    npm_nodes += [NpmNode(hosts[i], cluster.group, f"npm{i}") for i in (1, 2)]
    for node in npm_nodes:
        followed = node.wait("follower", timeout=BROWSE_WINDOW + 10)
        assert followed["leader"]["name"] == cluster.group
        assert followed["leader"]["addresses"][0] == hosts[0].address
        assert followed["leader"]["port"] == port
    # Two PINGs answered each (5 and 10 s after following): the npm nodes follow on.
    for node in npm_nodes:
        pong = node.wait("received", timeout=2 * PING_EVERY + 5, count=2, data="PONG")
        assert pong["from"] == hosts[0].address and pong["port"] == port
    for node in npm_nodes:
        assert node.kinds() == ["ready", "follower"], node.stderr
        assert node.proc.poll() is None
    # Counted on the heartbeat thread just after each PONG is sent: maybe not yet for the last one.
    cluster.wait_counter(ours, "npm-pings-answered", 4)
    assert [(e["kind"], e["node"]) for e in cluster.all_events()] == [("leader", agreed.leader)]


def test_our_nodes_follow_an_npm_leader_then_elect_when_it_dies(
    cluster: Cluster, hosts: list[Host], npm_nodes: list[NpmNode]
) -> None:
    npm_nodes.append(NpmNode(hosts[0], cluster.group, "npmleader"))
    npm_nodes[0].wait("leader", timeout=BROWSE_WINDOW + 10)
    # Not before it probed its name: a leader of ours that answered its probe would crash it.
    npm_nodes[0].wait("published", timeout=5)
    processes = [cluster.spawn(host) for host in hosts[1:4]]
    cluster.wait(lambda: len(follower_events(cluster)) >= 3, 15, "three followers of the npm leader")
    for event in follower_events(cluster):
        assert event["leader"] == npm_id(hosts[0]) and event["leader_npm"] is True and event["term"] == 0
    # They ping it (PING every interval, answered with PONG); it stays up and alone as leader.
    for host in hosts[1:4]:
        npm_nodes[0].wait("received", timeout=5, data="PING", sender=host.address)
    assert not cluster.wait_quiet(1.0)
    status = cluster.status(processes[0])
    assert status["leader"] == npm_id(hosts[0]) and not status["is_leader"]
    assert npm_id(hosts[0]) in status["members"]
    assert npm_nodes[0].kinds() == ["ready", "leader", "published"] and npm_nodes[0].proc.poll() is None

    killed_at = npm_nodes[0].kill()
    agreed = cluster.wait_agreement(timeout=10)
    assert agreed.leader == max(node for p in processes for node in p.node_ids)
    assert agreed.term >= 1
    assert agreed.time - killed_at < 2.0
    assert cluster.leader_overlap() == 0
    check_pairing(cluster.all_events())
    # The new leader publishes what npm nodes look for: a newcomer follows it.
    newcomer = NpmNode(hosts[4], cluster.group, "npmnewcomer")
    npm_nodes.append(newcomer)
    followed = newcomer.wait("follower", timeout=BROWSE_WINDOW + 10)
    leader_host = cluster.process_of(agreed.leader).host
    assert followed["leader"]["addresses"][0] == leader_host.address
    newcomer.wait("received", timeout=PING_EVERY + 5, data="PONG")
