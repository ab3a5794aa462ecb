"""Integration tests: real zeroconf, real sockets, node processes on namespace hosts."""

from __future__ import annotations

import pytest

from cluster import Cluster, check_pairing
from netlab import Host

pytestmark = pytest.mark.lab


def test_one_node_leads_alone(cluster: Cluster, hosts: list[Host]) -> None:
    node = cluster.spawn(hosts[0])
    agreed = cluster.wait_agreement()
    assert agreed.leader == node.node_ids[0] and agreed.term == 1


def test_three_nodes_agree_on_one_leader(cluster: Cluster, hosts: list[Host]) -> None:
    cluster.start_together(hosts[:3])
    agreed = cluster.wait_agreement()
    assert agreed.term == 1
    assert agreed.leader == max(node for p in cluster.processes for node in p.node_ids)
    assert cluster.leader_overlap() == 0


def test_ten_nodes_started_at_once_agree_on_one_leader(cluster: Cluster, hosts: list[Host]) -> None:
    processes = [cluster.spawn(host, wait_go=True) for host in hosts]
    cluster.wait_ready()
    for process in processes:
        process.send("go")
    agreed = cluster.wait_agreement()
    assert agreed.term == 1
    events = cluster.all_events()
    assert [e["kind"] for e in events].count("leader") == 1
    assert cluster.leader_overlap() == 0
    statuses = [cluster.status(process) for process in processes]
    for status in statuses:
        assert status["leader"] == agreed.leader and status["term"] == 1
        assert status["is_leader"] == (status["node"] == agreed.leader)
    everyone = [node for p in processes for node in p.node_ids]
    for process in processes:
        cluster.wait_members(process, everyone)


def test_three_electors_on_one_host_agree(cluster: Cluster, hosts: list[Host]) -> None:
    processes = [cluster.spawn(hosts[0]) for _ in range(3)]
    agreed = cluster.wait_agreement()
    assert agreed.term == 1
    statuses = [cluster.status(process) for process in processes]
    ports = sorted(s["port"] for s in statuses)
    assert 9001 in ports and len(set(ports)) == 3, ports


def test_two_electors_in_one_process_and_a_third_host_agree(cluster: Cluster, hosts: list[Host]) -> None:
    cluster.spawn(hosts[0], count=2)
    cluster.spawn(hosts[1])
    agreed = cluster.wait_agreement()
    assert agreed.term == 1
    assert cluster.leader_overlap() == 0


def test_sigkill_of_leader_gives_one_new_leader(cluster: Cluster, hosts: list[Host]) -> None:
    for host in hosts[:4]:
        cluster.spawn(host)
    first = cluster.wait_agreement()
    cluster.process_of(first.leader).kill()
    second = cluster.wait_agreement(other_than=first.leader, after_term=first.term)
    assert second.term == first.term + 1
    followers = [p for p in cluster.processes if p.alive and second.leader not in p.node_ids]
    assert len(followers) == 2
    assert cluster.leader_overlap() == 0
    check_pairing(cluster.all_events())


def test_stop_of_leader_hands_over_through_resign(cluster: Cluster, hosts: list[Host]) -> None:
    for host in hosts[:3]:
        cluster.spawn(host)
    first = cluster.wait_agreement()
    leader = cluster.process_of(first.leader)
    leader.send("stop 0")
    second = cluster.wait_agreement(other_than=first.leader, after_term=first.term)
    assert second.term == first.term + 1
    # The followers learnt of the handover from the resign message, not from a timeout.
    reasons = {e["reason"] for e in cluster.all_events() if e["kind"] == "reelection" and e["node"] != first.leader}
    assert reasons <= {"leader resigned", "leader said goodbye"}, reasons
    assert cluster.wait_stopped(leader)["result"] is True
    own = leader.events()
    assert [e["kind"] for e in own] == ["leader", "reelection"] and own[-1]["state"] == "stopped"
    assert cluster.leader_overlap() == 0


def test_events_arrive_in_order_paired_on_the_callback_thread(cluster: Cluster, hosts: list[Host]) -> None:
    for host in hosts[:3]:
        cluster.spawn(host)
    first = cluster.wait_agreement()
    cluster.process_of(first.leader).send("resign 0")
    second = cluster.wait_agreement(other_than=first.leader, after_term=first.term)
    cluster.process_of(second.leader).send("stop 0")
    cluster.wait_agreement(other_than=second.leader, after_term=second.term)
    events = cluster.all_events()
    check_pairing(events)
    for process in cluster.processes:
        own = process.events()
        assert [e["t"] for e in own] == sorted(e["t"] for e in own), "events out of order"
        assert {e["thread"] for e in own} == {f"followtheleader-callbacks-{cluster.group}"}
    leader_terms = [e["term"] for e in events if e["kind"] == "leader"]
    assert leader_terms == sorted(set(leader_terms)), leader_terms


def test_node_processes_leave_no_thread_behind(cluster: Cluster, hosts: list[Host]) -> None:
    for host in hosts[:2]:
        cluster.spawn(host, count=2)
    cluster.wait_agreement()
    for exit_record in cluster.finish():
        assert exit_record["threads"] == []


def test_paused_leader_is_replaced_and_demotes_itself_on_resume(cluster: Cluster, hosts: list[Host]) -> None:
    import signal

    for host in hosts[:3]:
        cluster.spawn(host)
    first = cluster.wait_agreement()
    paused = cluster.process_of(first.leader)
    paused.proc.send_signal(signal.SIGSTOP)
    paused.alive = False  # not counted while paused
    try:
        second = cluster.wait_agreement(other_than=first.leader, after_term=first.term)
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    with cluster.changed:
        paused.alive = True
    third = cluster.wait_agreement(after_term=first.term)
    assert (third.leader, third.term) == (second.leader, second.term)
    own = paused.events()
    assert [e["kind"] for e in own] == ["leader", "reelection", "follower"]
    assert own[1]["reason"].startswith("lease lapsed: paused or starved")
    assert own[2]["leader"] == second.leader and own[2]["term"] == second.term
