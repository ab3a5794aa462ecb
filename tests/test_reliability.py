"""A leader that outlives its followers, and fencing tokens that never repeat (namespace lab).

Node processes on lab hosts, real zeroconf and sockets; faults are nftables rules on the
bridge ports. Every wait has a deadline: "nothing happens for 5 s" is checked by watching the
nodes' event streams (and asking the leader for its status) until the 5 s are over.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from cluster import Cluster, NodeProcess, check_pairing
from netlab import Host, Lab

pytestmark = pytest.mark.lab


def leader_tokens(cluster: Cluster) -> list[tuple[str, str]]:
    """(node, fencing token key) of every ``leader`` event so far, in time order."""
    return [(e["node"], e["token"]) for e in cluster.all_events() if e["kind"] == "leader"]


def assert_tokens_unique_and_increasing(cluster: Cluster) -> None:
    tokens = leader_tokens(cluster)
    keys = [key for _, key in tokens]
    assert all(keys) and len(set(keys)) == len(keys), f"a fencing token repeated: {tokens}"
    for node in {node for node, _ in tokens}:
        own = [key for n, key in tokens if n == node]
        assert own == sorted(own), f"{node}'s leader events carry decreasing tokens: {own}"


def watch(cluster: Cluster, leader: NodeProcess, seconds: float) -> list[dict[str, Any]]:
    """For ``seconds``, ask the leader for its status again and again; return every status.

    Each answer is a round trip to the node process, so this waits on its replies, with a
    deadline, rather than sleeping."""
    statuses = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        statuses.append(cluster.status(leader))
    return statuses


@pytest.mark.parametrize("size", [2, 3])
def test_leader_outlives_the_crash_of_every_follower(cluster: Cluster, hosts: list[Host], size: int) -> None:
    cluster.start_together(hosts[:size], [f"node-{i}" for i in range(size)])
    first = cluster.wait_agreement()
    leader = cluster.process_of(first.leader)
    token = cluster.status(leader)["token"]
    for process in cluster.processes:
        if process is not leader:
            process.kill()  # all at once: no goodbye, no leave
    killed_at = time.monotonic()
    statuses = watch(cluster, leader, 5.0)
    assert time.monotonic() - killed_at >= 5.0
    assert len(statuses) > 10
    for status in statuses:
        assert status["is_leader"] and status["term"] == first.term and status["token"] == token, status
    assert [e["kind"] for e in leader.events()] == ["leader"]
    newcomer = cluster.spawn(hosts[size])
    followed = cluster.wait(
        lambda: next((e for e in newcomer.records if e["kind"] == "follower"), None), 10, "the newcomer following"
    )
    assert (followed["leader"], followed["term"], followed["token"]) == (first.leader, first.term, token)
    assert cluster.status(newcomer)["token"] == token
    assert [e["kind"] for e in leader.events()] == ["leader"]


def test_one_way_faults_at_the_leader_never_repeat_a_fencing_token(
    faults: Lab, cluster: Cluster, hosts: list[Host]
) -> None:
    """5 nodes; 100 % loss in one direction at the current leader for 3 s, twice each way."""
    cluster.start_together(hosts[:5], [f"node-{i}" for i in range(5)])
    agreed = cluster.wait_agreement()
    for direction in ("out", "in", "out", "in"):
        leader_host = cluster.process_of(agreed.leader).host.name
        if direction == "out":  # what the leader sends is lost; it still hears the others
            faults.set_faults(loss={leader_host: 100})
        else:  # what is sent to the leader is lost; the others still hear it
            faults.set_faults(inbound_loss={leader_host: 100})
        watch(cluster, cluster.process_of(agreed.leader), 3.0)
        faults.set_faults()
        agreed = cluster.wait_agreement(timeout=10)
        assert_tokens_unique_and_increasing(cluster)
    check_pairing(cluster.all_events())
    leaders = {e["token"] for e in cluster.all_events() if e["kind"] == "leader"}
    assert len(leaders) >= 2  # the outgoing cuts made the group elect again
    timeline = [(round(e["t"], 3), e["node"], e["kind"], e.get("term"), e.get("reason")) for e in cluster.all_events()]
    assert cluster.leader_overlap() == 0, timeline
