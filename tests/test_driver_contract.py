"""The contract of a coordinator driver: the same tests against every driver.

Each test drives :class:`followtheleader._coordinators.base.Coordinator` objects directly (no
Elector, no session thread): two or three members of one group, each with its own session.
What every driver must do is here once; where a driver legitimately differs, the difference
is a capability in :data:`CAPABILITIES`, the one place that says so.

Adding a driver (PostgreSQL, Redis...): add its entry to :data:`CAPABILITIES` (the ``service``
fixture's parameters are its keys), and teach :class:`Service` to reach its server (a lab
host started by a fixture, as ``tests/coordservers.py`` starts ZooKeeper and etcd). Every
test below then runs against it.

* ``memory`` runs in this process: no root, no lab, no server.
* ``zookeeper`` and ``etcd`` are marked ``lab``: one real server each, started in a lab host
  for this module (``coordinator_servers``); every member runs on a lab host of its own
  (``n0``, ``n1``...), its client's sockets and threads in that namespace.

Every wait has a deadline and polls through the driver's own ``wait()`` (woken by the
change it waits for on pushed drivers), never a sleep; the module is marked ``leak_check``:
a test that leaves a thread or a socket behind fails.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from followtheleader._coordinators.base import (
    Coordinator,
    CoordinatorError,
    GroupInfo,
    SessionLost,
    make_coordinator,
    parse_coordinator,
    quote_group,
    ranked,
)
from followtheleader._core.lease import Leadership, View
from followtheleader._core.model import Member

from coordservers import ServerSet
from netlab import Host

pytestmark = pytest.mark.leak_check

T = TypeVar("T")

TTL = 5.0
"""The TTL of a member that the test keeps alive by hand only when it must: long enough for
a test to finish without renewals on a loaded machine."""
SHORT_TTL = 2.0
"""The TTL of a member whose session a test lets expire."""
DEADLINE = 15.0
"""The longest any condition is waited for."""


@dataclass(frozen=True)
class Capabilities:
    """How a driver may legitimately differ from the others: the one place that says so.

    :ivar lab: its server runs in the lab (root, network namespaces): the tests are marked
        ``lab``.
    :ivar pushed: ``wait()`` is woken by a change of the group (a ZooKeeper watch, the
        memory store's condition): it blocks until then, however long its timeout. False for
        a driver that may poll: its ``wait()`` returns within :attr:`poll` seconds whether or
        not anything changed. (etcd is pushed: its watch thread wakes ``wait()`` at every
        change and when its stream becomes current.)
    :ivar poll: the longest a polling driver's ``wait()`` blocks (None when pushed).
    :ivar self_renewing: the client library keeps the session alive by itself while it is
        connected (kazoo pings the server every third of the session timeout), so a session
        expires only when the client is cut off from the server: the expiry test takes the
        member's link down. False: not calling ``keep_alive()`` is enough.
    :ivar observe_checks_session: ``observe()`` raises :class:`SessionLost` once the session
        expired. False for etcd, whose ``observe()`` is one range read that does not look at
        the lease (the interface only asks it of ``keep_alive()``): its view must then show
        the expired member gone and nothing as its own.
    :ivar foreign_data: the test can write foreign keys or nodes in a group's namespace with
        a raw client. False for memory: its store holds typed members only, there is no
        namespace to write garbage into.
    :ivar watched: ``watched_view()`` returns a view (kept current by a watch) once the
        group is quiet; False: it may always return None (the session thread then reads).
    """

    lab: bool
    pushed: bool
    poll: float | None
    self_renewing: bool
    observe_checks_session: bool
    foreign_data: bool
    watched: bool = False


CAPABILITIES: dict[str, Capabilities] = {
    "memory": Capabilities(
        lab=False, pushed=True, poll=None, self_renewing=False, observe_checks_session=True, foreign_data=False
    ),
    "zookeeper": Capabilities(
        lab=True,
        pushed=True,
        poll=None,
        self_renewing=True,
        observe_checks_session=True,
        foreign_data=True,
        watched=True,
    ),
    "etcd": Capabilities(
        lab=True,
        pushed=True,
        poll=None,
        self_renewing=False,
        observe_checks_session=False,
        foreign_data=True,
        watched=True,
    ),
    "redis": Capabilities(
        lab=True, pushed=True, poll=None, self_renewing=False, observe_checks_session=False, foreign_data=True
    ),
    # PostgreSQL: NOTIFY wakes wait() on joins, claims and releases; typed columns leave no
    # namespace to write foreign data into; observe() returns the view keep_alive() read.
    "postgresql": Capabilities(
        lab=True, pushed=True, poll=None, self_renewing=False, observe_checks_session=False, foreign_data=False
    ),
}


def _unique(prefix: str) -> str:
    return prefix + os.urandom(4).hex()


class Handle:
    """One member's coordinator, every call made where the member lives (for lab drivers:
    on a thread inside its lab host's namespace, so that its sockets and its client's threads
    are there)."""

    def __init__(self, coordinator: Coordinator, host: Host | None) -> None:
        self.coordinator = coordinator
        self.host = host
        self.me = coordinator.me

    def run(self, fn: Callable[[], T]) -> T:
        return fn() if self.host is None else self.host.call_in_namespace(fn, timeout=DEADLINE + 15)

    def open(self) -> None:
        self.run(self.coordinator.open)

    def join(self) -> None:
        self.run(self.coordinator.join)

    def start(self) -> Handle:
        """``open()`` and ``join()``, as the session thread does."""
        self.open()
        self.join()
        return self

    def keep_alive(self) -> float:
        return self.run(self.coordinator.keep_alive)

    def observe(self) -> View:
        return self.run(self.coordinator.observe)

    def claim(self) -> int | None:
        return self.run(self.coordinator.claim)

    def release(self, term: int) -> None:
        self.run(lambda: self.coordinator.release(term))

    def rejoin(self) -> None:
        self.run(self.coordinator.rejoin)

    def close(self) -> None:
        self.run(self.coordinator.close)

    def wait(self, timeout: float) -> None:
        self.run(lambda: self.coordinator.wait(timeout))

    def wake(self) -> None:
        self.coordinator.wake()  # any thread, as the elector's stop() and resign() call it

    def connect_only(self) -> None:
        self.run(self.coordinator.connect_only)

    def groups(self) -> list[GroupInfo]:
        return self.run(self.coordinator.groups)


class Service:
    """One driver's service for one test: a prefix and a group of the test's own, members on
    hosts of their own, and every coordinator closed at the end."""

    def __init__(self, name: str, url: str, hosts: list[Host] | None, servers: ServerSet | None) -> None:
        self.name = name
        self.caps = CAPABILITIES[name]
        self.url = url
        self.config = parse_coordinator(url)
        self.group = _unique("contract ü/")  # quoted into one path component by every driver
        self._hosts = hosts
        self._servers = servers
        self._made: list[Handle] = []
        self._cut: list[Host] = []

    def member(self, node_id: str, priority: int = 0, ttl: float = TTL, group: str | None = None) -> Handle:
        """A new coordinator for member ``node_id`` (not opened), on a lab host of its own."""
        coordinator = make_coordinator(self.config, group or self.group, Member(node_id, priority), ttl)
        host = None if self._hosts is None else self._hosts[len(self._made)]
        handle = Handle(coordinator, host)
        self._made.append(handle)
        return handle

    def status(self) -> Handle:
        """A coordinator for ``status``: connected, no session."""
        handle = self.member("status", -(2**31))
        handle.connect_only()
        return handle

    @contextlib.contextmanager
    def starved(self, handle: Handle) -> Iterator[None]:
        """Within: ``handle``'s session is not renewed, so that the server expires it after its
        TTL. The test just does not call ``keep_alive()``; for a self-renewing client library,
        the member's host is cut off from the network as well."""
        if not self.caps.self_renewing:
            yield
            return
        assert handle.host is not None
        handle.host.set_link(False)
        self._cut.append(handle.host)
        try:
            yield
        finally:
            handle.host.set_link(True)
            self._cut.remove(handle.host)

    def write_foreign(self, relative: str, value: bytes) -> None:
        """Write ``value`` at ``<prefix>/<group>/<relative>`` with a raw client, as another
        program sharing the service might."""
        assert self._servers is not None and self._hosts is not None
        key = f"{self.config.prefix}/{quote_group(self.group)}/{relative}"
        server = self._servers.servers[0].host
        port = self.config.hosts[0][1]
        if self.name == "zookeeper":
            from kazoo.client import KazooClient

            def write() -> None:
                client = KazooClient(hosts=f"{server.address}:{port}", timeout=10.0)
                client.start(timeout=10)
                try:
                    client.create(key, value, makepath=True)
                finally:
                    client.stop()
                    client.close()

        elif self.name == "etcd":
            import etcd3gw

            def write() -> None:
                client = etcd3gw.Etcd3Client(host=server.address, port=port, timeout=10)
                try:
                    client.put(key, value)
                finally:
                    client.session.close()

        elif self.name == "redis":
            import redis

            base = f"{self.config.setting('prefix')}/{quote_group(self.group)}"

            def write() -> None:
                with redis.Redis(host=server.address, port=port, socket_timeout=10) as client:
                    if relative.startswith("members/"):  # a foreign entry in the members' sorted set
                        seconds, _micros = client.time()
                        client.zadd(f"{base}/members", {relative[len("members/") :]: seconds * 1000 + 60_000})
                    client.set(f"{base}/{relative}", value)

        else:
            raise AssertionError(f"no raw client for {self.name}")
        self._hosts[-1].call_in_namespace(write, timeout=30)

    def close(self) -> None:
        for host in list(self._cut):
            host.set_link(True)
        errors = []
        for handle in self._made:
            try:
                handle.close()
            except Exception as exc:  # noqa: BLE001 - close must never raise: reported, after all are closed
                errors.append(f"{handle.me.node_id}: {exc!r}")
        assert not errors, f"close() raised: {errors}"


@pytest.fixture(
    params=[pytest.param(name, marks=[pytest.mark.lab] if caps.lab else []) for name, caps in CAPABILITIES.items()]
)
def service(request: pytest.FixtureRequest) -> Iterator[Service]:
    """Every driver of :data:`CAPABILITIES` in turn (the lab ones marked ``lab``)."""
    name: str = request.param
    if CAPABILITIES[name].lab:
        lab = request.getfixturevalue("lab")
        servers: ServerSet = request.getfixturevalue("coordinator_servers").get(lab, name, 1)
        url = servers.url.replace("/ftltest", "/" + _unique("contract"))  # a prefix of the test's own
        if name == "postgresql":  # the path is the database: tables of the test's own instead
            url = f"{servers.url}?table_prefix={_unique('contract')}_"
        made = Service(name, url, request.getfixturevalue("hosts"), servers)
    else:
        made = Service(name, f"memory://{_unique('contract')}/contract", None, None)
    try:
        yield made
    finally:
        made.close()


def until(poll: Callable[[], T | None], waiter: Handle, what: str, timeout: float = DEADLINE) -> T:
    """Call ``poll`` until it returns something, between calls waiting on ``waiter``'s own
    ``wait()`` (a change wakes it on pushed drivers, the poll period bounds it on the others)."""
    deadline = time.monotonic() + timeout
    while True:
        value = poll()
        if value is not None and value is not False:
            return value
        left = deadline - time.monotonic()
        assert left > 0, f"timed out after {timeout} s waiting for {what}"
        waiter.wait(min(0.2, left))


def names(view: View) -> list[str]:
    return [m.node_id for m in view.members]


# --------------------------------------------------------------------- membership and claims


def test_join_registers_members_best_ranked_first_and_the_leadership_is_vacant(service: Service) -> None:
    a = service.member("a", priority=1).start()
    b = service.member("b", priority=5).start()
    c = service.member("c", priority=5).start()
    expected = (Member("c", 5), Member("b", 5), Member("a", 1))  # priority, then node id
    for handle in (a, b, c):
        view = handle.observe()
        assert view == View(None, expected), f"as {handle.me.node_id} sees it"
    assert view.members == ranked(list(expected))


def test_one_claim_wins_and_only_its_session_sees_it_as_mine(service: Service) -> None:
    a = service.member("a", priority=1).start()
    b = service.member("b", priority=5).start()
    c = service.member("c").start()
    term = a.claim()  # any member may claim: ranking is the policy's business, not the driver's
    assert isinstance(term, int) and term > 0
    assert b.claim() is None and c.claim() is None and a.claim() is None  # the holder too
    for handle in (a, b, c):
        held = handle.observe().leadership
        mine = handle is a
        assert held == Leadership(Member("a", 1), term, mine), f"as {handle.me.node_id} sees it"
    assert names(b.observe()) == ["b", "a", "c"]


def test_terms_grow_from_one_leadership_to_the_next(service: Service) -> None:
    a = service.member("a").start()
    b = service.member("b").start()
    first = a.claim()
    assert first is not None
    a.release(first)
    assert b.observe() == View(None, (Member("b"),))
    a.rejoin()
    second = b.claim()
    assert second is not None and second > first
    b.release(second)
    b.rejoin()
    third = a.claim()
    assert third is not None and third > second
    assert b.observe().leadership == Leadership(Member("a"), third, False)


def test_release_of_a_term_not_held_leaves_the_leadership(service: Service) -> None:
    a = service.member("a").start()
    b = service.member("b").start()
    stale = a.claim()
    assert stale is not None
    a.release(stale)
    a.rejoin()
    current = b.claim()
    assert current is not None and current != stale
    held = Leadership(Member("b"), current, True)
    a.release(stale)  # its own old term
    assert b.observe().leadership == held
    a.rejoin()
    a.release(current)  # the current term, held by another session
    assert b.observe().leadership == held, "a member released the leadership of another member's session"
    a.rejoin()
    b.release(stale)  # the holder, with a term it does not hold: withdraws, keeps the leadership
    assert b.observe() == View(held, (Member("a"),))


def test_release_withdraws_the_member_until_it_rejoins(service: Service) -> None:
    a = service.member("a", priority=2).start()
    b = service.member("b", priority=1).start()
    term = a.claim()
    assert term is not None
    a.release(term)
    assert a.observe() == View(None, (Member("b", 1),))
    assert b.observe() == View(None, (Member("b", 1),))
    b.release(0)  # holding nothing: withdraws all the same
    assert a.observe() == View(None, ())
    a.rejoin()
    b.rejoin()
    assert names(b.observe()) == ["a", "b"]


def test_join_in_a_new_session_clears_what_an_older_session_of_the_node_left(service: Service) -> None:
    """A node that lost contact (or restarted) opens a new session while its old one still
    lives on the server: its old leadership only makes the others wait."""
    old = service.member("a", priority=3).start()
    b = service.member("b").start()
    term = old.claim()
    assert term is not None
    new = service.member("a", priority=3).start()
    assert b.observe() == View(None, (Member("a", 3), Member("b")))
    old.close()  # the old session's end takes nothing of the new one's
    assert b.observe() == View(None, (Member("a", 3), Member("b")))
    later = new.claim()
    assert later is not None and later > term


def test_open_again_ends_the_session_before(service: Service) -> None:
    a = service.member("a").start()
    b = service.member("b").start()
    assert a.claim() is not None
    a.open()  # a new session: the old one's leadership and member are gone
    assert b.observe() == View(None, (Member("b"),))
    a.join()
    assert names(b.observe()) == ["b", "a"]


# --------------------------------------------------------------------- the session


def test_keep_alive_returns_a_positive_ttl_no_greater_than_asked(service: Service) -> None:
    for ttl in (SHORT_TTL, TTL):
        handle = service.member(f"m{int(ttl)}", ttl=ttl).start()
        for _ in range(3):
            granted = handle.keep_alive()
            assert 0 < granted <= ttl, f"keep_alive() gave {granted} for a TTL of {ttl}"


def test_close_frees_the_leadership_and_the_member_at_once_and_never_raises(service: Service) -> None:
    never_opened = service.member("z")
    never_opened.close()
    never_opened.close()
    a = service.member("a", priority=2).start()
    b = service.member("b", priority=1).start()
    c = service.member("c").start()
    assert a.claim() is not None
    a.close()
    for handle in (b, c):  # on the next observe, no wait
        assert handle.observe() == View(None, (Member("b", 1), Member("c"))), f"as {handle.me.node_id} sees it"
    a.close()
    assert b.claim() is not None


def test_an_expired_session_loses_leadership_and_membership_and_raises_session_lost(service: Service) -> None:
    victim = service.member("v", priority=9, ttl=SHORT_TTL).start()
    watcher = service.member("w").start()
    term = victim.claim()
    assert term is not None
    assert watcher.observe().leadership == Leadership(Member("v", 9), term, False)
    sent = time.monotonic()
    granted = victim.keep_alive()
    with service.starved(victim):

        def gone() -> float | None:
            watcher.keep_alive()
            view = watcher.observe()
            return time.monotonic() if view == View(None, (Member("w"),)) else None

        seen_at = until(gone, watcher, "the expired session's leadership and member to go", SHORT_TTL + DEADLINE)
    assert seen_at >= sent + granted, "the session expired before the TTL keep_alive() granted"

    def lost() -> bool:
        try:
            victim.keep_alive()
        except SessionLost:
            return True
        except CoordinatorError:  # a self-renewing client may first reconnect, then learn of the expiry
            if not service.caps.self_renewing:
                raise
            return False
        raise AssertionError("keep_alive() succeeded on an expired session")

    until(lost, victim, "keep_alive() to raise SessionLost")
    if service.caps.observe_checks_session:
        with pytest.raises(SessionLost):
            victim.observe()
    else:
        view = victim.observe()
        assert Member("v", 9) not in view.members and not (view.leadership and view.leadership.mine)
    victim.close()
    victim.close()
    assert watcher.claim() is not None


# --------------------------------------------------------------------- wait and wake


def _waiting(handle: Handle, timeout: float) -> tuple[threading.Thread, list[float]]:
    """``handle.wait(timeout)`` on a thread; the list gets the time it returned."""
    returned: list[float] = []
    thread = threading.Thread(target=lambda: (handle.wait(timeout), returned.append(time.monotonic())))
    thread.start()
    return thread, returned


def _settle(handle: Handle) -> None:
    """Read the group (watching it again) and forget the changes seen so far."""
    handle.observe()
    handle.wait(0)


@pytest.mark.parametrize("change", ["claim", "close", "join"])
def test_wait_returns_when_the_group_changes(service: Service, change: str) -> None:
    waiter = service.member("w").start()
    other = service.member("o").start()
    _settle(waiter)
    thread, returned = _waiting(waiter, DEADLINE)
    if service.caps.pushed:  # nothing changed yet: it waits
        thread.join(0.3)
        assert not returned, "wait() returned while nothing had changed"
    changed_at = time.monotonic()
    if change == "claim":
        assert other.claim() is not None
    elif change == "close":
        other.close()
    else:
        service.member("n").start()
    thread.join(DEADLINE)
    assert returned, "wait() did not return"
    bound = 2.0 if service.caps.pushed else (service.caps.poll or 0) + 1.0
    assert returned[0] - changed_at < bound, f"wait() returned {returned[0] - changed_at:.2f} s after the change"
    assert (waiter.observe().leadership is not None) == (change == "claim")


def test_wait_returns_within_its_timeout(service: Service) -> None:
    waiter = service.member("w").start()
    _settle(waiter)
    started = time.monotonic()
    waiter.wait(0.3)
    assert time.monotonic() - started < 0.3 + 1.0


def test_wake_from_another_thread_makes_wait_return_at_once(service: Service) -> None:
    waiter = service.member("w").start()
    _settle(waiter)
    thread, returned = _waiting(waiter, DEADLINE)
    if service.caps.pushed:
        thread.join(0.3)
        assert not returned, "wait() returned while nothing had changed"
    woken_at = time.monotonic()
    waiter.wake()
    thread.join(DEADLINE)
    assert returned and returned[0] - woken_at < 1.0, "wake() did not end wait()"
    # a wake() before wait() is not lost either
    waiter.wake()
    started = time.monotonic()
    waiter.wait(DEADLINE)
    assert time.monotonic() - started < 1.0


def test_a_watched_view_includes_own_writes_and_is_never_stale_after_a_change(service: Service) -> None:
    """``watched_view()`` is None or a view that holds this member's acknowledged writes; a
    change by another member shows in it (or makes it None) once ``wait()`` says so."""
    me = service.member("w", 1).start()
    other = service.member("o", 2).start()

    def watched() -> View | None:
        return me.run(me.coordinator.watched_view)

    def shows(check: Callable[[View], bool]) -> Callable[[], bool]:
        return lambda: (view := watched()) is None or check(view)

    term = me.claim()
    assert term is not None
    assert shows(lambda v: v.leadership == Leadership(me.me, term, True))()
    until(shows(lambda v: v.leadership == Leadership(me.me, term, True) and names(v) == ["o", "w"]), me, "the view")
    if service.caps.watched:  # quiet now: the watched view is there, and it is the group
        me.observe()
        view = until(watched, me, "a watched view")
        assert view == me.observe()
    other.close()
    until(shows(lambda v: names(v) == ["w"]), me, "the other member gone")
    me.release(term)
    assert shows(lambda v: v.leadership is None and names(v) == [])()


def test_a_won_claim_needs_no_read_after_it_on_watched_drivers(service: Service) -> None:
    """A driver whose watch keeps the view (``watched``) shows the leadership a claim won in
    its watched view at once (ZooKeeper: the claim reads the group in its round trip; etcd:
    the claim's write is applied to the watch's view): the new leader needs no read."""
    if not service.caps.watched:
        pytest.skip(f"{service.name}: no watched view (see Capabilities.watched)")
    me = service.member("w", 1).start()
    service.member("o", 2).start()

    def quiet() -> View | None:
        view = me.run(me.coordinator.watched_view)
        if view is None or names(view) != ["o", "w"]:
            me.observe()  # (a read sets the watches again)
            return None
        return view

    assert until(quiet, me, "a watched view of both members").leadership is None
    term = me.claim()
    assert term is not None
    assert me.run(me.coordinator.watched_view) == View(Leadership(me.me, term, True), (Member("o", 2), me.me))


# --------------------------------------------------------------------- status


def test_groups_after_connect_only_lists_each_group_with_its_view(service: Service) -> None:
    assert service.status().groups() == []  # nothing under the test's prefix yet
    a = service.member("a", priority=1).start()
    service.member("b", priority=2).start()
    term = a.claim()
    assert term is not None
    other_group = service.group + " other"
    c = service.member("c", group=other_group).start()
    found = {info.name: info.view for info in service.status().groups()}
    assert found == {
        service.group: View(Leadership(Member("a", 1), term, False), (Member("b", 2), Member("a", 1))),
        other_group: View(None, (Member("c"),)),
    }
    assert c.observe() == View(None, (Member("c"),))  # one group's claim is not another's


# --------------------------------------------------------------------- foreign data


def test_foreign_data_in_the_group_does_not_break_observe(service: Service) -> None:
    if not service.caps.foreign_data:
        pytest.skip(f"{service.name}: no namespace to write foreign data into (see Capabilities.foreign_data)")
    a = service.member("a", priority=1).start()
    for relative, value in [
        ("members/no-dot-in-this-label", b"{}"),
        ("members/x.not-a-priority", b"garbage"),
        ("members/.7", b""),
        ("notes", b"\xff\xfe not json"),
        ("notes-too/deeper", b"[1, 2]"),
    ]:
        service.write_foreign(relative, value)
    assert a.observe() == View(None, (Member("a", 1),))
    term = a.claim()
    assert term is not None
    b = service.member("b").start()
    assert b.observe() == View(Leadership(Member("a", 1), term, False), (Member("a", 1), Member("b")))
    assert {info.name: info.view for info in service.status().groups()}[service.group] == b.observe()


def test_an_unreadable_leader_reads_as_no_leadership(service: Service) -> None:
    if not service.caps.foreign_data:
        pytest.skip(f"{service.name}: no namespace to write foreign data into (see Capabilities.foreign_data)")
    a = service.member("a").start()
    service.write_foreign("leader", b"not json at all")
    assert a.observe() == View(None, (Member("a"),))


def test_the_group_name_is_one_quoted_path_component(service: Service) -> None:
    """Group names may hold ``/``, spaces, any text: each is one component under the prefix."""
    assert "/" in service.group
    assert urllib.parse.unquote(quote_group(service.group)) == service.group and "/" not in quote_group(service.group)
    a = service.member("a").start()
    assert [info.name for info in service.status().groups()] == [service.group]
    assert a.observe().members == (Member("a"),)


def test_every_builtin_driver_is_under_contract() -> None:
    from followtheleader._coordinators.registry import BUILTIN

    assert {driver.backend for driver in BUILTIN.values()} <= set(CAPABILITIES)
