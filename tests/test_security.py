"""Authenticated groups: unit tests of tags and replay refusal, and attacks in the lab."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest

from followtheleader import elect
from followtheleader._core.messages import Message
from followtheleader._core.model import Member, State
from followtheleader._options import SECRET_ENVIRONMENT_VARIABLE, parse_options
from followtheleader._wire.auth import MAX_CLOCK_SKEW, RECORD_MAX_AGE, Authenticator, Secret
from followtheleader._wire.protocol import encode_message, encode_txt

from cluster import Cluster, JsonLinesProcess, NodeProcess
from netlab import Host, Lab

SECRET = "correct horse battery staple"
HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------- unit tests


def claim(sender: str = "a", term: int = 1) -> Message:
    return Message("claim", "g", sender, 0, State.LEADER, term, leader=sender)


def test_tags_verify_and_tampering_or_another_key_fails() -> None:
    alice, bob = Authenticator([Secret(b"k")], "g"), Authenticator([Secret(b"k")], "g")
    data = alice.seal(encode_message(claim(), alice.next_stamp(1000.0, "me")))
    assert bob.open(data) is not None
    tampered = bytearray(data)
    tampered[5] ^= 1
    assert bob.open(bytes(tampered)) is None
    assert Authenticator([Secret(b"other")], "g").open(data) is None
    assert Authenticator([Secret(b"k")], "other group").open(data) is None
    assert bob.open(encode_message(claim())) is None
    assert bob.open(b"") is None


def test_replays_and_stale_stamps_are_refused_and_a_restart_is_accepted() -> None:
    receiver = Authenticator([Secret(b"k")], "g")
    first_run = Authenticator([Secret(b"k")], "g")
    stamps = [first_run.next_stamp(1000.0, "me") for _ in range(3)]
    assert [receiver.refusal("a", stamp, 1000.5, "me") for stamp in stamps] == [None, None, None]
    assert [receiver.refusal("a", stamp, 1000.6, "me") for stamp in stamps] == ["replayed"] * 3
    assert receiver.refusal("b", stamps[0], 1000.6, "me") is None  # another sender's own sequence
    late = first_run.next_stamp(1000.0, "me")
    assert receiver.refusal("a", late, 1000.0 + MAX_CLOCK_SKEW + 1, "me") == "clock-skew"
    assert receiver.refusal("a", first_run.next_stamp(1100.0, "me"), 1000.0, "me") == "clock-skew"  # from the future
    assert receiver.refusal("a", first_run.next_stamp(1000.0, "other"), 1000.0, "me") == "misdirected"
    restarted = Authenticator([Secret(b"k")], "g")
    assert receiver.refusal("a", restarted.next_stamp(1010.0, "me"), 1010.0, "me") is None
    assert receiver.refusal("a", stamps[2], 1010.0, "me") == "replayed"  # the old run, replayed after the restart


def test_datagrams_that_overtake_each_other_are_accepted_once_each() -> None:
    receiver, sender = Authenticator([Secret(b"k")], "g"), Authenticator([Secret(b"k")], "g")
    stamps = [sender.next_stamp(1000.0, "me") for _ in range(100)]
    order = [*stamps[10:20], *reversed(stamps[:10]), *stamps[20:]]
    assert all(receiver.refusal("a", stamp, 1000.0, "me") is None for stamp in order)
    assert all(receiver.refusal("a", stamp, 1000.0, "me") == "replayed" for stamp in stamps)


def test_a_second_accepted_secret_lets_a_group_rotate() -> None:
    old, new = Secret(b"old"), Secret(b"new")
    phase1, phase2, done = Authenticator([old, new], "g"), Authenticator([new, old], "g"), Authenticator([new], "g")
    for sender, receiver in ((phase1, phase2), (phase2, phase1), (phase2, done), (done, phase2)):
        assert receiver.open(sender.seal(b"{}")) == b"{}"
        assert receiver.record_valid(sender.sign_record({"g": "g"}, 100.0), 100.0)
    assert done.open(phase1.seal(b"{}")) is None  # a node of phase 1 signs with the old secret


def test_records_are_signed_and_refused_when_forged_or_stale() -> None:
    auth = Authenticator([Secret(b"k")], "g")
    properties = auth.sign_record(encode_txt("g", Member("n", 0, "198.18.0.1", 9001), State.LEADER, 3), 5000.0)
    assert auth.record_valid(properties, 5001.0)
    assert not auth.record_valid({**properties, "t": "99"}, 5001.0)
    assert not auth.record_valid({k: v for k, v in properties.items() if k != "mac"}, 5001.0)
    assert not auth.record_valid(properties, 5000.0 + RECORD_MAX_AGE + MAX_CLOCK_SKEW + 1)
    assert not Authenticator([Secret(b"x")], "g").record_valid(properties, 5001.0)


def test_the_secret_never_shows(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    elector = elect("g", secret=SECRET)
    texts = [repr(elector), repr(elector.options), str(elector.options), repr(elector.options.secret)]
    for bad in (123, b"", ""):
        try:
            elect("g", secret=bad)
        except (TypeError, ValueError) as exc:
            texts.append(str(exc))
    monkeypatch.setenv(SECRET_ENVIRONMENT_VARIABLE, SECRET)
    from_environment = parse_options("g")
    assert from_environment.secret == (Secret(SECRET.encode()),) and from_environment.npm_compat is False
    texts.append(repr(from_environment))
    texts.extend(record.getMessage() for record in caplog.records)
    assert not any(SECRET in text or SECRET.encode().hex() in text for text in texts)


def test_secret_option_checks() -> None:
    assert parse_options("g", secret=b"\x00\x01").secret == (Secret(b"\x00\x01"),)
    assert parse_options("g", secret=["new", b"old"]).secret == (Secret(b"new"), Secret(b"old"))
    assert parse_options("g").secret is None or os.environ.get(SECRET_ENVIRONMENT_VARIABLE)
    with pytest.raises(ValueError, match="npm_compat"):
        parse_options("g", secret="s", npm_compat=True)
    with pytest.raises(TypeError, match="'secret' must be bytes or str, or a list of them, not int"):
        parse_options("g", secret=5)
    with pytest.raises(ValueError, match="empty list"):
        parse_options("g", secret=[])


# ----------------------------------------------------------------- in the lab

pytest_lab = pytest.mark.lab


def secure_group(cluster: Cluster, hosts: list[Host]) -> list[NodeProcess]:
    processes = cluster.start_together(hosts[:3], ["s-a", "s-b", "s-c"], options={"secret": SECRET})
    agreed = cluster.wait_agreement()
    assert (agreed.leader, agreed.term) == ("s-c", 1)
    return processes


def forge(host: Host, targets: list[tuple[str, int]]) -> None:
    """Send claims of the highest term and priority: unsigned, and signed with a wrong key."""
    script = f"""
import socket, sys
sys.path.insert(0, {os.path.dirname(HERE)!r})
from followtheleader._wire.auth import Authenticator, Secret
from followtheleader._core.model import State
from followtheleader._core.messages import Message
from followtheleader._wire.protocol import encode_message
import time
for sender in ("zz-forger", "s-c"):
    message = Message("claim", sys.argv[1], sender, 2**31 - 1, State.LEADER, 10**6, leader=sender)
    resign = Message("resign", sys.argv[1], "s-c", 0, State.LEADER, 1, leader="s-c")
    wrong = Authenticator([Secret(b"wrong")], sys.argv[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for host, port in {targets!r}:
            for m in (message, resign):
                sock.sendto(encode_message(m), (host, port))
                sock.sendto(wrong.seal(encode_message(m, wrong.next_stamp(time.time(), "s-a"))), (host, port))
"""
    host.run([sys.executable, "-c", script, GROUP[0]])


GROUP: list[str] = [""]


@pytest_lab
def test_rogue_nodes_and_forged_claims_change_nothing(lab: Lab, cluster: Cluster, hosts: list[Host]) -> None:
    secure = secure_group(cluster, hosts)
    rogues = Cluster(lab, group=cluster.group)
    try:
        rogue_open = rogues.spawn(hosts[3], options={"priority": 2**31 - 1}, node_ids=["zz-rogue-open"])
        rogue_wrong = rogues.spawn(
            hosts[4], options={"priority": 2**31 - 1, "secret": "wrong"}, node_ids=["zz-rogue-wrong"]
        )
        for rogue in (rogue_open, rogue_wrong):
            rogues.wait(lambda r=rogue: any(e["kind"] == "leader" for e in r.events()), 10, "rogue leads itself")
        GROUP[0] = cluster.group
        forge(hosts[5], [(host.address, 9001) for host in hosts[:3]])
        for process in secure:
            cluster.wait_counter(process, "unauthenticated", 8)
            # The rogues' records come on zeroconf's threads, whenever their announcements do.
            found = cluster.wait_counter(process, "unauthenticated-record", 1)
            assert (found["leader"], found["term"]) == ("s-c", 1)
            assert sorted(found["members"]) == ["s-a", "s-b", "s-c"]
            assert len(process.events()) == 1  # the one role event of the election, nothing since
    finally:
        rogues.finish()


@pytest_lab
def test_replayed_datagrams_change_nothing(lab: Lab, cluster: Cluster, hosts: list[Host]) -> None:
    # The capture runs from before the start to a few heartbeats after the election, however
    # long the start takes: each sniffer stops when its stdin is closed (60 s at most).
    sniff = [sys.executable, os.path.join(HERE, "sniff.py")]
    sniffers = [
        JsonLinesProcess(host, [*sniff, host.interface, "9001", "60", "--until-eof"], cluster.changed)
        for host in (hosts[0], hosts[2])
    ]

    def captured_since(t: float) -> list[tuple[int, str, str]]:
        """(port, source address, payload hex) of the datagrams captured after ``t`` (lock held)."""
        return [
            (r["dport"], s.host.address, r["hex"]) for s in sniffers for r in s.records if "hex" in r and r["t"] > t
        ]

    try:
        cluster.wait(lambda: all(s.records for s in sniffers), 10, "the sniffers to listen")
        secure = secure_group(cluster, hosts)
        agreed = cluster.wait_agreement()
        cluster.wait(lambda: len(captured_since(agreed.time)) >= 5, 10, "five heartbeat datagrams captured")
        for sniffer in sniffers:
            assert sniffer.proc.stdin is not None
            sniffer.proc.stdin.close()
        cluster.wait(lambda: all("done" in s.records[-1] for s in sniffers), 20, "the sniffers to finish")
    finally:
        for sniffer in sniffers:
            if sniffer.proc.poll() is None:
                sniffer.proc.kill()
            sniffer.proc.wait(20)
    with cluster.changed:
        captured = captured_since(0.0)  # the election's datagrams and the heartbeats after it
    assert len(captured) >= 5, captured
    targets = [host.address for host in hosts[:3]]
    script = (
        "import socket, sys, json\n"
        "packets = json.loads(sys.argv[1]); targets = json.loads(sys.argv[2])\n"
        "with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:\n"
        "    for _round in range(2):\n"
        "        for port, source, payload in packets:\n"
        "            for target in targets:\n"
        "                s.sendto(bytes.fromhex(payload), (target, 9001))\n"
    )
    hosts[5].run([sys.executable, "-c", script, json.dumps(captured), json.dumps(targets)])
    for process in secure:
        found = cluster.wait_counter(process, "replayed", len(captured))
        assert (found["leader"], found["term"]) == ("s-c", 1)
        assert len(process.events()) == 1, [(e["kind"], e["reason"], round(e["t"], 3)) for e in process.events()]


@pytest_lab
def test_member_restarted_with_the_same_secret_rejoins(cluster: Cluster, hosts: list[Host]) -> None:
    secure = secure_group(cluster, hosts)
    secure[0].finish()
    cluster.stopped.update(secure[0].node_ids)
    restarted = cluster.spawn(hosts[0], options={"secret": SECRET}, node_ids=["s-a"])
    cluster.stopped.discard("s-a")
    cluster.wait(lambda: any(e["kind"] == "follower" for e in restarted.events()), 10, "restarted member follows")
    agreed = cluster.wait_agreement()
    assert (agreed.leader, agreed.term) == ("s-c", 1)
    for process in cluster.processes[1:]:
        cluster.wait_members(process, ["s-a", "s-b", "s-c"])
