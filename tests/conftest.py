"""Fixtures: the namespace lab, node-process clusters, and a leak check for in-process tests.

Nothing here opens a socket in the test process's own network namespace: node processes run
inside lab namespaces, and in-process electors are created on a thread that has entered the
lab's ``local`` namespace (see :func:`local`).
"""

from __future__ import annotations

import os
import shutil
import threading
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

import pytest
from npm_node import NpmNode, npm_unavailable_reason

from cluster import Cluster
from coordservers import ServerPool
from netlab import Host, Lab, lab_unavailable_reason

T = TypeVar("T")

LAB_HOSTS = 10


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """One lab for the session: hosts n0..n9 and ``local`` (for in-process electors)."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(f"integration tests need network namespaces: {reason}")
    with Lab() as made:
        for index in range(LAB_HOSTS):
            made.add_host(f"n{index}")
        made.add_host("local")
        yield made


@pytest.fixture(scope="module")
def coordinator_servers() -> Iterator[ServerPool]:
    """ZooKeeper and etcd servers in lab hosts, started when a test of the module first asks
    (``coordinator_servers.get(lab, "etcd")``) and stopped after its last test."""
    pool = ServerPool()
    yield pool
    pool.close()


@pytest.fixture
def faults(lab: Lab) -> Iterator[Lab]:
    """The lab, with every fault rule removed afterwards (skipped without nftables)."""
    if shutil.which("nft") is None:
        pytest.skip("fault injection needs nftables (apt-get install nftables)")
    yield lab
    lab.set_faults()


@pytest.fixture
def no_multicast(lab: Lab) -> Iterator[Lab]:
    """The lab with every multicast datagram dropped on the bridge (and passed again after)."""
    if shutil.which("nft") is None:
        pytest.skip("dropping multicast needs nftables (apt-get install nftables)")
    lab.block_multicast()
    try:
        yield lab
    finally:
        lab.block_multicast(False)
        lab.set_faults()


@pytest.fixture
def npm_nodes() -> Iterator[list[NpmNode]]:
    """npm package nodes a test starts; all finished afterwards (skipped without node/npm)."""
    reason = npm_unavailable_reason()
    if reason:
        pytest.skip(f"npm interoperability tests need the npm package: {reason}")
    nodes: list[NpmNode] = []
    yield nodes
    for node in nodes:
        node.finish()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that ran node processes gets their whole story in its report: every
    event of every node on the shared clock, their counters and their warnings, so that one
    CI log is enough to understand it."""
    report: pytest.TestReport = yield
    made = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and isinstance(made, Cluster):
        try:
            report.sections.append(("node processes", made.diagnosis()))
        except Exception as error:  # noqa: BLE001 - the report must not hide the failure
            report.sections.append(("node processes", f"no diagnosis: {error!r}"))
    return report


@pytest.fixture
def hosts(lab: Lab) -> list[Host]:
    return [lab.hosts[f"n{i}"] for i in range(LAB_HOSTS)]


@pytest.fixture
def cluster(lab: Lab) -> Iterator[Cluster]:
    """A group of node processes with a name unique to the test; all stopped afterwards."""
    made = Cluster(lab)
    yield made
    made.finish()


class Local:
    """Runs code in the lab's ``local`` namespace, so in-process electors stay off real networks."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def __call__(self, fn: Callable[[], T]) -> T:
        return self.host.call_in_namespace(fn, timeout=30)


@pytest.fixture
def local(lab: Lab) -> Local:
    """Call ``local(fn)`` to run ``fn`` (typically ``elector.start``) inside the lab."""
    return Local(lab.hosts["local"])


def _socket_fds() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                found.add(fd)
        except OSError:
            pass
    return found


_SESSION_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def outlives_its_test(thread: threading.Thread) -> threading.Thread:
    """Mark a thread of a session-scoped fixture (a server's output reader): a test that first
    needs the fixture starts it, and it rightly runs on after that test."""
    _SESSION_THREADS.add(thread)
    return thread


@pytest.fixture(autouse=True)
def no_leaks(request: Any) -> Iterator[None]:
    """Fail a test that leaves a thread or a socket of this process behind: in-process lab tests
    (they use ``local``) and tests marked ``leak_check`` (the in-memory backend's; no root)."""
    if "local" not in request.fixturenames and request.node.get_closest_marker("leak_check") is None:
        yield
        return
    threads_before = set(threading.enumerate())
    sockets_before = _socket_fds()
    yield
    leaked = [
        t.name for t in threading.enumerate() if t not in threads_before and t.is_alive() and t not in _SESSION_THREADS
    ]
    assert not leaked, f"threads left running: {leaked}"
    assert _socket_fds() <= sockets_before, "sockets left open"
