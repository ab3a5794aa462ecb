"""The facade on the in-memory backend: every behaviour that does not depend on a backend,
with no root, no server and no network (``memory://NAME`` is shared within this process).

The autouse ``no_leaks`` fixture (``leak_check`` marker) fails a test that leaves a thread or
a socket behind.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from followtheleader import Elector, Event, State, elect
from followtheleader._coordinators.survey import coordinator_groups

pytestmark = pytest.mark.leak_check

TIMEOUT = 10.0
TTL = 2.0
"""The shortest session TTL allowed: a session that is not closed lasts that long."""
ROOT = Path(__file__).resolve().parent.parent


def store() -> str:
    """A store of its own for each test."""
    return "memory://t" + os.urandom(4).hex()


def member(url: str, node_id: str, name: str = "g", **options: object) -> Elector:
    return elect(name, coordinator=url, node_id=node_id, coordinator_ttl=TTL, **options)


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

    def nothing_for(self, seconds: float) -> bool:
        try:
            event = self.events.get(timeout=seconds)
        except queue.Empty:
            return True
        self.seen.append(event)
        return False


def holds_within(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.005)
    return True


def test_a_single_elector_leads_and_stops_cleanly() -> None:
    elector = member(store(), "solo")
    recorder = Recorder(elector)
    assert elector.state is State.STOPPED and elector.leader is None and elector.wait_for_leader(0) is None
    assert elector.start() is elector
    leader = elector.wait_for_leader(TIMEOUT)
    assert leader is not None and leader.node_id == "solo"
    event = recorder.next()
    assert (event.kind, event.state, event.previous_state) == ("leader", State.LEADER, State.ELECTING)
    assert event.term > 0 and event.leader == leader and event.fencing_token is not None
    assert elector.is_leader and elector.term == event.term and [m.node_id for m in elector.members] == ["solo"]
    assert elector.stop() is True
    demotion = recorder.next()
    assert (demotion.kind, demotion.state, demotion.previous_state) == ("reelection", State.STOPPED, State.LEADER)
    assert elector.state is State.STOPPED and not elector.is_leader and elector.join(0)


def test_start_once_stop_always() -> None:
    never_started = member(store(), "n")
    assert never_started.stop() is True and never_started.stop() is True
    with pytest.raises(RuntimeError):
        never_started.start()
    elector = member(store(), "n").start()
    with pytest.raises(RuntimeError):
        elector.start()
    assert elector.stop() and elector.stop() and elector.stop()


def test_callbacks_come_in_order_with_growing_terms() -> None:
    """Follower, leader and reelection events, in order, for a resign and a stop."""
    url = store()
    first, second = member(url, "b-first"), member(url, "a-second")
    one, two = Recorder(first), Recorder(second)
    first.start()
    try:
        term1 = one.next("leader").term
        second.start()
        follow = two.next()
        assert (follow.kind, follow.leader.node_id, follow.term) == ("follower", "b-first", term1)  # type: ignore[union-attr]
        assert holds_within(lambda: [m.node_id for m in first.members] == ["b-first", "a-second"])

        assert second.resign() is False  # a follower has nothing to resign
        assert first.resign() is True
        resigned = one.next()
        assert (resigned.kind, resigned.reason, resigned.state) == ("reelection", "resigned", State.ELECTING)
        assert [two.next().kind, two.next().kind] == ["reelection", "leader"]
        term2 = second.term
        assert term2 > term1 and second.is_leader and not first.is_leader
        back = one.next()  # after its resign hold, the first member follows the new leader
        assert (back.kind, back.leader.node_id, back.term) == ("follower", "a-second", term2)  # type: ignore[union-attr]

        second.stop()
        assert [e.kind for e in (two.next(), one.next(), one.next())] == ["reelection", "reelection", "leader"]
        assert first.term > term2 and first.is_leader and first.members[0].node_id == "b-first"
    finally:
        first.stop()
        second.stop()
    kinds = [e.kind for e in one.seen]
    assert kinds == ["leader", "reelection", "follower", "reelection", "leader"]
    terms = [e.term for e in one.seen if e.kind in ("leader", "follower")]
    assert terms == sorted(terms) and len(set(terms)) == 3


def test_the_best_ranked_member_leads_when_started_together() -> None:
    url = store()
    electors = [member(url, node_id, priority=priority) for node_id, priority in (("c", 0), ("a", 5), ("b", 0))]
    try:
        for elector in electors:
            elector.start()
        leaders = {elector.wait_for_leader(TIMEOUT) for elector in electors}
        assert {leader.node_id for leader in leaders if leader is not None} == {"a"}
        assert len({elector.term for elector in electors}) == 1
    finally:
        for elector in electors:
            elector.stop()


def test_stop_and_resign_from_inside_a_callback() -> None:
    url = store()
    elector = member(url, "stopper")
    results: queue.Queue[object] = queue.Queue()

    def stop_now(event: Event) -> None:
        results.put(elector.stop())
        try:
            elector.join(0)
        except RuntimeError as exc:
            results.put(exc)

    elector.on("leader", stop_now)
    elector.start()
    assert results.get(timeout=TIMEOUT) is True
    assert isinstance(results.get(timeout=TIMEOUT), RuntimeError)
    assert elector.join(TIMEOUT) and elector.state is State.STOPPED

    resigner, other = member(url, "z-resigner", "h"), member(url, "a-other", "h")
    resigned: queue.Queue[bool] = queue.Queue()
    resigner.on("leader", lambda event: resigned.put(resigner.resign()))
    watcher = Recorder(other)
    resigner.start()
    try:
        assert resigned.get(timeout=TIMEOUT) is True
        other.start()
        assert watcher.next("leader").leader.node_id == "a-other"  # type: ignore[union-attr]
    finally:
        resigner.stop()
        other.stop()


def test_an_exception_in_a_callback_is_reported_and_changes_nothing() -> None:
    elector = member(store(), "broken")
    errors: queue.Queue[Event] = queue.Queue()
    later: queue.Queue[Event] = queue.Queue()

    def broken(event: Event) -> None:
        raise ZeroDivisionError("on purpose")

    elector.on("leader", broken)
    elector.on("leader", later.put)  # the next callback still runs
    elector.on("error", errors.put)
    with elector:
        error = errors.get(timeout=TIMEOUT)
        assert isinstance(error.error, ZeroDivisionError) and "leader callback raised" in error.reason
        assert later.get(timeout=TIMEOUT).kind == "leader" and elector.is_leader


def test_a_slow_callback_delays_no_renewal() -> None:
    """The leader's callback blocks for several TTLs; its session lives on (guarantee 5)."""
    url = store()
    leader, follower = member(url, "z-slow"), member(url, "a-fast")
    release, blocked = threading.Event(), threading.Event()

    def slow(event: Event) -> None:
        blocked.set()
        release.wait(30)

    leader.on("leader", slow)
    watcher = Recorder(follower)
    leader.start()
    try:
        assert blocked.wait(TIMEOUT)
        follower.start()
        assert watcher.next().kind == "follower"
        assert watcher.nothing_for(2.5 * TTL)  # no reelection while the callback blocks
        assert leader.is_leader and leader.state is State.LEADER and leader.term == follower.term
    finally:
        release.set()
        leader.stop()
        follower.stop()


def test_join_and_wait_for_leader() -> None:
    elector = member(store(), "joiner")
    assert elector.join(0) is True  # never started
    elector.start()
    try:
        assert elector.join(0.05) is False
        waiter: queue.Queue[object] = queue.Queue()
        threading.Thread(target=lambda: waiter.put(elector.wait_for_leader(TIMEOUT)), daemon=True).start()
        leader = waiter.get(timeout=TIMEOUT)
        assert leader == elector.leader and leader is not None and leader.node_id == "joiner"
    finally:
        elector.stop()
    assert elector.join(0.05) is True and elector.wait_for_leader(0.05) is None

    alone = member(store(), "alone")
    gate = threading.Event()
    alone.on("leader", lambda event: gate.wait(30))  # wait_for_leader from a callback: short timeouts
    with alone:
        assert alone.wait_for_leader(TIMEOUT) is not None
        gate.set()


def test_the_context_manager_starts_and_stops() -> None:
    url = store()
    with member(url, "ctx") as elector:
        assert elector.wait_for_leader(TIMEOUT) is not None
        assert coordinator_groups(url)[0].view.leadership is not None
    assert elector.state is State.STOPPED and elector.join(0)
    assert coordinator_groups(url) == []  # its session ended with it: nothing to expire


def test_threads_are_named_and_daemonic_and_all_end() -> None:
    elector = member(store(), "threads")
    before = set(threading.enumerate())
    elector.start()
    try:
        ours = [t for t in threading.enumerate() if t not in before]
        name = elector.name
        assert {t.name for t in ours} == {
            f"followtheleader-session-{name}",
            f"followtheleader-ticker-{name}",
            f"followtheleader-callbacks-{name}",
        }
        assert all(t.daemon for t in ours)
    finally:
        elector.stop()
    assert not [t for t in ours if t.is_alive()]


def test_a_forked_child_holds_a_stopped_copy_that_changes_nothing() -> None:
    """After os.fork() (gunicorn --preload, multiprocessing), the running elector is the
    parent's: in the child it reads stopped, and its stop() must not end the parent's session."""
    url = store()
    leader, follower = member(url, "b-node"), member(url, "a-node")
    watcher = Recorder(follower)
    leader.start()
    follower.start()
    try:
        assert watcher.next("follower").leader.node_id == "b-node"  # type: ignore[union-attr]
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running any test machinery
            try:
                child = member(url, "child")  # the child's memory store is its own, and empty
                child.start()
                led = child.wait_for_leader(TIMEOUT)
                report = (
                    f"{leader.is_leader} {leader.state.value} {leader.stop(timeout=2.0)} {follower.stop()} "
                    f"{led.node_id if led else None} {child.stop()}"
                )
                os.write(write_end, report.encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            assert pipe.read() == "False stopped True True child True"
        assert os.waitpid(pid, 0)[1] == 0
        assert leader.is_leader and leader.state is State.LEADER
        assert watcher.nothing_for(1.0)  # nothing the child did reached the parent's group
        assert [m.node_id for m in coordinator_groups(url)[0].view.members] == ["b-node", "a-node"]
    finally:
        leader.stop()
        follower.stop()


def test_atexit_stops_a_forgotten_elector_and_its_session_ends_at_once() -> None:
    """A process that exits without stop() still resigns and ends its session (guarantee 6):
    a check that runs after the library's exit handler sees the group empty at once, where a
    session left to expire would still hold the leadership for its TTL."""
    script = textwrap.dedent(
        """
        import atexit, time

        def after_the_library_stopped_it():  # registered first, so it runs last
            from followtheleader._coordinators.survey import coordinator_groups
            groups = coordinator_groups("memory://exit", "g")
            print("after exit:", [(g.view.leadership, g.view.members) for g in groups], flush=True)

        atexit.register(after_the_library_stopped_it)

        import followtheleader
        leader = followtheleader.elect("g", coordinator="memory://exit", node_id="z-leader", coordinator_ttl=30)
        follower = followtheleader.elect("g", coordinator="memory://exit", node_id="a-follower", coordinator_ttl=30)
        leader.on("reelection", lambda e: print("leader:", e.kind, e.state.value, flush=True))
        leader.start()
        follower.start()
        print("leads:", leader.wait_for_leader(10).node_id, follower.wait_for_leader(10).node_id, flush=True)
        # the script ends here, without stop()
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "leads: z-leader z-leader"
    assert "leader: reelection stopped" in lines
    assert lines[-1] == "after exit: []"
    assert time.monotonic() - started < 20  # not one TTL (30 s) of waiting


def test_the_leak_check_guards_these_tests(request: pytest.FixtureRequest) -> None:
    assert "no_leaks" in request.fixturenames and request.node.get_closest_marker("leak_check") is not None


def test_a_bug_in_the_session_policy_is_reported_and_survived(monkeypatch: pytest.MonkeyPatch) -> None:
    from followtheleader._core.coordination import SessionPolicy

    decide = SessionPolicy.next
    calls = []

    def fails_once(self: SessionPolicy, *args: object, **kwargs: object) -> object:
        calls.append(None)
        if len(calls) == 1:
            raise RuntimeError("a bug in deciding, on purpose")
        return decide(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SessionPolicy, "next", fails_once)
    elector = member(store(), "survivor")
    recorder = Recorder(elector)
    with elector:
        error = recorder.next("error")
        assert isinstance(error.error, RuntimeError) and "session" in error.reason
        assert recorder.next("leader").term > 0  # the session thread went on, after one renewal period
        assert elector.is_leader


def test_an_unexpected_client_error_ends_the_leadership_before_the_session_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error the driver does not expect (a bug of its client library, say) makes the
    session thread replace the session, and the old session's leadership goes with it: the
    elector says so (``reelection``) before it leads again, in the new session, with a new
    term. Without that, it would go on leading on its local lease while the server had
    already ended its session."""
    from followtheleader._coordinators.memory import MemoryCoordinator

    elector = member(store(), "a")
    recorder = Recorder(elector)
    with elector:
        first = recorder.next("leader")
        renew = MemoryCoordinator.keep_alive
        failed: list[None] = []

        def fails_once(self: MemoryCoordinator) -> float:
            if not failed:
                failed.append(None)
                raise ValueError("a client library bug, on purpose")
            return renew(self)

        close = MemoryCoordinator.close
        leading_when_closed: list[bool] = []

        def closes(self: MemoryCoordinator) -> None:
            if self._session_id is not None:
                leading_when_closed.append(elector.is_leader)
            close(self)

        monkeypatch.setattr(MemoryCoordinator, "close", closes)
        monkeypatch.setattr(MemoryCoordinator, "keep_alive", fails_once)
        error = recorder.next("error")
        assert isinstance(error.error, ValueError)
        assert recorder.next().kind == "reelection"  # before the session is replaced
        again = recorder.next("leader")
        assert again.term > first.term
        assert elector.is_leader
        assert leading_when_closed == [False]  # no longer leading when its session ended
