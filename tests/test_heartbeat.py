"""The heartbeat server on its own, in the lab's ``local`` namespace: one thread reads the
heartbeat and the multicast socket, sleeps while nothing arrives, survives a handler that
raises, and leaves no thread and no socket behind (the autouse ``no_leaks`` fixture)."""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time

import pytest

from followtheleader._lan.heartbeat import HeartbeatServer
from followtheleader._runtime.logs import RateLimitedWarning
from followtheleader._wire.protocol import multicast_group

from conftest import Local

pytestmark = pytest.mark.lab

TIMEOUT = 10.0

Batch = list[tuple[bytes, tuple[str, int]]]


def waits_in_the_selector(thread: threading.Thread) -> bool:
    """Whether ``thread`` sleeps in epoll_wait (Linux), not on its way there."""
    with open(f"/proc/self/task/{thread.native_id}/wchan") as wchan:
        return wchan.read() == "do_epoll_wait"


def switches(thread: threading.Thread) -> int:
    """How many times ``thread`` went to sleep or was preempted so far (Linux)."""
    total = 0
    with open(f"/proc/self/task/{thread.native_id}/status") as status:
        for line in status:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def test_one_thread_reads_both_sockets_sleeps_between_and_survives_a_raising_handler(
    local: Local, caplog: pytest.LogCaptureFixture
) -> None:
    batches: queue.Queue[tuple[Batch, bool]] = queue.Queue()
    errors: queue.Queue[str] = queue.Queue()

    def on_datagrams(batch: Batch, multicast: bool) -> None:
        if batch[0][0] == b"raise":
            raise ValueError("a bad handler")
        batches.put((batch, multicast))

    group = multicast_group("t" + os.urandom(4).hex())

    def open_server() -> tuple[HeartbeatServer, socket.socket]:
        server = HeartbeatServer(
            ("127.0.0.1", 0), on_datagrams, RateLimitedWarning(logging.getLogger("test")), lambda e, t: errors.put(t)
        )
        assert server.open_multicast(group)
        server.start("followtheleader-heartbeat-test")
        return server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a peer, multicast loop on

    server, peer = local(open_server)
    try:
        heartbeat = ("127.0.0.1", server.port)
        thread = next(t for t in threading.enumerate() if t.name == "followtheleader-heartbeat-test")

        peer.sendto(b"raise", heartbeat)
        port = peer.getsockname()[1]
        assert "error while handling heartbeat datagrams from 127.0.0.1:" in errors.get(timeout=TIMEOUT)
        assert "a bad handler" in caplog.text

        for n in range(3):  # still serving: what is waiting on one socket comes in one batch
            peer.sendto(b"beat %d" % n, heartbeat)
        received: list[bytes] = []
        while len(received) < 3:
            batch, multicast = batches.get(timeout=TIMEOUT)
            assert not multicast and all(source == ("127.0.0.1", port) for _, source in batch)
            received += [data for data, _ in batch]
        assert received == [b"beat 0", b"beat 1", b"beat 2"]

        peer.sendto(b"multicast beat", group)
        batch, multicast = batches.get(timeout=TIMEOUT)
        assert multicast and [(data, source[1]) for data, source in batch] == [(b"multicast beat", port)]

        # Nothing arrives: the thread does not wake at all (it used to poll 10 times a second).
        deadline = time.monotonic() + TIMEOUT
        while not waits_in_the_selector(thread):
            assert time.monotonic() < deadline, "the heartbeat thread never went back to its selector"
            threading.Event().wait(0.005)
        before = switches(thread)
        threading.Event().wait(0.5)  # an observation window, not a synchronisation
        assert switches(thread) == before and waits_in_the_selector(thread)
        assert thread.is_alive() and errors.empty()
    finally:
        peer.close()
        server.close()
    assert not thread.is_alive()
    server.close()  # idempotent


def test_the_leader_does_not_hear_its_own_multicast_beat(local: Local) -> None:
    """IP_MULTICAST_LOOP is off on the heartbeat socket: a multicast beat it sends reaches no
    socket of its host, its own multicast socket included (a plain socket's does)."""
    batches: queue.Queue[tuple[Batch, bool]] = queue.Queue()
    errors: list[str] = []
    group = multicast_group("t" + os.urandom(4).hex())

    def open_server() -> tuple[HeartbeatServer, socket.socket]:
        server = HeartbeatServer(
            ("0.0.0.0", 0),
            lambda b, m: batches.put((b, m)),
            RateLimitedWarning(logging.getLogger("test")),
            lambda e, t: errors.append(t),
        )
        assert server.open_multicast(group)
        server.start("followtheleader-heartbeat-test")
        return server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # another node, loop on

    server, other = local(open_server)
    try:
        server.send(b"own beat", group, multicast=True)
        other.sendto(b"other beat", group)  # reaches the same socket after the own beat would
        seen: list[bytes] = []
        while b"other beat" not in seen:
            batch, multicast = batches.get(timeout=TIMEOUT)
            assert multicast
            seen += [data for data, _ in batch]
        assert seen == [b"other beat"] and not errors
    finally:
        other.close()
        server.close()
