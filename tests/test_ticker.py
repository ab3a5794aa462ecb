"""The ticker thread: runs at the deadlines it is given, wakes on demand, never spins."""

from __future__ import annotations

import threading
import time

from followtheleader._runtime.ticker import Ticker


def _never_fails(exc: BaseException, text: str) -> None:
    raise AssertionError(f"tick raised: {text}")


def test_a_tick_that_wakes_its_own_ticker_does_not_spin() -> None:
    """Every machine step wakes the ticker (Elector._feed); from the tick itself that is a no-op.

    A regression test: the ticker used to wake itself from its own tick and then tick
    without pause, a fifth of a core per idle elector.
    """
    ticks: list[float] = []
    first, second = threading.Event(), threading.Event()
    ticker: Ticker

    def tick() -> float:
        ticks.append(time.monotonic())
        ticker.wake()  # what Elector._feed does after every step
        (second if first.is_set() else first).set()
        return time.monotonic() + 60.0

    ticker = Ticker("test-ticker", tick, _never_fails, 0.1)
    ticker.start()
    try:
        assert first.wait(5.0)
        assert not second.wait(0.5), f"the ticker ticked again at once: {len(ticks)} ticks"
        ticker.wake()  # from another thread it does wake the ticker
        assert second.wait(5.0)
    finally:
        ticker.stop()
        assert ticker.join(5.0)


def test_an_exception_in_tick_is_reported_and_the_ticker_goes_on() -> None:
    errors: list[str] = []
    calls = 0
    again = threading.Event()

    def tick() -> float | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        again.set()
        return None

    ticker = Ticker("test-ticker", tick, lambda exc, text: errors.append(text), 0.01)
    ticker.start()
    try:
        assert again.wait(5.0)
        assert errors and "boom" in errors[0]
    finally:
        ticker.stop()
        assert ticker.join(5.0)
