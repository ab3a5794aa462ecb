"""Coordinator mode: the same Elector on real ZooKeeper and etcd servers.

The servers run inside lab hosts (see ``coordservers.py``), single ones and 3-member
clusters, started once per module and backend; node processes run in other lab hosts, so the
leader's link to the servers can be cut with nftables. Every wait has a deadline; overlap of
two leaders is measured with the monotonic clock all lab processes share. Without the
servers or the client libraries, the lab tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

import pytest

import followtheleader
from followtheleader import Event, State, elect
from followtheleader._coordinators.base import parse_coordinator
from followtheleader._core.lease import Leadership, LeaseMachine, View
from followtheleader._core.model import Member

from cluster import Agreement, Cluster, NodeProcess, check_pairing, leader_overlap
from conftest import Local
from coordservers import ServerPool, ServerSet, server_hosts, unavailable_reason
from netlab import Host, Lab
from recipes import fencing_recipe

TTL = 3.0
"""The session/lease TTL of the test nodes, in seconds."""
BACKENDS = ("zookeeper", "etcd", "postgresql", "redis")
SINGLE_BACKENDS = (*BACKENDS, "pgbouncer")
"""The ``single`` fixture's: ``pgbouncer`` is PostgreSQL behind pgbouncer in transaction mode."""
FENCED_BACKENDS = ("redis", "postgresql", "pgbouncer")
"""Backends whose own server also holds the fencing recipe's guard (examples/fencing.py)."""
HANDOVER_BOUND = 0.5
"""Seconds from stop()/resign() to the successor's leadership, pushed by the server."""
POLLED_RENEWAL = {"pgbouncer": TTL * 0.2}
"""Backends whose members cannot be told of a handover and read the group once per renewal
period instead (PostgreSQLCoordinator.renew_fraction is 0.2): LISTEN hears nothing behind a
transaction pooler."""


# --------------------------------------------------------------------- options (no servers)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("zk://h:2181", "unknown scheme 'zk'"),
        ("h1:2181", "must be a URL"),
        ("zookeeper://", "names no server"),
        ("zookeeper://h1:2181,,h2", "names no server"),
        ("zookeeper://h1:http", "bad port"),
        ("etcd://h1:70000", "bad port"),
        ("zookeeper://h1/a/../b", "bad prefix"),
        ("zookeeper://h1?colour=red", "unknown setting(s) colour"),
        ("etcd://user:pw@h1", "cannot log in with a user and password"),
        ("redis+sentinel://s1:26379", "names the Sentinel service after the sentinels"),
        ("redis+sentinel://s1,s2/mymaster/x", "a Redis database is a number, not 'x'"),
        ("redis+sentinel://s1/mymaster/0/1", "a Redis database is a number, not '0/1'"),
        ("redis+sentinel://s1,,s2/mymaster", "names no server"),
        ("redis+sentinel://s1/mymaster?colour=red", "unknown setting(s) colour"),
        ("redis+sentinel://s1/mymaster?ssl_ca_certs=/ca.pem", "without TLS; it takes no ssl_ca_certs"),
    ],
)
def test_bad_coordinator_urls_fail_at_elect(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="option 'coordinator'") as raised:
        elect("g", coordinator=url)
    assert message in str(raised.value)


def test_missing_client_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kazoo" else real(name, *a))
    with pytest.raises(ValueError, match=r"install followtheleader\[zookeeper\]"):
        elect("g", coordinator="zookeeper://h1")


def test_url_forms_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("kazoo")
    pytest.importorskip("etcd3gw")
    config = parse_coordinator("zookeepers://me:s%40cret@h1,h2:2182,[::1]:3000/some/prefix/?ca=/ca.pem&sasl=DIGEST-MD5")
    assert config.backend == "zookeeper" and config.tls
    assert config.hosts == (("h1", 2181), ("h2", 2182), ("::1", 3000))
    assert config.prefix == "/some/prefix"
    assert (config.username, config.password) == ("me", "s@cret")
    assert "s@cret" not in config.url and "s%40cret" not in config.url
    assert "s%40cret" not in repr(elect("g", coordinator="zookeeper://me:s%40cret@h1").options)
    assert config.setting("ca") == "/ca.pem"
    assert parse_coordinator("etcd://e1").hosts == (("e1", 2379),)
    assert parse_coordinator("etcd://e1").prefix == "/followtheleader"
    monkeypatch.setenv("FOLLOWTHELEADER_COORDINATOR", "etcd://e1:2379")
    elector = elect("g")
    assert type(elector) is followtheleader.Elector  # one class in every mode
    assert elector.options.coordinator == "etcd://e1:2379" and elector.options.coordinator_ttl == 10.0
    with pytest.raises(ValueError, match="coordinator_ttl"):
        elect("g", coordinator_ttl=0.5)
    monkeypatch.delenv("FOLLOWTHELEADER_COORDINATOR")
    assert type(elect("g")) is followtheleader.Elector


# --------------------------------------------------------------------- the lease, by a fake clock


def _view(leader: str | None, term: int = 7, mine: bool = False, members: tuple[str, ...] = ("a", "b")) -> View:
    held = Leadership(Member(leader), term, mine) if leader else None
    return View(held, tuple(Member(m) for m in members))


def test_lease_runs_from_the_send_time_and_demotes_before_the_ttl() -> None:
    machine = LeaseMachine("g", Member("a"), "ZooKeeper", margin=0.6)
    machine.start(0.0)
    [notify] = machine.on_view(sent=1.0, ttl=3.0, view=_view("a", mine=True), now=1.4)
    assert notify.event.kind == "leader" and notify.event.term == 7  # type: ignore[union-attr]
    assert notify.event.fencing_token == followtheleader.FencingToken(7, 0, "a", 0)  # type: ignore[union-attr]
    assert machine.is_leader(3.39) and not machine.is_leader(3.4)  # 1.0 + 3.0 - 0.6
    assert machine.next_deadline() == pytest.approx(3.4)
    [demotion] = machine.tick(3.4)
    assert demotion.event.kind == "reelection" and "lost contact with ZooKeeper" in demotion.event.reason  # type: ignore[union-attr]
    assert machine.abandon and machine.state is State.ELECTING
    assert machine.on_view(sent=3.5, ttl=3.0, view=_view("a", mine=True), now=3.6) == []  # until a new session


def test_a_proof_that_arrives_after_its_lease_does_not_count() -> None:
    machine = LeaseMachine("g", Member("a"), "etcd", margin=0.6)
    machine.start(0.0)
    assert machine.on_view(sent=0.0, ttl=3.0, view=_view("a", mine=True), now=2.5) == []
    assert machine.state is State.ELECTING and not machine.is_leader(2.5)


def test_zookeeper_ignores_a_leader_event_its_last_read_already_shows() -> None:
    """A watch on the leader znode set by a read that found it sends only its deletion or
    change; one set by a read that found none, only its creation. An event of the other kind
    is from an older watch, about what the read already showed: it needs no new read."""
    pytest.importorskip("kazoo")
    from kazoo.protocol.states import EventType

    from followtheleader._coordinators.zookeeper import _stale

    assert _stale(EventType.DELETED, present=False) and _stale(EventType.CHANGED, present=False)
    assert not _stale(EventType.CREATED, present=False)
    assert _stale(EventType.CREATED, present=True)
    assert not _stale(EventType.DELETED, present=True) and not _stale(EventType.CHANGED, present=True)


def test_followers_change_with_the_leadership_and_resign_releases() -> None:
    machine = LeaseMachine("g", Member("b"), "etcd", margin=0.5)
    machine.start(0.0)
    kinds = [a.event.kind for a in machine.on_view(0.0, 3.0, _view("a", 5), 0.1)]  # type: ignore[union-attr]
    assert kinds == ["follower"]
    assert [a.event.kind for a in machine.on_view(0.2, 3.0, _view(None), 0.3)] == ["reelection"]  # type: ignore[union-attr]
    assert [a.event.kind for a in machine.on_view(0.4, 3.0, _view("b", 9, True), 0.5)] == ["leader"]  # type: ignore[union-attr]
    assert machine.term == 9 and machine.members(0.5) == (Member("a"), Member("b"))
    assert [a.event.reason for a in machine.resign(0.6)] == ["resigned"]  # type: ignore[union-attr]
    assert machine.release_term == 9 and not machine.is_leader(0.6)
    assert machine.on_view(0.7, 3.0, _view("b", 9, True), 0.8) == []  # not yet released: still no leader
    machine.on_released()
    # a leadership still held by an older session of this very node counts as vacant
    assert machine.on_view(0.9, 3.0, _view("b", 9, False), 1.0) == [] and machine.state is State.ELECTING


# --------------------------------------------------------------------- the servers


@pytest.fixture(params=SINGLE_BACKENDS)
def single(request: Any, lab: Lab, coordinator_servers: ServerPool) -> ServerSet:
    """A single server of each backend (and PostgreSQL behind pgbouncer)."""
    return coordinator_servers.get(lab, request.param, 1)


@pytest.fixture(params=BACKENDS)
def trio(request: Any, lab: Lab, coordinator_servers: ServerPool) -> ServerSet:
    """A 3-member cluster of each backend (PostgreSQL and Redis: none, one server is the service)."""
    if request.param == "redis":
        pytest.skip("Redis: one primary, no ensemble")
    if request.param == "postgresql":
        pytest.skip("PostgreSQL is one server here: no 3-member cluster")
    return coordinator_servers.get(lab, request.param, 3)


def _options(servers: ServerSet, **extra: Any) -> dict[str, Any]:
    return {"coordinator": servers.url, "coordinator_ttl": TTL, **extra}


def _start(cluster: Cluster, hosts: list[Host], servers: ServerSet, count: int) -> list[NodeProcess]:
    """``count`` nodes ``c0``... with priorities 0.., all told to start at once."""
    processes = [
        cluster.spawn(host, wait_go=True, node_ids=[f"c{i}"], options=_options(servers, priority=i))
        for i, host in enumerate(hosts[:count])
    ]
    cluster.wait_ready()
    for process in processes:
        process.send("go")
    return processes


def _handover_bounds(backend: str) -> tuple[float, float, str]:
    """Seconds from stop()/resign() on ``backend`` until the successor leads and until every
    member follows it, and why."""
    period = POLLED_RENEWAL.get(backend)
    if period is None:
        return HANDOVER_BOUND, HANDOVER_BOUND, "pushed by the server"
    why = (
        f"by polling: each member reads the group once per renewal period ({period:.1f} s), the successor"
        " sees the vacancy within one and the others see its claim within one more"
    )
    return period + HANDOVER_BOUND, 2 * period + HANDOVER_BOUND, why


def _assert_handover(cluster: Cluster, backend: str, sent: float, second: Agreement) -> None:
    """The successor of ``second`` (an agreement) led, and all followed it, within the bounds."""
    lead_bound, agree_bound, why = _handover_bounds(backend)
    led = min(
        e["t"]
        for e in cluster.all_events()
        if e["kind"] == "leader" and (e["node"], e["term"]) == (second.leader, second.term)
    )
    assert led - sent < lead_bound, f"the successor led {led - sent:.3f} s after (bound {lead_bound:.1f} s, {why})"
    agreed = second.time - sent
    assert agreed < agree_bound, f"all agreed {agreed:.3f} s after (bound {agree_bound:.1f} s, {why})"


pytestmark_lab = pytest.mark.lab


@pytest.mark.lab
def test_cold_start_of_five_elects_the_best_ranked_with_a_server_term(
    cluster: Cluster, hosts: list[Host], single: ServerSet
) -> None:
    _start(cluster, hosts, single, 5)
    agreed = cluster.wait_agreement(timeout=20)
    assert agreed.leader == "c4"  # the highest priority, among nodes started together
    assert agreed.term > 0
    # c0 followed on a view read when it may not have held every member yet: its list
    # follows the server's at its next reading.
    cluster.wait_members(cluster.process_of("c0"), ["c4", "c3", "c2", "c1", "c0"])
    status = cluster.status(cluster.process_of("c0"))
    assert status["members"] == ["c4", "c3", "c2", "c1", "c0"]
    assert status["port"] == 0
    assert not [t for t in status["threads"] if "zeroconf" in t.lower() or "heartbeat" in t]
    leader_status = cluster.status(cluster.process_of("c4"))
    assert leader_status["is_leader"] and leader_status["term"] == agreed.term
    assert cluster.leader_overlap() == 0.0
    check_pairing(cluster.all_events())


@pytest.mark.lab
def test_sigkill_of_the_leader_fails_over_within_ttl_plus_one_second(
    cluster: Cluster, hosts: list[Host], single: ServerSet
) -> None:
    _start(cluster, hosts, single, 3)
    first = cluster.wait_agreement(timeout=20)
    killed_at = cluster.process_of(first.leader).kill()
    second = cluster.wait_agreement(timeout=TTL + 10, other_than=first.leader, after_term=first.term)
    failover = second.time - killed_at
    assert failover <= TTL + 1.0, f"failover took {failover:.2f} s"
    assert second.leader == "c1"  # the best-ranked survivor
    assert cluster.leader_overlap() == 0.0
    check_pairing(cluster.all_events())


@pytest.mark.lab
@pytest.mark.parametrize("how", ["stop", "resign"])
def test_stop_and_resign_hand_over_at_once(cluster: Cluster, hosts: list[Host], single: ServerSet, how: str) -> None:
    _start(cluster, hosts, single, 3)
    first = cluster.wait_agreement(timeout=20)
    sent = cluster.process_of(first.leader).send(f"{how} 0")
    second = cluster.wait_agreement(timeout=5, other_than=first.leader, after_term=first.term)
    _assert_handover(cluster, single.backend, sent, second)
    assert second.leader == "c1"
    if how == "resign":  # the resigned node follows the successor
        roles = cluster.wait(
            lambda: (r := cluster.roles_locked().get(first.leader)) and r.kind == "follower" and r,
            5,
            "the resigned node follows",
        )
        assert roles.leader == second.leader
    assert cluster.leader_overlap() == 0.0
    check_pairing(cluster.all_events())


@pytest.mark.lab
def test_a_leader_cut_off_from_the_server_demotes_before_a_successor_leads(
    faults: Lab, cluster: Cluster, hosts: list[Host], single: ServerSet
) -> None:
    _start(cluster, hosts, single, 3)
    first = cluster.wait_agreement(timeout=20)
    leader_host = cluster.process_of(first.leader).host
    cut_at = time.monotonic()
    faults.set_faults(partition=([leader_host.name], [s.host.name for s in single.servers]))

    def others_agree() -> str | None:
        roles = {node: r for node, r in cluster.roles_locked().items() if node != first.leader}
        views = {(r.leader, r.term) for r in roles.values() if r.kind in ("leader", "follower")}
        leaders = [node for node, r in roles.items() if r.kind == "leader" and r.term > first.term]
        if len(roles) == 2 and len(views) == 1 and leaders and views == {(leaders[0], roles[leaders[0]].term)}:
            return leaders[0]
        return None

    successor = cluster.wait(others_agree, TTL + 10, "the others agree on a successor")
    # Its demotion (decided before the successor led: the event times say so) comes through
    # its own callback thread and output, which may lag behind the others'.
    old = cluster.process_of(first.leader)
    demotions = cluster.wait(
        lambda: [e for e in old.events() if e["kind"] == "reelection" and e["t"] > cut_at],
        10,
        "the cut-off leader to demote itself",
    )
    events = cluster.all_events()
    assert "lost contact with" in demotions[0]["reason"], events
    successor_leads = min(e["t"] for e in events if e["kind"] == "leader" and e["node"] == successor)
    assert demotions[0]["t"] < successor_leads, "the successor led before the cut-off leader demoted"
    assert leader_overlap(events) == 0.0
    faults.set_faults()  # healed: the old leader comes back as a follower, with a new session
    cluster.wait(
        lambda: (r := cluster.roles_locked().get(first.leader)) and r.kind == "follower" and r.leader == successor,
        TTL + 10,
        "the old leader follows",
    )
    check_pairing(cluster.all_events())


@pytest.mark.lab
def test_server_killed_and_restarted(cluster: Cluster, hosts: list[Host], single: ServerSet) -> None:
    _start(cluster, hosts, single, 3)
    first = cluster.wait_agreement(timeout=20)
    server = single.servers[0]
    server.kill()
    try:
        cluster.wait(
            lambda: all(r.kind == "reelection" for r in cluster.roles_locked().values()),
            TTL + 10,
            "every node demotes while the server is down",
        )
        errors = [r for p in cluster.processes for r in p.events(("error",))]
        assert errors and all(p.alive for p in cluster.processes)
    finally:
        server.start()
        server.wait_ready(60)
    second = cluster.wait_agreement(timeout=TTL + 20, after_term=first.term)
    assert second.term > first.term
    assert cluster.leader_overlap() == 0.0
    check_pairing(cluster.all_events())


@pytest.mark.lab
def test_leadership_holds_when_one_member_of_three_is_killed(
    cluster: Cluster, hosts: list[Host], trio: ServerSet
) -> None:
    _start(cluster, hosts, trio, 3)
    first = cluster.wait_agreement(timeout=30)
    victim = trio.servers[0]
    victim.kill()
    try:
        changes = cluster.wait_quiet(TTL * 2)
        assert changes == [], f"role changes after one server of three died: {changes}"
        status = cluster.status(cluster.process_of(first.leader))
        assert status["is_leader"] and status["term"] == first.term
    finally:
        victim.start()
        victim.wait_ready(60)


@pytest.mark.lab
def test_a_slow_callback_delays_nothing_else(local: Local, single: ServerSet) -> None:
    release = threading.Event()
    led: list[Event] = []
    slow = elect("slowgroup" + os.urandom(3).hex(), node_id="slow", priority=5, **_options(single))
    other = elect(slow.name, node_id="other", **_options(single))
    slow.on("leader", lambda event: (led.append(event), release.wait(30)))
    reelections: list[Event] = []
    slow.on("reelection", reelections.append)
    sockets_before = _socket_fds()
    try:
        local(slow.start)
        assert local(lambda: slow.wait_for_leader(15)) is not None
        local(other.start)
        assert local(lambda: other.wait_for_leader(15)) == Member("slow", 5)
        deadline = time.monotonic() + TTL * 2
        while time.monotonic() < deadline:  # the callback blocks; the session goes on
            assert slow.is_leader, "the leader lost its lease while its callback was slow"
            release.wait(0.2)
        assert not reelections and len(led) == 1
        if single.backend == "zookeeper":  # the timeout the server granted was read from kazoo
            assert slow._backend._coordinator._granted is not None  # type: ignore[attr-defined]
            assert slow._backend._coordinator._granted.seconds == TTL  # type: ignore[attr-defined]
        _assert_no_datagram_sockets(sockets_before)
    finally:
        release.set()
        other.stop()
        slow.stop()


def _socket_fds() -> set[int]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                found.add(int(fd))
        except OSError:
            pass
    return found


def _assert_no_datagram_sockets(before: set[int]) -> None:
    """No UDP socket (mDNS, heartbeats) among the sockets opened since ``before``."""
    for fd in _socket_fds() - before:
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                assert sock.type is not socket.SOCK_DGRAM, f"a datagram socket was opened: {sock}"
        except OSError:
            continue  # closed in between


@pytest.mark.lab
@pytest.mark.parametrize("backend", BACKENDS)
def test_server_down_gives_an_error_event_and_retries_until_stopped(local: Local, lab: Lab, backend: str) -> None:
    if unavailable_reason(backend):
        pytest.skip(unavailable_reason(backend) or "")
    nobody = server_hosts(lab, ["nobody"])[0]  # a lab host where no server listens
    url = f"{backend}://{nobody.address}:{2181 if backend == 'zookeeper' else 2379}"
    elector = elect("downgroup", coordinator=url, coordinator_ttl=TTL)
    errors: list[Event] = []
    got_error = threading.Event()
    elector.on("error", lambda event: (errors.append(event), got_error.set()))
    try:
        local(elector.start)
        assert got_error.wait(15), "no error event while the server is down"
        assert elector.state is State.ELECTING and not elector.is_leader
        assert isinstance(errors[0].error, OSError) and errors[0].reason.startswith(
            ("ZooKeeper", "etcd", "PostgreSQL", "Redis")
        )
    finally:
        assert elector.stop(timeout=TTL + 10)
    assert elector.stop() and elector.stop()  # idempotent


@pytest.mark.lab
def test_status_lists_groups_leaders_and_terms(cluster: Cluster, hosts: list[Host], single: ServerSet) -> None:
    import json
    import sys

    _start(cluster, hosts, single, 2)
    agreed = cluster.wait_agreement(timeout=20)
    argv = [sys.executable, "-m", "followtheleader", "status", cluster.group, "--coordinator", single.url]
    result = hosts[5].run([*argv, "--json"], timeout=60)
    [group] = json.loads(result.stdout)["groups"]
    assert (group["group"], group["leader"]["node_id"], group["term"]) == (cluster.group, agreed.leader, agreed.term)
    assert group["leader"]["host"] is None and group["leader"]["port"] is None  # known by id only
    token = followtheleader.FencingToken.from_key(group["fencing_token"])
    assert (token.term, token.priority, token.node_id) == (agreed.term, 1, agreed.leader)
    assert [m["node_id"] for m in group["members"]] == ["c1", "c0"]
    assert [m["role"] for m in group["members"]] == ["leader", "follower"]
    table = hosts[5].run(argv, timeout=60).stdout.splitlines()
    assert table[0].split() == ["GROUP", "LEADER", "TERM", "TOKEN", "MEMBERS"]  # as on the LAN
    assert table[1].split() == [
        cluster.group,
        "c1",
        str(agreed.term),
        f"{agreed.term}/1/c1/000000",
        "c1",
        "leader,",
        "c0",
        "follower",
    ]
    missing = hosts[5].run([*argv[:4], "nosuchgroup", *argv[5:]], check=False, timeout=60)
    assert missing.returncode == 1


def test_cli_refuses_a_bad_coordinator_url() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "followtheleader", "elect", "g", "--coordinator", "zk://h"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "unknown scheme 'zk'" in result.stderr


@pytest.mark.lab
def test_a_leader_on_a_server_cut_off_from_its_ensemble_demotes_before_a_successor_leads(
    faults: Lab, cluster: Cluster, hosts: list[Host], trio: ServerSet
) -> None:
    """The leader talks to server 0 only, the others to servers 1 and 2; then server 0 is cut
    off from the rest. A ZooKeeper server goes on answering reads for a while after it lost
    its ensemble, and an etcd member cannot renew a lease without its leader: either way the
    leader must demote by its own lease before the majority side lets another node lead."""
    scheme, _, rest = trio.url.partition("://")
    addresses, _, prefix = rest.partition("/")
    urls = addresses.split(",")
    lone = f"{scheme}://{urls[0]}/{prefix}"
    majority = f"{scheme}://{','.join(urls[1:])}/{prefix}"
    processes = [
        cluster.spawn(hosts[i], wait_go=True, node_ids=[f"c{i}"], options=_options(trio, priority=i, coordinator=url))
        for i, url in enumerate([majority, majority, lone])
    ]
    cluster.wait_ready()
    for process in processes:
        process.send("go")
    first = cluster.wait_agreement(timeout=30)
    assert first.leader == "c2"
    cut_at = time.monotonic()
    server0, others = trio.servers[0].host.name, [s.host.name for s in trio.servers[1:]]
    faults.set_faults(partition=([server0], [*others, hosts[0].name, hosts[1].name]))
    try:

        def successor() -> str | None:
            roles = cluster.roles_locked()
            leaders = [n for n in ("c0", "c1") if roles[n].kind == "leader" and roles[n].term > first.term]
            return leaders[0] if leaders else None

        new_leader = cluster.wait(successor, TTL * 4 + 10, "a successor on the majority side")
        # Its demotion (decided before the successor led: the event times say so) comes
        # through its own callback thread and output, which may lag behind the others'.
        old = cluster.process_of("c2")
        demotions = cluster.wait(
            lambda: [e for e in old.events() if e["kind"] == "reelection" and e["t"] > cut_at],
            10,
            "the leader on the cut-off server to demote",
        )
        events = cluster.all_events()
        successor_leads = min(e["t"] for e in events if e["kind"] == "leader" and e["node"] == new_leader)
        assert demotions[0]["t"] < successor_leads
        assert leader_overlap(events) == 0.0
    finally:
        faults.set_faults()
    check_pairing(cluster.all_events())


@pytest.mark.lab
def test_alone_a_resigned_node_leads_again_with_a_greater_term_and_stops_from_a_callback(
    local: Local, single: ServerSet
) -> None:
    elector = elect("alone" + os.urandom(3).hex(), node_id="solo", **_options(single))
    assert elector.stop() and elector.stop()  # before start: nothing to do, and idempotent
    elector = elect(elector.name, node_id="solo", **_options(single))
    leaders: list[Event] = []
    second = threading.Event()
    stopped_inside: list[bool] = []

    def on_leader(event: Event) -> None:
        leaders.append(event)
        if len(leaders) == 2:
            stopped_inside.append(elector.stop())
            second.set()

    elector.on("leader", on_leader)
    local(elector.start)
    assert local(lambda: elector.wait_for_leader(15)) is not None
    first_token = elector.fencing_token
    assert elector.resign()
    assert second.wait(15), "alone, the resigned node did not lead again"
    assert leaders[1].term > leaders[0].term and leaders[1].fencing_token > first_token  # type: ignore[operator]
    assert elector.join(TTL + 10) and stopped_inside == [True]
    assert elector.state is State.STOPPED and not elector.is_leader
    assert elector.stop() and elector.stop()


@pytest.mark.lab
def test_cli_elect_and_run_with_a_coordinator(hosts: list[Host], single: ServerSet) -> None:
    import json
    import signal
    import sys

    from cluster import JsonLinesProcess

    changed = threading.Condition()
    group = "cli" + os.urandom(3).hex()
    common = ["--coordinator", single.url, "--coordinator-ttl", str(TTL), "--priority"]
    elect_cli = JsonLinesProcess(
        hosts[6], [sys.executable, "-m", "followtheleader", "elect", group, *common, "5", "--json"], changed
    )
    command = 'echo "{\\"event\\": \\"cmd\\", \\"term\\": $FOLLOWTHELEADER_TERM}"; exec sleep 60'
    run_argv = [sys.executable, "-m", "followtheleader", "run", group, *common, "1", "--", "sh", "-c", command]
    run_cli: JsonLinesProcess | None = None

    def first(process: JsonLinesProcess, event: str) -> dict[str, Any] | None:
        return next((r for r in process.records if r.get("event") == event), None)

    def wait(predicate: Any, what: str) -> Any:
        deadline = time.monotonic() + 30
        with changed:
            while not (value := predicate()):
                stderr = (elect_cli.stderr, run_cli.stderr if run_cli else "")
                assert time.monotonic() < deadline, f"timed out waiting for {what}: {stderr}"
                changed.wait(deadline - time.monotonic())
            return value

    try:
        led = wait(lambda: first(elect_cli, "leader"), "elect to lead")
        assert led["term"] > 0 and led["leader"]["port"] == 0
        run_cli = JsonLinesProcess(hosts[7], run_argv, changed)  # once elect leads: it follows
        status = [sys.executable, "-m", "followtheleader", "status", group, "--coordinator", single.url, "--json"]
        deadline = time.monotonic() + 30
        while len(json.loads(hosts[5].run(status, timeout=60).stdout)["groups"][0]["members"]) < 2:
            assert time.monotonic() < deadline, "run's node never registered"
        elect_cli.proc.send_signal(signal.SIGTERM)  # hands over: run's node leads and starts CMD
        assert elect_cli.proc.wait(30) == 0
        started = wait(lambda: run_cli is not None and first(run_cli, "cmd"), "run to start CMD")
        assert started["term"] > led["term"]
    finally:
        for process in (elect_cli, run_cli):
            if process is not None and process.proc.poll() is None:
                process.proc.send_signal(signal.SIGTERM)
                try:
                    process.proc.wait(30)
                except subprocess.TimeoutExpired:
                    stderr = process.abort_with_stacks()
                    raise AssertionError(f"no exit 30 s after SIGTERM; stderr and stacks:\n{stderr}") from None
    assert run_cli is not None and run_cli.proc.returncode == 0, run_cli.stderr
    # run says where it joined, and names the leader it followed by its id alone (no address)
    run_cli._stderr_reader.join(10)
    lines = run_cli.stderr.splitlines()
    joined = next(line for line in lines if " joined " in line)
    assert joined.endswith(f"(coordinator {single.url})") and "heartbeat port" not in joined, joined
    followed = next(line for line in lines if " follower " in line)
    assert followed.endswith(f" leader {led['node_id']} (following {led['node_id']})"), followed


@pytest.mark.lab
def test_etcd_over_tls_with_a_client_certificate(cluster: Cluster, hosts: list[Host], lab: Lab) -> None:
    import json
    import sys

    if unavailable_reason("etcd") or shutil.which("openssl") is None:
        pytest.skip(unavailable_reason("etcd") or "openssl is not installed")
    servers = ServerSet("etcd", server_hosts(lab, ["etls"]), tls=True)
    try:
        servers.start()
        assert servers.url.startswith("etcds://")
        _start(cluster, hosts, servers, 2)
        agreed = cluster.wait_agreement(timeout=20)
        assert agreed.leader == "c1" and agreed.term > 0
        argv = [sys.executable, "-m", "followtheleader", "status", cluster.group, "--coordinator", servers.url]
        [group] = json.loads(hosts[5].run([*argv, "--json"], timeout=60).stdout)["groups"]
        assert (group["leader"]["node_id"], group["term"]) == ("c1", agreed.term)
        # without the client certificate the server refuses the connection: status says so
        bare = servers.url.split("&cert=")[0]
        refused = hosts[5].run([*argv[:-1], bare], check=False, timeout=60)
        assert refused.returncode == 1 and "etcd did not answer" in refused.stderr
    finally:
        cluster.finish()
        servers.close()


@pytest.mark.lab
def test_zookeeper_digest_authentication_keeps_other_clients_out(
    cluster: Cluster, hosts: list[Host], lab: Lab, coordinator_servers: ServerPool
) -> None:
    import sys

    servers = coordinator_servers.get(lab, "zookeeper", 1)
    scheme, _, rest = servers.url.partition("://")
    private = f"{scheme}://ftl:s3cret@{rest.split('/')[0]}/private{os.urandom(3).hex()}"
    processes = [
        cluster.spawn(
            host,
            wait_go=True,
            node_ids=[f"c{i}"],
            options={"coordinator": private, "coordinator_ttl": TTL, "priority": i},
        )
        for i, host in enumerate(hosts[:2])
    ]
    cluster.wait_ready()  # started at once: the best-ranked one leads (not whichever imported first)
    for process in processes:
        process.send("go")
    agreed = cluster.wait_agreement(timeout=20)
    assert agreed.leader == "c1"
    argv = [sys.executable, "-m", "followtheleader", "status", cluster.group, "--coordinator"]
    allowed = hosts[5].run([*argv, private], timeout=60)
    assert "c1" in allowed.stdout and str(agreed.term) in allowed.stdout and "s3cret" not in allowed.stdout
    anonymous = hosts[5].run([*argv, private.replace("ftl:s3cret@", "")], check=False, timeout=60)
    assert anonymous.returncode == 1 and "NoAuth" in anonymous.stderr
    intruder = hosts[5].run([*argv, private.replace("s3cret", "guess")], check=False, timeout=60)
    assert intruder.returncode == 1 and "NoAuth" in intruder.stderr


# --------------------------------------------------------------------- a paused leader, a wrong clock


@pytest.fixture(params=FENCED_BACKENDS)
def fenced(request: Any, lab: Lab, coordinator_servers: ServerPool) -> ServerSet:
    """A single server of each backend whose server also holds the fencing recipe's guard."""
    return coordinator_servers.get(lab, request.param, 1)


def _fenced_writes(
    servers: ServerSet, name: str, new: followtheleader.FencingToken, stale: followtheleader.FencingToken
) -> tuple[bool, bool]:
    """The fencing recipe's guard (examples/fencing.py) in the coordinator's own server (for
    PostgreSQL the epoch guard, through pgbouncer when the nodes went through it): whether
    the write under ``new`` was accepted, then the write under ``stale``."""
    recipe = fencing_recipe()
    host = servers.servers[0].host

    def writes() -> tuple[bool, bool]:
        if servers.backend.startswith("redis"):
            import redis

            from coordservers import REDIS_PORT

            with redis.Redis(host=host.address, port=REDIS_PORT, socket_timeout=5) as client:
                guard = recipe.RedisGuard(client, f"fenced:{name}")
                return guard.write(new, "successor"), guard.write(stale, "paused leader")
        guard = recipe.PostgreSQLEpochGuard(servers.url, name=name)
        return guard.write(new, "successor"), guard.write(stale, "paused leader")

    return host.call_in_namespace(writes, timeout=30)


def _token_of(cluster: Cluster, node: str, term: int) -> followtheleader.FencingToken:
    """The fencing token ``node`` was given when it led in ``term`` (its leader event carries the key)."""
    key = next(
        e["token"] for e in cluster.all_events() if e["kind"] == "leader" and (e["node"], e["term"]) == (node, term)
    )
    return followtheleader.FencingToken.from_key(key)


@pytest.mark.lab
def test_a_paused_leader_demotes_and_its_old_token_is_refused(
    cluster: Cluster, hosts: list[Host], fenced: ServerSet
) -> None:
    """SIGSTOP of the leader past its TTL, then SIGCONT: a successor leads first, the old
    leader demotes as soon as it runs, and its write with its old token is refused by the
    fencing recipe's guard in the same server."""
    import signal

    _start(cluster, hosts, fenced, 3)
    first = cluster.wait_agreement(timeout=20)
    old = cluster.process_of(first.leader)
    old.proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()

    def others_lead() -> tuple[str, int] | None:
        roles = {node: r for node, r in cluster.roles_locked().items() if node != first.leader}
        leaders = [(node, r.term) for node, r in roles.items() if r.kind == "leader" and r.term > first.term]
        return leaders[0] if leaders else None

    try:
        successor, term = cluster.wait(others_lead, TTL + 20, "a successor while the leader is stopped")
    finally:
        continued_at = time.monotonic()
        old.proc.send_signal(signal.SIGCONT)
    assert continued_at - stopped_at > TTL * 0.8  # the successor waited for the stopped leader's lease to expire
    second = cluster.wait_agreement(timeout=20, after_term=first.term)
    assert (second.leader, second.term) == (successor, term)
    demotions = cluster.wait(
        lambda: [e for e in old.events() if e["kind"] != "leader" and e["t"] >= stopped_at] or None,
        20,
        "the paused leader to demote itself once continued",
    )
    # A stopped process cannot say it stopped leading: on the shared clock its leader role ends
    # only once it runs again (its lease ended at its deadline, the ticker says so at once).
    # That window is what the fencing token is for.
    assert demotions[0]["kind"] == "reelection" and demotions[0]["t"] - continued_at < 1.0
    assert leader_overlap([e for e in cluster.all_events() if e["node"] != first.leader]) == 0.0
    check_pairing(cluster.all_events())
    new_token, stale_token = (
        _token_of(cluster, second.leader, second.term),
        _token_of(cluster, first.leader, first.term),
    )
    assert _fenced_writes(fenced, cluster.group, new_token, stale_token) == (True, False)


@pytest.mark.lab
def test_a_client_whose_wall_clock_is_a_day_off_elects_and_hands_over(
    cluster: Cluster, hosts: list[Host], fenced: ServerSet
) -> None:
    """Expiries are the server's (Redis: PX, and member entries scored by the server's TIME;
    PostgreSQL: clock_timestamp()): a member whose wall clock is wrong (libfaketime, monotonic
    clock left alone so that the shared clock of the events stays true) leads and hands over
    like the others."""
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (apt-get install faketime)")
    skewed = cluster.spawn(
        hosts[2],
        node_ids=["c2"],
        options=_options(fenced, priority=2),
        wrapper=["faketime", "-f", "-1d"],
        env={"FAKETIME_DONT_FAKE_MONOTONIC": "1"},
    )
    first = cluster.wait_agreement(timeout=20)
    assert first.leader == "c2" and skewed.alive
    for i in (0, 1):  # the others follow it (a leadership is sticky)
        cluster.spawn(hosts[i], node_ids=[f"c{i}"], options=_options(fenced, priority=i))
    cluster.wait(
        lambda: [r.leader for r in cluster.roles_locked().values()] == ["c2"] * 3 or None,
        20,
        "the others to follow the skewed leader",
    )
    sent = cluster.process_of("c2").send("stop 0")
    second = cluster.wait_agreement(timeout=20, other_than="c2", after_term=first.term)
    assert second.leader == "c1"
    _assert_handover(cluster, fenced.backend, sent, second)
    assert cluster.leader_overlap() == 0.0
    check_pairing(cluster.all_events())
