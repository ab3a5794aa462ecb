"""In-process tests of the public elector, with real zeroconf and sockets inside the lab.

Every elector here is started through ``local(...)``: on a thread inside the lab's ``local``
namespace, so its sockets and threads live there. The autouse ``no_leaks`` fixture fails a
test that leaves a thread or a socket behind.
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from followtheleader import Elector, Event, HeartbeatPortError, State, elect

from conftest import Local

pytestmark = pytest.mark.lab

TIMEOUT = 10.0


def holds_within(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Whether ``predicate()`` becomes true within ``timeout``: for what another thread of the
    elector learns one datagram later, with no event to wait on (checked every 5 ms)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.005)
    return True


def group() -> str:
    return "t" + os.urandom(4).hex()


class Recorder:
    """Collects events from the callback thread; tests wait on it with a deadline."""

    def __init__(self, elector: Elector) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        for kind in ("leader", "follower", "reelection", "error"):
            elector.on(kind, self.events.put)

    def next(self, kind: str | None = None) -> Event:
        while True:
            event = self.events.get(timeout=TIMEOUT)
            self.seen.append(event)
            if kind is None or event.kind == kind:
                return event


def test_single_elector_leads_and_stops_cleanly(local: Local) -> None:
    elector = elect(group())
    recorder = Recorder(elector)
    assert elector.state is State.STOPPED and elector.leader is None
    assert local(elector.start) is elector
    leader = elector.wait_for_leader(TIMEOUT)
    assert leader is not None and leader.node_id == elector.node_id
    event = recorder.next("leader")
    assert event.term == 1 and event.previous_state is State.ELECTING and event.leader == leader
    assert elector.is_leader and elector.term == 1 and elector.state is State.LEADER
    assert [m.node_id for m in elector.members] == [elector.node_id]
    assert elector.stop() is True
    demotion = recorder.next("reelection")
    assert demotion.state is State.STOPPED and demotion.previous_state is State.LEADER
    assert elector.state is State.STOPPED and not elector.is_leader
    assert elector.join(0) is True


def test_stop_is_idempotent_before_and_after_start(local: Local) -> None:
    never_started = elect(group())
    assert never_started.stop() is True and never_started.stop() is True
    with pytest.raises(RuntimeError):
        never_started.start()
    elector = elect(group())
    local(elector.start)
    with pytest.raises(RuntimeError):
        elector.start()
    assert elector.stop() and elector.stop() and elector.stop()


def test_context_manager_starts_and_stops(local: Local) -> None:
    elector = elect(name=group(), interval=0.1)
    local(elector.__enter__)
    with elector:
        assert elector.wait_for_leader(TIMEOUT) is not None
    assert elector.state is State.STOPPED
    assert elector.join(0)


def test_on_works_as_decorator_and_rejects_unknown_events() -> None:
    elector = elect(group())

    @elector.on("leader")
    def handler(event: Event) -> None:
        pass

    assert callable(handler)
    assert elector.off("leader", handler) is True
    assert elector.off("leader", handler) is False
    with pytest.raises(ValueError, match="unknown event 'leeder'"):
        elector.on("leeder", handler)
    with pytest.raises(TypeError):
        elector.on("leader", "not callable")  # type: ignore[call-overload]


def test_stop_from_inside_a_callback(local: Local) -> None:
    elector = elect(group())
    results: queue.Queue[object] = queue.Queue()

    def stop_now(event: Event) -> None:
        results.put(elector.stop())
        try:
            elector.join(0)
        except RuntimeError as exc:
            results.put(exc)

    elector.on("leader", stop_now)
    local(elector.start)
    assert results.get(timeout=TIMEOUT) is True
    assert isinstance(results.get(timeout=TIMEOUT), RuntimeError)
    assert elector.join(TIMEOUT)
    assert elector.state is State.STOPPED


def test_exception_in_a_callback_is_reported_and_changes_nothing(local: Local) -> None:
    name = group()
    first, second = elect(name, node_id="zz-first"), elect(name, node_id="aa-second")
    errors: queue.Queue[Event] = queue.Queue()
    later: queue.Queue[Event] = queue.Queue()

    def broken(event: Event) -> None:
        raise ZeroDivisionError("on purpose")

    first.on("leader", broken)
    first.on("leader", later.put)  # the next callback still runs
    first.on("error", errors.put)
    local(first.start)
    local(second.start)
    try:
        error = errors.get(timeout=TIMEOUT)
        assert isinstance(error.error, ZeroDivisionError)
        assert "leader callback raised" in error.reason
        assert later.get(timeout=TIMEOUT).kind == "leader"
        assert second.wait_for_leader(TIMEOUT) is not None
        assert first.is_leader and second.leader is not None and second.leader.node_id == "zz-first"
        assert first.term == second.term == 1
    finally:
        first.stop()
        second.stop()


def test_two_electors_in_one_process_and_resign(local: Local) -> None:
    name = group()
    a, b = elect(name, node_id="b-node"), elect(name, node_id="a-node")
    recorder_a, recorder_b = Recorder(a), Recorder(b)
    local(a.start)
    local(b.start)
    try:
        assert recorder_a.next("leader").term == 1
        assert recorder_b.next("follower").leader.node_id == "b-node"  # type: ignore[union-attr]
        assert b.resign() is False  # a follower has nothing to resign
        assert a.resign() is True
        assert recorder_b.next("leader").term == 2
        assert recorder_a.next("reelection").reason == "resigned"
        follow = recorder_a.next("follower")
        assert follow.leader is not None and follow.leader.node_id == "a-node" and follow.term == 2
        # The leader counts its new follower once that follower's first ack has arrived.
        assert holds_within(lambda: {m.node_id for m in b.members} == {"a-node", "b-node"}), b.members
    finally:
        a.stop()
        b.stop()


def test_default_port_falls_back_when_taken_but_an_explicit_one_does_not(local: Local) -> None:
    def occupy() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 9001))
        return sock

    blocker = local(occupy)
    try:
        elector = elect(group())
        local(elector.start)
        assert elector.port not in (0, 9001)
        elector.stop()

        strict = elect(group(), port=9001)
        errors: queue.Queue[Event] = queue.Queue()
        strict.on("error", errors.put)
        with pytest.raises(HeartbeatPortError) as raised:
            local(strict.start)
        assert raised.value.errno == errno.EADDRINUSE and "9001" in str(raised.value)
        assert isinstance(errors.get(timeout=TIMEOUT).error, HeartbeatPortError)
        assert strict.join(TIMEOUT)
    finally:
        blocker.close()


def test_garbage_datagrams_are_ignored_and_counted(local: Local) -> None:
    elector = elect(group())
    local(elector.start)
    try:
        assert elector.wait_for_leader(TIMEOUT) is not None

        def spray() -> bytes:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(TIMEOUT)
                for garbage in (b"", b"{", b"\xff" * 100, b'{"v":1,"k":"claim"}', b"x" * 20000):
                    sock.sendto(garbage, ("127.0.0.1", elector.port))
                sock.sendto(b"PING", ("127.0.0.1", elector.port))
                return sock.recv(100)

        assert local(spray) == b"PONG"
        assert elector.is_leader and elector.term == 1
    finally:
        elector.stop()
    assert elector.counters.get("bad-datagram", 0) >= 4


def test_join_times_out_while_running(local: Local) -> None:
    elector = elect(group())
    local(elector.start)
    try:
        assert elector.join(0.05) is False
    finally:
        elector.stop()
    assert elector.join(0.05) is True


def test_atexit_hands_leadership_over(lab, cluster) -> None:  # type: ignore[no-untyped-def]
    """A process that exits without stop() still resigns (guarantee 6)."""
    script = (
        "import sys, followtheleader as f\n"
        f"e = f.elect({cluster.group!r}, node_id='z-leader').start()\n"
        "e.wait_for_leader(10)\n"
        "print(e.is_leader, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    leader = lab.hosts["n0"].popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert leader.stdout.readline().strip() == "True"
        # Only now: started at once, the follower could claim before the leader's process is up.
        follower = cluster.spawn(lab.hosts["n1"], node_ids=["a-follower"])
        cluster.wait(lambda: any(e["kind"] == "follower" for e in follower.events()), TIMEOUT, "follower")
        leader.stdin.close()  # the script returns: interpreter exit runs atexit
        assert leader.wait(TIMEOUT) == 0
        promoted = cluster.wait(lambda: [e for e in follower.events() if e["kind"] == "leader"], TIMEOUT, "takeover")
        reelection = next(e for e in follower.events() if e["kind"] == "reelection")
        assert reelection["reason"] in ("leader resigned", "leader said goodbye")  # whichever is handled first
        assert promoted[0]["term"] == 2
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()


def test_threads_are_named_and_daemonic(local: Local) -> None:
    elector = elect(group())
    before = set(threading.enumerate())
    local(elector.start)
    try:
        ours = [t for t in threading.enumerate() if t not in before]
        names = {t.name for t in ours}
        name = elector.name
        assert {
            f"followtheleader-heartbeat-{name}",
            f"followtheleader-ticker-{name}",
            f"followtheleader-callbacks-{name}",
        } <= names
        # One thread receives on the heartbeat and the multicast socket (mDNS mode) alike.
        assert [n for n in names if n.startswith(("followtheleader-heartbeat-", "followtheleader-multicast-"))] == [
            f"followtheleader-heartbeat-{name}"
        ]
        assert all(t.daemon for t in ours)
    finally:
        elector.stop()


def test_followers_on_their_leaders_host_get_its_beats_one_by_one(local: Local) -> None:
    """Three electors in one namespace, mDNS mode: each joins the multicast address, and the
    leader sends its multicast beat; but its heartbeat socket does not loop multicast back to
    its own host (IP_MULTICAST_LOOP 0), so the followers there hear none. Their acks say so,
    and the leader goes on sending them its beats one by one: 20 beats later they still follow."""
    name = group()
    leader = elect(name, node_id="z-lead", interval=0.1)
    followers = [elect(name, node_id=f"a-follow-{i}", interval=0.1) for i in range(2)]
    recorders = [Recorder(f) for f in followers]
    local(leader.start)
    try:
        assert leader.wait_for_leader(TIMEOUT) is not None and leader.is_leader
        for follower, recorder in zip(followers, recorders, strict=True):
            local(follower.start)
            assert recorder.next().kind == "follower"
        machines = [e._machine for e in (leader, *followers)]
        assert all(m.multicast is not None for m in machines)  # every one opened the multicast socket

        def leader_role() -> Any:  # read under the leader's state lock, as every field below
            return leader._machine.role

        def beats_sent() -> int:
            return int(leader._locked(lambda: leader_role().beats_sent))

        first = beats_sent()
        assert holds_within(lambda: beats_sent() >= first + 20)
        rows = leader._locked(lambda: {k: (r.multicast, r.protocol) for k, r in leader_role().progress.rows.items()})
        assert rows == {f.node_id: (False, 3) for f in followers}  # protocol 3: the beat went by multicast too
        for follower, recorder in zip(followers, recorders, strict=True):
            role = follower._locked(lambda f=follower: f._machine.role)  # type: ignore[misc]
            assert role.state is State.FOLLOWER and role.multicast_at is None
            assert role.acked_beat >= first + 15  # the beats came one by one, and were acked
            assert [e.kind for e in recorder.seen] == ["follower"]
            assert recorder.events.empty()
    finally:
        for elector in (*followers, leader):
            elector.stop()


def test_a_slow_callback_delays_no_heartbeat(local: Local) -> None:
    """The leader's callback blocks for 10 s; nobody notices (guarantee 5)."""
    name = group()
    leader, follower = elect(name, node_id="z-slow"), elect(name, node_id="a-fast")
    release = threading.Event()
    blocked = threading.Event()

    def slow(event: Event) -> None:
        blocked.set()
        release.wait(30)

    leader.on("leader", slow)
    follower_events = Recorder(follower)
    local(leader.start)
    local(follower.start)
    try:
        assert blocked.wait(TIMEOUT)
        assert follower_events.next().kind == "follower"
        with pytest.raises(queue.Empty):
            follower_events.events.get(timeout=10.0)  # no reelection while the callback blocks
        assert leader.is_leader and follower.leader is not None and follower.leader.node_id == "z-slow"
        assert leader.state is State.LEADER and leader.term == follower.term == 1
    finally:
        release.set()
        leader.stop()
        follower.stop()


def test_a_forked_child_holds_a_stopped_copy_that_sends_nothing(local: Local) -> None:
    """After os.fork() (gunicorn --preload, multiprocessing), the running elector is the
    parent's: in the child it reads stopped, and its stop() must not resign for the parent."""
    name = group()
    leader, follower = elect(name, node_id="b-node"), elect(name, node_id="a-node")
    recorder = Recorder(follower)
    local(leader.start)
    local(follower.start)
    try:
        Recorder(leader)
        assert recorder.next("follower").leader.node_id == "b-node"  # type: ignore[union-attr]
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running any test machinery
            try:
                report = f"{leader.is_leader} {leader.state.value} {leader.stop(timeout=2.0)} {follower.stop()}"
                os.write(write_end, report.encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            assert pipe.read() == "False stopped True True"
        assert os.waitpid(pid, 0)[1] == 0
        assert leader.is_leader and leader.term == 1
        # The child wrote nothing to the wake-up sockets: both heartbeat threads still receive.
        heartbeat_threads = [t for t in threading.enumerate() if t.name == f"followtheleader-heartbeat-{name}"]
        assert len(heartbeat_threads) == 2 and all(t.is_alive() for t in heartbeat_threads)
        # A resign sent from the child in the leader's name would make the follower elect at once.
        with pytest.raises(queue.Empty):
            recorder.events.get(timeout=1.0)
    finally:
        leader.stop()
        follower.stop()
