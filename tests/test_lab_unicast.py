"""Unicast mode in the namespace lab: peers from a list or from DNS, with multicast dropped on
the bridge (nftables), so that nothing can work by mDNS by accident.

Node processes run tests/node_runner.py; the DNS name is served by tests/dnsserver.py on the
``local`` host, and the node hosts resolve through it (``Host.set_resolver``).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from dnsserver import DnsServer

from followtheleader import elect
from followtheleader._core.messages import ANYONE, Message
from followtheleader._options import parse_options
from followtheleader._wire.auth import Authenticator
from followtheleader._wire.protocol import State, decode_datagram, encode_message

from cluster import Cluster, NodeProcess, check_pairing
from netlab import Host, Lab

pytestmark = pytest.mark.lab

SECRET = "unicast-test-secret"


def listed(hosts: list[Host]) -> list[str]:
    return [f"{host.address}:9001" for host in hosts]


def start(cluster: Cluster, hosts: list[Host], options: list[dict[str, Any]]) -> list[NodeProcess]:
    """One node per host (node-0, node-1, ...) with its own options, all started at once."""
    processes = [
        cluster.spawn(host, wait_go=True, node_ids=[f"node-{i}"], options=option)
        for i, (host, option) in enumerate(zip(hosts, options, strict=True))
    ]
    cluster.wait_ready()
    for process in processes:
        process.send("go")
    return processes


@pytest.mark.parametrize("secret", [None, SECRET], ids=["open", "secret"])
def test_cold_start_from_a_list_without_multicast(
    no_multicast: Lab, cluster: Cluster, hosts: list[Host], secret: str | None
) -> None:
    options = {"peers": listed(hosts[:3]), **({"secret": secret} if secret else {})}  # each lists itself too
    processes = start(cluster, hosts[:3], [options] * 3)
    agreed = cluster.wait_agreement()
    assert (agreed.leader, agreed.term) == ("node-2", 1)
    assert cluster.leader_overlap() == 0
    for process in processes:
        cluster.wait_members(process, ["node-0", "node-1", "node-2"])
        status = cluster.status(process)
        assert status["udp_ports"] == [9001], status  # the heartbeat socket only: no mDNS
        assert not [t for t in status["threads"] if "zeroconf" in t.lower()], status["threads"]
        assert not status["counters"].get("replayed") and not status["counters"].get("unauthenticated")


def test_multicast_is_really_dropped(no_multicast: Lab, cluster: Cluster, hosts: list[Host]) -> None:
    """The check of the check: two mDNS nodes do not find each other on this bridge."""
    start(cluster, hosts[:2], [{}, {}])

    def both_lead() -> bool:
        roles = cluster.roles_locked()
        return len(roles) == 2 and all(r.kind == "leader" for r in roles.values())

    cluster.wait(both_lead, 10, "each mDNS node to lead alone")
    assert no_multicast.multicast_dropped() > 0


@pytest.mark.parametrize("secret", [None, SECRET], ids=["open", "secret"])
def test_sigkill_failover_and_stop_handover(
    no_multicast: Lab, cluster: Cluster, hosts: list[Host], secret: str | None
) -> None:
    start(cluster, hosts[:4], [{"peers": listed(hosts[:4]), **({"secret": secret} if secret else {})}] * 4)
    first = cluster.wait_agreement()
    assert first.leader == "node-3"
    for process in cluster.processes:
        cluster.wait_members(process, [f"node-{i}" for i in range(4)])
    killed_at = cluster.process_of(first.leader).kill()
    second = cluster.wait_agreement(other_than=first.leader, after_term=first.term)
    assert (second.leader, second.term) == ("node-2", 2)
    failover = second.time - killed_at
    assert failover < 1.5, failover  # failure window 0.7 s + confirmation: as in mDNS mode
    leader = cluster.process_of(second.leader)
    stopped_at = leader.send("stop 0")
    third = cluster.wait_agreement(other_than=second.leader, after_term=second.term)
    assert (third.leader, third.term) == ("node-1", 3)
    assert third.time - stopped_at < 0.3, third.time - stopped_at  # through the resign message
    cluster.wait_stopped(leader)  # its own demotion is among the events from then on
    reasons = {e["reason"] for e in cluster.all_events() if e["kind"] == "reelection" and e["t"] > stopped_at}
    assert reasons <= {"leader resigned", "stopped"}, reasons
    assert cluster.leader_overlap() == 0
    check_pairing(cluster.all_events())


@pytest.mark.parametrize("secret", [None, SECRET], ids=["open", "secret"])
def test_partition_heals_within_a_second(
    no_multicast: Lab, cluster: Cluster, hosts: list[Host], secret: str | None
) -> None:
    start(cluster, hosts[:4], [{"peers": listed(hosts[:4]), **({"secret": secret} if secret else {})}] * 4)
    first = cluster.wait_agreement()
    assert first.leader == "node-3"
    for process in cluster.processes:
        cluster.wait_members(process, [f"node-{i}" for i in range(4)])
    no_multicast.set_faults(partition=(["n0", "n1"], ["n2", "n3"]))

    def both_sides_lead() -> bool:
        roles = cluster.roles_locked()
        return (
            roles["node-1"].kind == "leader" and roles["node-0"].leader == "node-1" and roles["node-3"].kind == "leader"
        )

    cluster.wait(both_sides_lead, 15, "a leader on each side")
    healing = time.monotonic()
    no_multicast.set_faults()
    healed = cluster.wait_agreement(timeout=10, after_term=0)
    roles = {e["node"] for e in cluster.all_events() if e["t"] > healing}
    assert roles, "no role changed after the heal"
    assert healed.time - healing < 1.0, healed.time - healing
    assert healed.leader == "node-1" and healed.term == 2  # the greater term wins
    check_pairing(cluster.all_events())


def test_quorum_mode_with_a_secret(no_multicast: Lab, cluster: Cluster, hosts: list[Host]) -> None:
    """A leader cut off alone loses the quorum; the majority elects; the minority never claims."""
    start(cluster, hosts[:3], [{"peers": listed(hosts[:3]), "quorum": 3, "secret": SECRET}] * 3)
    assert cluster.wait_agreement().leader == "node-2"
    no_multicast.set_faults(partition=(["n2"], ["n0", "n1"]))
    old = cluster.process_of("node-2")
    cluster.wait(lambda: any(e["kind"] == "reelection" for e in old.events()), 10, "old leader loses the quorum")
    assert old.events()[-1]["reason"] == "lost the quorum"

    def majority_leads() -> bool:
        roles = cluster.roles_locked()
        return roles["node-1"].kind == "leader" and (roles["node-0"].kind, roles["node-0"].leader) == (
            "follower",
            "node-1",
        )

    cluster.wait(majority_leads, 10, "the majority side elects")
    assert cluster.wait_quiet(3.0) == []  # the minority side of one never claims
    assert cluster.leader_overlap() == 0
    no_multicast.set_faults()
    assert cluster.wait_agreement(timeout=10).leader == "node-1"


def test_dns_name_whose_record_set_changes(no_multicast: Lab, cluster: Cluster, hosts: list[Host]) -> None:
    """Replicas behind one DNS name: a newcomer joins through it, a name seen again later is
    followed (re-resolution), an unresolvable name is an error event and is tried again."""
    group = hosts[:4]
    for host in group:
        host.set_resolver(no_multicast.hosts["local"].address)
    try:
        with DnsServer(no_multicast.hosts["local"]) as dns:
            dns.set("replicas.ftl.test", [hosts[0].address, hosts[1].address])
            dns.set("other.ftl.test", [hosts[2].address])
            start(cluster, hosts[:2], [{"peers": "dns:replicas.ftl.test"}] * 2)
            assert cluster.wait_agreement().leader == "node-1"
            # node-2 knows only a name of its own: it leads alone, until the group's name lists it.
            lonely = cluster.spawn(hosts[2], node_ids=["node-2"], options={"peers": "dns:other.ftl.test"})
            cluster.wait(lambda: any(e["kind"] == "leader" for e in lonely.events()), 10, "node-2 to lead alone")
            listed_at = time.monotonic()
            dns.set("replicas.ftl.test", [hosts[0].address, hosts[1].address, hosts[2].address])
            joined = cluster.wait_agreement(timeout=15)
            assert joined.time - listed_at < 5.0 + 1.0  # one re-resolution (every 5 s) and a probe
            # node-3's name does not exist yet: an error event, and it tries again.
            missing = cluster.spawn(hosts[3], node_ids=["node-3"], options={"peers": "dns:late.ftl.test"})
            errors = cluster.wait(
                lambda: [e for e in missing.events(("error",)) if "cannot resolve" in (e["reason"] or "")],
                10,
                "an error event for the missing name",
            )
            assert "late.ftl.test" in errors[0]["reason"]
            dns.set("late.ftl.test", [hosts[0].address])
            # Meanwhile it led alone (availability first, as an mDNS node alone does); now the
            # two leaders meet and one remains.
            cluster.wait_agreement(timeout=10, after_term=0)
            for process in cluster.processes:
                cluster.wait_members(process, ["node-0", "node-1", "node-2", "node-3"])
            assert dns.queries > 0
    finally:
        for host in group:
            host.set_resolver(None)


def test_mixed_group_of_listed_and_mdns_nodes(lab: Lab, cluster: Cluster, hosts: list[Host]) -> None:
    """Multicast allowed: node-0 and node-1 use mDNS, node-2 and node-3 a peer list."""
    peers = {"peers": listed(hosts[:4])}
    start(cluster, hosts[:4], [{}, {}, peers, peers])
    agreed = cluster.wait_agreement()
    assert (agreed.leader, agreed.term) == ("node-3", 1)
    for process in cluster.processes:
        cluster.wait_members(process, [f"node-{i}" for i in range(4)])
    killed_at = cluster.process_of("node-3").kill()
    second = cluster.wait_agreement(other_than="node-3", after_term=1)
    assert second.leader == "node-2" and second.time - killed_at < 1.5
    cluster.process_of("node-2").send("stop 0")
    third = cluster.wait_agreement(other_than="node-2", after_term=2)
    assert third.leader == "node-1"  # an mDNS node leads the listed ones now
    assert cluster.leader_overlap() == 0
    check_pairing(cluster.all_events())


# ----------------------------------------------------------------- in-process, in the lab's ``local`` host


def _socket_count() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def test_no_mdns_socket_with_peers(local: Any) -> None:
    from followtheleader._lan import discovery as _discovery

    elector = elect("solo", peers=["127.0.0.1:47101"], port=47101, host="127.0.0.1", interval=0.05)
    before = _socket_count()
    local(elector.start)
    try:
        assert elector.wait_for_leader(5) is not None and elector.is_leader
        assert _socket_count() == before + 3  # the heartbeat socket and the wake-up pair, nothing else
        assert not _discovery._SharedZeroconf._instances
        assert not [t.name for t in threading.enumerate() if "zeroconf" in t.name.lower()]
        assert elector.members == (elector.leader,)  # it recognised its own address
    finally:
        assert elector.stop()


def test_ping_to_anyone_is_answered_but_no_proof_of_life(local: Any) -> None:
    """In an authenticated group: a (replayed) ping stamped for ANYONE from a 'leader' gets a
    pong stamped for its sender, and never makes the node follow it; other kinds for ANYONE
    are dropped."""
    elector = elect("grp", peers=["127.0.0.1:47111"], port=47111, host="127.0.0.1", secret=SECRET, interval=0.05)
    events: list[Any] = []
    elector.on("follower", events.append)
    auth = Authenticator(parse_options("grp", secret=SECRET).secret or (), "grp")
    probe = local(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        probe.settimeout(5)
        local(lambda: probe.bind(("127.0.0.1", 47112)))
        local(elector.start)
        assert elector.wait_for_leader(5) is not None and elector.is_leader
        for kind in ("claim", "ping"):
            message = Message(kind, "grp", "ghost", 2**30, State.LEADER, 99, leader="ghost", lease_mark=1.0)
            data = auth.seal(encode_message(message, auth.next_stamp(time.time(), ANYONE)))
            probe.sendto(data, ("127.0.0.1", 47111))
        answer = auth.open(probe.recvfrom(4096)[0])
        assert answer is not None
        decoded = decode_datagram(answer)
        assert decoded is not None
        message, stamp = decoded
        assert message.kind == "pong" and stamp is not None and stamp.to == "ghost"
        assert elector.is_leader and elector.term == 1 and not events
        assert "ghost" not in [m.node_id for m in elector.members]
        assert json.dumps(elector.counters)  # nothing counted as an error either
    finally:
        probe.close()
        assert elector.stop()


# ----------------------------------------------------------------- command line


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "followtheleader", *args]


def test_cli_elect_and_status_with_peers(no_multicast: Lab, cluster: Cluster, hosts: list[Host]) -> None:
    peers = ",".join(listed(hosts[:3]))
    start(cluster, hosts[:2], [{"peers": peers}] * 2)
    assert cluster.wait_agreement().leader == "node-1"
    elector = hosts[2].popen(
        cli("elect", cluster.group, "--peers", peers, "--node-id", "a-cli", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    assert elector.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in elector.stdout or ()], daemon=True)
    reader.start()
    try:
        first = json.loads(lines.get(timeout=15))
        assert (first["event"], first["leader"]["node_id"]) == ("follower", "node-1"), first
        # The probe gets the leader's member list: it counts a-cli once a-cli's first ack arrived.
        cluster.wait_members(cluster.process_of("node-1"), ["a-cli", "node-0", "node-1"])
        result = hosts[5].run(cli("status", cluster.group, "--peers", f"{hosts[2].address}", "--json"), timeout=30)
        (view,) = json.loads(result.stdout)["groups"]
        assert view["confirmed"] and view["leader"]["node_id"] == "node-1" and view["term"] == 1, result.stdout
        assert sorted(m["node_id"] for m in view["members"]) == ["a-cli", "node-0", "node-1"], result.stdout
        table = hosts[5].run(cli("status", cluster.group, "--peers", peers), timeout=30)
        assert "node-1@" in table.stdout.splitlines()[1], table.stdout
    finally:
        elector.send_signal(signal.SIGTERM)
        assert elector.wait(15) == 0
        reader.join(5)
    bad = hosts[5].run(cli("elect", "g", "--peers", "a:99999"), check=False)
    assert bad.returncode == 2 and "from 1 to 65535" in bad.stderr, bad.stderr
    nameless = hosts[5].run(cli("status", "--peers", peers), check=False)
    assert nameless.returncode == 2 and "needs the group NAME" in nameless.stderr, nameless.stderr


def test_own_ping_replayed_from_elsewhere_is_dropped(lab: Lab, local: Any) -> None:
    """A node's own ping to ANYONE, captured at a listed address and replayed at the node from
    there, is dropped: it must not make the node take that address for its own."""
    me, other = lab.hosts["local"].address, lab.hosts["n9"].address
    elector = elect("own", peers=[f"{other}:9001"], port=47131, host=me, secret=SECRET, interval=0.05)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unicast_replay.py")
    replayer = lab.hosts["n9"].popen(
        [sys.executable, script, "own", SECRET, me, "47131"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert replayer.stdout is not None
        assert replayer.stdout.readline().strip() == "listening"
        local(elector.start)  # its first ping goes to the replayer, during the election
        output, _ = replayer.communicate(timeout=20)
        assert output.strip() == "pong"  # the probe after the replay was answered
        assert elector.counters.get("replayed") == 1, elector.counters
        assert (other, 9001) not in elector._machine.listed.own
        # The replay came during the settle window; the election goes on unmoved: alone
        # (nobody at the listed address), the node leads.
        leader = elector.wait_for_leader(5)
        assert leader is not None and leader.node_id == elector.node_id, leader
        assert elector.is_leader and elector.term == 1
        assert (other, 9001) not in elector._machine.listed.own
    finally:
        assert elector.stop()


def test_two_electors_over_ipv6_loopback(local: Any) -> None:
    """Bracketed IPv6 entries: the heartbeat socket goes dual-stack, each lists both."""
    peers = ["[::1]:47121", "[::1]:47122"]
    first = elect("six", peers=peers, port=47121, node_id="a-six", interval=0.05)
    second = elect("six", peers=peers, port=47122, node_id="b-six", interval=0.05)
    assert first.options.host == "::"
    followed = threading.Event()
    second.on("follower", lambda event: followed.set())
    try:
        local(first.start)
        assert first.wait_for_leader(5) is not None and first.is_leader  # alone: it leads
        local(second.start)
        assert followed.wait(5)  # it found the leader through the listed address
        assert second.leader is not None and second.leader.node_id == "a-six"
        assert second.leader.host == "::1" and first.is_leader
    finally:
        assert second.stop() and first.stop()
