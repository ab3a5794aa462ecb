"""Fault injection in the namespace lab: partitions, packet loss, garbage, quorum, links.

Faults are nftables rules on the bridge ports (see ``netlab.Lab.set_faults``): the nodes
cannot see them. Every wait has a deadline; absence of role changes is checked by waiting
for an event that must not come.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

from cluster import Agreement, Cluster, check_pairing
from netlab import Host, Lab, _ip

pytestmark = pytest.mark.lab

HERE = os.path.dirname(os.path.abspath(__file__))


def start(cluster: Cluster, hosts: list[Host], count: int, **options: Any) -> Agreement:
    cluster.start_together(hosts[:count], [f"node-{i}" for i in range(count)], options=options or None)
    return cluster.wait_agreement()


def latest_roles(cluster: Cluster) -> dict[str, tuple[str, str | None, int]]:
    with cluster.changed:
        return {node: (r.kind, r.leader, r.term) for node, r in cluster.roles_locked().items()}


def test_partition_each_side_leads_then_heals_to_the_deterministic_winner(
    faults: Lab, cluster: Cluster, hosts: list[Host]
) -> None:
    first = start(cluster, hosts, 5)
    assert first.leader == "node-4"
    faults.set_faults(partition=(["n4"], ["n0", "n1", "n2", "n3"]))

    def both_sides_lead() -> dict[str, tuple[str, str | None, int]] | None:
        roles = {node: (r.kind, r.leader, r.term) for node, r in cluster.roles_locked().items()}
        majority = {roles[f"node-{i}"][1:] for i in range(4)}
        kinds = {roles[f"node-{i}"][0] for i in range(4)}
        if (
            roles["node-4"][0] == "leader"  # cut off from every follower, it leads on (no quorum)
            and len(majority) == 1
            and kinds
            == {
                "leader",
                "follower",
            }
        ):
            return roles
        return None

    during = cluster.wait(both_sides_lead, 15, "a leader on each side")
    side_leader, side_term = during["node-0"][1], during["node-0"][2]
    assert side_leader == "node-3" and side_term == 2  # availability first
    assert during["node-4"][2] == 1  # the lone side kept its leadership: no event, same term
    assert [e["kind"] for e in cluster.all_events() if e["node"] == "node-4"] == ["leader"]
    faults.set_faults()
    healed = cluster.wait_agreement(timeout=10)
    winner = max((during["node-4"][2], "node-4"), (side_term, side_leader))
    assert (healed.term, healed.leader) == winner
    loser = "node-3" if winner[1] == "node-4" else "node-4"
    loser_events = [e for e in cluster.all_events() if e["node"] == loser]
    assert loser_events[-1]["kind"] == "follower" and loser_events[-1]["previous"] == "leader"
    check_pairing(cluster.all_events())
    for process in cluster.processes:
        leader_terms = [e["term"] for e in process.events() if e["kind"] == "leader"]
        assert leader_terms == sorted(set(leader_terms))


@pytest.mark.parametrize("percent", [10, 20])
def test_packet_loss_changes_no_leadership(faults: Lab, cluster: Cluster, hosts: list[Host], percent: int) -> None:
    first = start(cluster, hosts, 3)
    faults.set_faults(loss={"n0": percent, "n1": percent, "n2": percent})
    assert cluster.wait_quiet(20.0) == []
    assert cluster.agreement_locked() == first or cluster.wait_agreement() == first
    leader = cluster.process_of(first.leader)
    assert cluster.status(leader)["is_leader"]


def test_thirty_percent_loss_still_converges_after_a_crash(faults: Lab, cluster: Cluster, hosts: list[Host]) -> None:
    first = start(cluster, hosts, 3)
    faults.set_faults(loss={"n0": 30, "n1": 30, "n2": 30})
    cluster.process_of(first.leader).kill()
    second = cluster.wait_agreement(timeout=20, other_than=first.leader, after_term=first.term)
    assert second.leader == "node-1"


def test_garbage_on_every_port_and_malformed_records_are_ignored(cluster: Cluster, hosts: list[Host]) -> None:
    first = start(cluster, hosts, 3)
    targets = [host.address for host in hosts[:3]]
    script = os.path.join(HERE, "garbage.py")
    result = hosts[5].run([sys.executable, script, cluster.group, json.dumps(targets)], timeout=60)
    assert "sent" in result.stdout, result.stdout + result.stderr
    for process in cluster.processes:
        cluster.wait_counter(process, "bad-datagram", 20)
        # The records are handled on zeroconf's threads, not in the order of the datagrams.
        found = cluster.wait_counter(process, "bad-txt", 1)
        assert (found["leader"], found["term"]) == (first.leader, first.term)
    assert all(len(p.events()) == 1 for p in cluster.processes)


def test_quorum_mode_never_gives_two_leaders(faults: Lab, cluster: Cluster, hosts: list[Host]) -> None:
    first = start(cluster, hosts, 3, quorum=3)
    assert first.leader == "node-2"
    faults.set_faults(partition=(["n2"], ["n0", "n1"]))
    old = cluster.process_of("node-2")
    cluster.wait(lambda: any(e["kind"] == "reelection" for e in old.events()), 10, "old leader loses the quorum")
    assert old.events()[-1]["reason"] == "lost the quorum"

    def majority_leads() -> bool:
        roles = latest_roles(cluster)
        return roles["node-1"][0] == "leader" and roles["node-0"][:2] == ("follower", "node-1")

    cluster.wait(majority_leads, 10, "the majority side elects")
    assert cluster.wait_quiet(3.0) == []  # the minority side of one never claims
    assert cluster.leader_overlap() == 0
    faults.set_faults()
    healed = cluster.wait_agreement(timeout=10)
    assert healed.leader == "node-1"


def test_leader_link_down_and_up(lab: Lab, cluster: Cluster, hosts: list[Host]) -> None:
    first = start(cluster, hosts, 3)
    leader_host = hosts[2]
    assert first.leader == "node-2"
    leader_host.set_link(False)
    try:

        def others_agree() -> bool:
            roles = latest_roles(cluster)
            return roles["node-1"][0] == "leader" and roles["node-0"][:2] == ("follower", "node-1")

        cluster.wait(others_agree, 10, "the others elect a new leader")
        old = cluster.process_of("node-2")
        cluster.wait(
            lambda: any(r["kind"] == "error" and "cannot send" in (r.get("reason") or "") for r in old.records),
            10,
            "a clear error about the network on the cut-off node",
        )
    finally:
        leader_host.set_link(True)
    healed = cluster.wait_agreement(timeout=15)
    assert healed.term >= 2
    check_pairing(cluster.all_events())


def test_no_multicast_route_still_works(lab: Lab, cluster: Cluster) -> None:
    """python-zeroconf sends on each interface explicitly, so a missing multicast route is harmless."""
    bare = [lab.add_host(f"nr{i}{os.urandom(2).hex()[:3]}") for i in range(2)]  # unique in a session
    for host in bare:
        _ip("-n", host.ns, "route", "del", "224.0.0.0/4")
    for host in bare:
        cluster.spawn(host)
    assert cluster.wait_agreement().term == 1


def test_no_network_interface_is_reported_and_the_node_leads_alone(lab: Lab, cluster: Cluster) -> None:
    host = lab.add_host(f"lo{os.urandom(2).hex()}")
    _ip("-n", host.ns, "addr", "flush", "dev", host.interface)
    process = cluster.spawn(host)
    cluster.wait_agreement()
    errors = [r for r in process.records if r["kind"] == "error"]
    assert errors and "no network interface" in errors[0]["reason"]
