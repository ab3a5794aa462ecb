"""The Redis driver through Sentinel (``redis+sentinel://``, issue 21): a primary, one replica
and three sentinels in lab hosts (tests/coordservers.py, ``redis-sentinel``), replication
asynchronous as Redis makes it.

* A group elects through the sentinels; the primary is killed (SIGKILL); the sentinels
  promote the replica and the group leads on through it, its leader key on the new primary.
  The same with electors of this process: ``stop()`` then leaves no thread and no socket
  (the sentinels' clients included), and a service the sentinels do not know is a clear error.
* What asynchronous replication can do, made to happen: the replication link is cut, so a
  claim the primary acknowledges is never replicated; the primary is then killed and the
  replica promoted without it. The leader of the lost claim, which cannot reach the new
  primary, leads on by its local lease beside the successor elected there: two leaders, for
  less than the lease (0.8 TTL after its last renewal). The promoted replica's fence counter
  is behind the lost token, yet the successor's token is greater (a claim through Sentinel
  takes the server's TIME in microseconds when it is ahead of the counter).
* The old primary cut off from the sentinels, the replica and one member, but not from its
  leader: the sentinels promote the replica and the member there leads, while the old leader
  renews on the old primary for as long as the cut lasts (no bound). Once the cut heals and
  Sentinel makes the old primary a replica, the old leader finds its leadership gone and
  demotes.
* ``min-replicas-to-write`` on the primary: once its replica is cut off for longer than
  ``min-replicas-max-lag``, the primary refuses the leader's renewals, and the leader demotes
  by its lease; the window for writes that can be lost is then the lag, not the cut.

The docs page "Beyond one subnet" (section Redis, "Sentinel and replication") says the same.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from followtheleader import elect
from followtheleader._coordinators.base import CoordinatorError, make_coordinator, parse_coordinator
from followtheleader._coordinators.redis import _leadership
from followtheleader._core.model import Member

from cluster import Agreement, Cluster, check_pairing, leader_overlap
from conftest import Local
from coordservers import REDIS_PORT, ServerSet, server_hosts, unavailable_reason
from netlab import Host, Lab

pytestmark = pytest.mark.lab

DEADLINE = 30.0
"""Seconds any one step may take (a failover takes about 2 s: 1 s down-after, then the vote)."""
LEASE_FRACTION = 0.8
"""The local lease ends this fraction of the TTL after the renewal's send time (backend.py)."""


def _servers(lab: Lab, tag: str) -> Iterator[ServerSet]:
    """A primary, a replica and three sentinels on lab hosts ``<tag>0``..``<tag>4`` of their own
    (the test kills the primary: no other test may share them)."""
    reason = unavailable_reason("redis-sentinel")
    if reason:
        pytest.skip(reason)
    servers = ServerSet("redis-sentinel", server_hosts(lab, [f"{tag}{i}" for i in range(5)]))
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


_TAGS = itertools.count()
"""Numbers the ``sentinel`` fixture's host tags: each test's hosts are new to the session's lab."""


@pytest.fixture
def sentinel(lab: Lab) -> Iterator[ServerSet]:
    """A primary, a replica and three sentinels of the test's own (hosts ``snNN0``..``snNN4``)."""
    yield from _servers(lab, f"sn{next(_TAGS):02d}")


def _on(host: Host, request: Callable[[Any], Any]) -> Any:
    """``request(client)`` with a client of the Redis server on ``host`` (from its namespace)."""

    def ask() -> Any:
        import redis

        with redis.Redis(host=host.address, port=REDIS_PORT, socket_timeout=5, decode_responses=True) as client:
            return request(client)

    return host.call_in_namespace(ask, timeout=DEADLINE + 10)


def _until(host: Host, condition: Callable[[Any], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll the Redis server on ``host`` every 10 ms until ``condition(client)`` is truthy; its value."""

    def poll(client: Any) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := condition(client)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.01)  # polling a server from outside: it has no event to wait on
        return value

    return _on(host, poll)


def _primary_becomes(servers: ServerSet, address: str) -> float:
    """Wait until the sentinels name ``address`` as the primary; the monotonic time then."""
    deadline = time.monotonic() + DEADLINE
    while servers.sentinel_primary() != address:
        assert time.monotonic() < deadline, "the sentinels did not promote the replica"
        time.sleep(0.05)  # polling the sentinels from outside: no event to wait on
    return time.monotonic()


def _agreed_on_key(cluster: Cluster, host: Host, leader_key: str) -> Agreement:
    """Wait until the leader key on ``host``'s server and every live member name one leader
    and term; that agreement (a stale agreement from before a failover does not count)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        held = _leadership(_on(host, lambda r: r.get(leader_key)), None)
        with cluster.changed:
            agreed = cluster.agreement_locked()
        if held is not None and agreed is not None and (held.leader.node_id, held.term) == (agreed.leader, agreed.term):
            return agreed
        assert time.monotonic() < deadline, f"the key on {host.name} ({held}) and the group ({agreed}) do not agree"
        time.sleep(0.05)  # polling a server from outside: no event to wait on


def _keys(cluster: Cluster) -> tuple[str, str]:
    """The group's leader and fence keys (the ServerSet's URL has ``prefix=/ftltest``)."""
    return f"/ftltest/{cluster.group}/leader", f"/ftltest/{cluster.group}/fence"


def _spawn(cluster: Cluster, hosts: list[Host], url: str, ttl: float, priorities: list[int]) -> list[Any]:
    """One node per host, node ids ``m<priority>``, started together."""
    options = {"coordinator": url, "coordinator_ttl": ttl}
    processes = [
        cluster.spawn(host, wait_go=True, node_ids=[f"m{p}"], options={**options, "priority": p})
        for host, p in zip(hosts, priorities, strict=True)
    ]
    cluster.wait_ready()
    for process in processes:
        process.send("go")
    return processes


def test_the_group_follows_a_sentinel_failover(cluster: Cluster, hosts: list[Host], sentinel: ServerSet) -> None:
    servers, ttl = sentinel, 3.0
    primary, replica = servers.hosts[0], servers.hosts[1]
    assert servers.sentinel_primary() == primary.address
    _spawn(cluster, hosts[:3], servers.url, ttl, [1, 2, 3])
    first = cluster.wait_agreement(timeout=DEADLINE)
    leader_key, _ = _keys(cluster)
    assert _on(primary, lambda r: r.get(leader_key)).startswith(f"{first.term} ")
    _until(replica, lambda r: r.get(leader_key), "the claim to reach the replica")

    killed_at = time.monotonic()
    servers.server_at(primary.address).kill()
    promoted_at = _primary_becomes(servers, replica.address)

    # The group leads on through the new primary: the leader key there and every member name
    # one leader. The failover takes about as long as the lease, so that is the first leader
    # (its renewals reached the promoted replica in time) or one elected since, in a new term.
    settled = _agreed_on_key(cluster, replica, leader_key)
    kept = (settled.leader, settled.term) == (first.leader, first.term)
    assert kept or settled.term > first.term, f"after the failover {settled}, before it {first}"
    # That leader stops; the member that takes over claims on the new primary.
    processes = {p.node_ids[0]: p for p in cluster.processes}
    processes[settled.leader].send("stop")
    second = cluster.wait_agreement(timeout=DEADLINE, other_than=settled.leader, after_term=settled.term)
    assert _on(replica, lambda r: r.get(leader_key)).startswith(f"{second.term} ")
    # The old leader's claim and renewals had reached the replica: no more than one leader.
    # (A renewal acknowledged but not yet replicated when the primary died would let the old
    # leader lead on beside a successor for less than its lease: the next test.)
    overlap = leader_overlap(cluster.all_events(), since=killed_at)
    print(
        f"failover: promoted {promoted_at - killed_at:.2f} s after the SIGKILL; "
        f"{'the same leader and term' if kept else 'a new term'} on the promoted replica; overlap {overlap:.2f} s"
    )
    assert overlap < LEASE_FRACTION * ttl
    check_pairing(cluster.all_events())


def test_in_process_electors_follow_a_failover_and_stop_leaves_nothing(local: Local, sentinel: ServerSet) -> None:
    """In this process (the ``no_leaks`` fixture checks threads and sockets after it): the
    sentinels' clients and the connections to both primaries are closed by ``stop()``."""
    servers = sentinel
    primary, replica = servers.hosts[0], servers.hosts[1]
    electors = [
        elect("inproc", coordinator=servers.url, coordinator_ttl=3.0, node_id=f"p{i}", priority=i) for i in range(2)
    ]
    try:
        for elector in electors:
            local(elector.start)
        first = local(lambda: electors[1].wait_for_leader(DEADLINE))
        assert first is not None and first.node_id == "p1"
        token = electors[1].fencing_token
        assert token is not None
        # A service the sentinels do not monitor: a clear error, and nothing left open.
        wrong = make_coordinator(parse_coordinator(servers.url.replace("/ftl/", "/nosuch/")), "g", Member("w"), 3.0)
        with pytest.raises(CoordinatorError, match="MasterNotFoundError: No master found for 'nosuch'"):
            local(wrong.open)
        wrong.close()
        servers.server_at(primary.address).kill()
        _primary_becomes(servers, replica.address)
        electors[1].stop()  # its release reaches the new primary, or its key expires there
        deadline = time.monotonic() + DEADLINE
        while not electors[0].is_leader:
            assert time.monotonic() < deadline, "p0 did not lead on the promoted replica"
            time.sleep(0.01)  # polling the elector's state: the test's own thread has no event to wait on
        new = electors[0].fencing_token
        assert new is not None and new.term > token.term
        assert _on(replica, lambda r: r.get("/ftltest/inproc/leader")).startswith(f"{new.term} ")
    finally:
        for elector in electors:
            elector.stop()


def test_a_claim_lost_in_a_failover_two_leaders_for_less_than_the_lease_and_tokens_still_grow(
    cluster: Cluster, hosts: list[Host], faults: Lab, sentinel: ServerSet
) -> None:
    servers, ttl, ttl_ms = sentinel, 8.0, 8000
    primary, replica = servers.hosts[0], servers.hosts[1]
    # m3 leads first; m2 will take over on the primary alone; m1 and m3 can reach the replica.
    processes = _spawn(cluster, hosts[:3], servers.url, ttl, [3, 2, 1])
    first = cluster.wait_agreement(timeout=DEADLINE)
    assert first.leader == "m3"
    # m9 starts once the replica is promoted: it claims there at once (m1 and m3 come back
    # after their backoff, which may take longer than m2's lease).
    late = cluster.spawn(
        hosts[3],
        wait_go=True,
        node_ids=["m9"],
        options={"coordinator": servers.url, "coordinator_ttl": ttl, "priority": 9},
    )
    cluster.wait_ready()
    leader_key, fence_key = _keys(cluster)
    _until(replica, lambda r: r.get(leader_key), "the claim to reach the replica")

    # Cut the replication link just before m3's next renewal (PEXPIRE at 0.4 TTL left): the
    # replica's copy of m3's key then lapses 0.45 TTL after the cut. m2's host is cut off from
    # the replica too: once the replica is promoted, m2 can reach no primary.
    _until(primary, lambda r: r.pttl(leader_key) < 0.45 * ttl_ms, "m3's renewal to come near")
    faults.set_faults(partition=([primary.name, hosts[1].name], [replica.name]))
    assert int(_on(replica, lambda r: r.get(fence_key))) == first.term
    processes[0].send("resign")  # m3 releases on the primary only; m2 claims there

    def m2_leads() -> Any:
        return next((e for e in processes[1].events(("leader",)) if e["term"] > first.term), None)

    lost = cluster.wait(m2_leads, DEADLINE, "m2 to claim on the cut-off primary")
    assert int(_on(primary, lambda r: r.get(fence_key))) == lost["term"]
    assert int(_on(replica, lambda r: r.get(fence_key))) == first.term  # the claim is not replicated
    _until(replica, lambda r: r.get(leader_key) is None, "the replica's copy of m3's key to lapse", ttl + 5)

    # Kill the primary right after m2's renewal: its local lease then has 0.8 TTL to run.
    def renewed(client: Any, seen: list[int] = []) -> bool:  # noqa: B006 - the poll's own memory
        seen.append(client.pttl(leader_key))
        return min(seen) < 0.5 * ttl_ms and seen[-1] > 0.9 * ttl_ms

    _until(primary, renewed, "m2's renewal on the primary", ttl)
    killed_at = time.monotonic()
    servers.server_at(primary.address).kill()
    promoted_at = _primary_becomes(servers, replica.address)
    late.send("go")

    def successor() -> Any:
        return next((e for e in cluster.all_events_locked() if e["kind"] == "leader" and e["t"] > killed_at), None)

    new = cluster.wait(successor, DEADLINE, "a leader elected on the promoted replica")
    m2_demoted = cluster.wait(
        lambda: next((e for e in processes[1].events() if e["kind"] != "leader" and e["t"] > killed_at), None),
        DEADLINE,
        "m2 to demote by its lease",
    )
    overlap = leader_overlap(cluster.all_events(), since=killed_at)
    print(
        f"lost claim: token {lost['term']}; replica's counter {first.term}; promoted "
        f"{promoted_at - killed_at:.2f} s after the SIGKILL; successor {new['node']} token {new['term']} "
        f"{new['t'] - killed_at:.2f} s after; m2 demoted {m2_demoted['t'] - killed_at:.2f} s after; "
        f"overlap {overlap:.2f} s"
    )
    # What asynchronous replication can do: the successor claimed while m2, whose claim was
    # lost, still led by its lease...
    assert new["node"] != "m2" and new["t"] < m2_demoted["t"]
    assert overlap > 0
    # ...for less than that lease (0.8 TTL after m2's last renewal, made before the SIGKILL),
    assert m2_demoted["t"] - killed_at < LEASE_FRACTION * ttl + 0.5
    assert overlap < LEASE_FRACTION * ttl
    # and a counter that is behind does not make a token repeat: a plain INCR on the promoted
    # replica would have given first.term + 1 (m2's token had the primary counted by one);
    # the claim through Sentinel gives the server's time, past the lost token.
    assert new["term"] > lost["term"] > first.term
    faults.set_faults()
    final = cluster.wait_agreement(timeout=DEADLINE, after_term=lost["term"])
    assert final.term >= new["term"]
    check_pairing(cluster.all_events())


def test_min_replicas_to_write_stops_the_cut_off_primary_from_taking_renewals(
    cluster: Cluster, hosts: list[Host], faults: Lab, sentinel: ServerSet
) -> None:
    servers, ttl = sentinel, 3.0
    primary, replica = servers.hosts[0], servers.hosts[1]
    max_lag = 1
    _on(primary, lambda r: r.config_set("min-replicas-to-write", 1) and r.config_set("min-replicas-max-lag", max_lag))
    _spawn(cluster, hosts[:2], servers.url, ttl, [2, 1])
    first = cluster.wait_agreement(timeout=DEADLINE)
    leader = cluster.process_of(first.leader)
    faults.set_faults(partition=([primary.name], [replica.name]))  # the sentinels still see both
    cut_at = time.monotonic()
    # The primary refuses writes once its replica's last acknowledgement (sent every second) is
    # older than the lag; the leader's next renewal fails and its lease runs out.
    demoted = cluster.wait(
        lambda: next((e for e in leader.events() if e["kind"] != "leader" and e["t"] > cut_at), None),
        DEADLINE,
        "the leader to demote once the primary refuses its renewals",
    )
    refused = _on(primary, lambda r: r.info("replication")["min_slaves_good_slaves"])
    print(f"min-replicas-to-write: the leader demoted {demoted['t'] - cut_at:.2f} s after the cut")
    assert refused == 0
    errors = [e["reason"] for e in leader.events(("error",)) if e["t"] > cut_at]
    assert errors and "NOREPLICAS" in errors[0]  # the primary said why
    # The renewal period (0.6 TTL), the lag (and the second between acknowledgements), then the
    # rest of the lease: no write the primary took after that can be lost.
    assert demoted["t"] - cut_at < 0.6 * ttl + max_lag + 1.0 + LEASE_FRACTION * ttl
    assert leader_overlap(cluster.all_events()) == 0.0
    faults.set_faults()


def test_an_old_primary_cut_off_with_its_leader_keeps_it_leading_until_the_cut_heals(
    cluster: Cluster, hosts: list[Host], faults: Lab, sentinel: ServerSet
) -> None:
    servers, ttl = sentinel, 3.0
    primary, replica = servers.hosts[0], servers.hosts[1]
    processes = _spawn(cluster, hosts[:2], servers.url, ttl, [2, 1])
    first = cluster.wait_agreement(timeout=DEADLINE)
    assert first.leader == "m2"
    leader_key, _ = _keys(cluster)
    # The primary and m2 on one side; the replica, the sentinels and m1 on the other.
    faults.set_faults(
        partition=([primary.name, hosts[0].name], [h.name for h in (replica, hosts[1], *servers.hosts[2:])])
    )
    cut_at = time.monotonic()
    promoted_at = _primary_becomes(servers, replica.address)
    m1_leads = cluster.wait(
        lambda: next((e for e in processes[1].events(("leader",)) if e["t"] > cut_at), None),
        DEADLINE,
        "m1 to lead on the promoted replica",
    )

    # Without min-replicas-to-write nothing stops the old primary: m2 renews there three more
    # times after m1 claimed (two renewal periods, 1.2 TTL: longer than any lease), and still leads.
    def renewals(client: Any, seen: list[int] = [], count: list[int] = [0]) -> bool:  # noqa: B006 - its memory
        ttl_left = client.pttl(leader_key)
        if seen and ttl_left > seen[-1] + 100:
            count[0] += 1
        seen.append(ttl_left)
        return count[0] >= 3

    _until(primary, renewals, "m2's renewals on the old primary", 4 * ttl)
    assert not [e for e in processes[0].events() if e["t"] > cut_at and e["kind"] != "leader"]
    assert time.monotonic() - m1_leads["t"] > LEASE_FRACTION * ttl
    assert m1_leads["term"] > first.term

    # Once the cut heals, Sentinel turns the old primary into a replica of the new one: m2's
    # next renewal is refused (READONLY), its client asks the sentinels again, and on the new
    # primary m2 finds its leadership gone: it demotes, and m1 leads alone.
    faults.set_faults()
    healed_at = time.monotonic()
    demoted = cluster.wait(
        lambda: next((e for e in processes[0].events() if e["t"] > cut_at and e["kind"] != "leader"), None),
        DEADLINE,
        "m2 to demote once the cut heals",
    )
    final = cluster.wait_agreement(timeout=DEADLINE)
    overlap = leader_overlap(cluster.all_events(), since=cut_at)
    print(
        f"old primary cut off with its leader: promoted {promoted_at - cut_at:.2f} s after the cut; m1 led "
        f"{m1_leads['t'] - cut_at:.2f} s after; healed {healed_at - cut_at:.2f} s after; m2 demoted "
        f"{demoted['t'] - healed_at:.2f} s after the heal ({demoted['reason']}); overlap {overlap:.2f} s"
    )
    assert (final.leader, final.term) == ("m1", m1_leads["term"])
    assert overlap > LEASE_FRACTION * ttl
    assert _on(primary, lambda r: r.info("replication")["role"]) == "slave"
    assert _on(replica, lambda r: r.get(leader_key)).startswith(f"{final.term} ")
    check_pairing(cluster.all_events())
