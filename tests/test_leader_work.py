"""Elector.run_while_leader: leader-only work on a thread, against memory:// (no root, no network)."""

from __future__ import annotations

import os
import threading
import time
import types

import pytest

import followtheleader._elector as elector_module
from followtheleader import Elector, Event, FencingToken, elect

TIMEOUT = 10.0
TTL = 2.0


def member(url: str, node_id: str) -> Elector:
    return elect("g", coordinator=url, node_id=node_id, coordinator_ttl=TTL)


def store() -> str:
    return "memory://w" + os.urandom(4).hex()


class ShiftedClock:
    """Stands in for the ``time`` module in _elector: monotonic() runs ``offset`` seconds ahead."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


def test_work_runs_with_token_and_is_told_of_demotion() -> None:
    url = store()
    started: list[FencingToken] = []
    began = threading.Event()
    told = threading.Event()

    def work(token: FencingToken, demoted: threading.Event) -> None:
        started.append(token)
        began.set()
        demoted.wait(TIMEOUT)
        told.set()

    node = member(url, "a").start()
    try:
        node.run_while_leader(work, grace=1.0)
        assert node.wait_for_leader(TIMEOUT) is not None
        assert began.wait(TIMEOUT)
        assert started[0] == node.fencing_token
        assert node.resign()
        assert told.wait(TIMEOUT)
    finally:
        assert node.stop()


def test_demotion_at_lease_end_on_controlled_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ShiftedClock()
    monkeypatch.setattr(elector_module, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    told = threading.Event()
    signals: list[threading.Event] = []
    began = threading.Event()

    def work(token: FencingToken, demoted: threading.Event) -> None:
        signals.append(demoted)
        began.set()
        demoted.wait(TIMEOUT)
        told.set()

    node = member(store(), "a").start()
    try:
        node.run_while_leader(work, grace=1.0)
        assert node.wait_for_leader(TIMEOUT) is not None
        assert began.wait(TIMEOUT)
        assert node.is_leader and not signals[0].is_set()
        clock.offset = 10 * TTL  # the lease is over: is_leader reads False from now on
        assert not node.is_leader
        # set before is_leader could read False (by the elector, under its lock), not after
        assert signals[0].is_set()
        assert told.wait(1.0)
    finally:
        assert node.stop()


def test_work_overrunning_grace_is_reported() -> None:
    errors: list[Event] = []
    reported = threading.Event()
    release = threading.Event()
    node = member(store(), "a")
    node.on("error", lambda event: (errors.append(event), reported.set()))
    node.start()
    try:
        node.run_while_leader(lambda token, demoted: release.wait(TIMEOUT), grace=0.2)
        assert node.wait_for_leader(TIMEOUT) is not None
        node.resign()
        assert reported.wait(TIMEOUT)
        assert errors and isinstance(errors[0].error, TimeoutError)
    finally:
        release.set()
        assert node.stop()


def test_work_exception_is_reported() -> None:
    errors: list[Event] = []
    reported = threading.Event()
    node = member(store(), "a")
    node.on("error", lambda event: (errors.append(event), reported.set()))
    node.start()
    try:

        def boom(token: FencingToken, demoted: threading.Event) -> None:
            raise ValueError("boom")

        node.run_while_leader(boom)
        assert reported.wait(TIMEOUT)
        assert errors and isinstance(errors[0].error, ValueError)
    finally:
        assert node.stop()


def test_bad_arguments() -> None:
    node = member(store(), "a")
    with pytest.raises(TypeError):
        node.run_while_leader(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        node.run_while_leader(lambda t, d: None, grace=-1)
