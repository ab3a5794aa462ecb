"""followtheleader.aio against memory:// (no root, no network)."""

from __future__ import annotations

import asyncio
import os
import time
import types

import pytest

import followtheleader._elector as elector_module
from followtheleader import FencingToken
from followtheleader.aio import AsyncElector, async_elect

TIMEOUT = 10.0
TTL = 2.0


def store() -> str:
    return "memory://a" + os.urandom(4).hex()


def member(url: str, node_id: str) -> AsyncElector:
    return async_elect("g", coordinator=url, node_id=node_id, coordinator_ttl=TTL)


def test_events_and_properties() -> None:
    async def main() -> None:
        url = store()
        async with member(url, "a") as node:
            leader = await node.wait_leader(TIMEOUT)
            assert leader is not None and leader.node_id == "a"
            assert node.is_leader and node.name == "g" and node.node_id == "a"
            assert node.fencing_token is not None and node.term >= 1
            events = node.events()
            assert await node.resign()
            kinds = []
            while not kinds or kinds[-1] != "reelection":
                kinds.append((await asyncio.wait_for(events.__anext__(), TIMEOUT)).kind)
            assert set(kinds) <= {"leader", "reelection"}
            await events.aclose()

    asyncio.run(main())


def test_events_iterator_ends_at_stop() -> None:
    async def main() -> None:
        node = await member(store(), "a").start()
        seen: list[str] = []

        async def consume() -> None:
            async for event in node.events():
                seen.append(event.kind)

        consumer = asyncio.ensure_future(consume())
        await node.wait_leader(TIMEOUT)
        assert await node.stop()
        await asyncio.wait_for(consumer, TIMEOUT)

    asyncio.run(main())


def test_run_while_leader_cancelled_at_resign_and_repeats() -> None:
    async def main() -> None:
        runs: list[FencingToken] = []
        cancelled = asyncio.Event()
        second = asyncio.Event()

        async def job(token: FencingToken) -> None:
            runs.append(token)
            if len(runs) == 2:
                second.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        async with member(store(), "a") as node:
            runner = asyncio.ensure_future(node.run_while_leader(job))
            await node.wait_leader(TIMEOUT)
            await node.resign()
            await asyncio.wait_for(cancelled.wait(), TIMEOUT)
            # alone, it leads again after one failure window, with a new token
            await asyncio.wait_for(second.wait(), 3 * TIMEOUT)
            assert runs[1] > runs[0]
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner

    asyncio.run(main())


def test_cancelled_at_lease_end_on_controlled_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    offset = [0.0]
    monkeypatch.setattr(elector_module, "time", types.SimpleNamespace(monotonic=lambda: time.monotonic() + offset[0]))

    async def main() -> None:
        async with member(store(), "a") as node:
            await node.wait_leader(TIMEOUT)
            cancelled_while_leader: list[bool] = []
            async with node.leadership() as token:
                assert token == node.fencing_token
                offset[0] = 10 * TTL  # the local lease is over
                try:
                    await asyncio.sleep(TIMEOUT)
                except asyncio.CancelledError:
                    cancelled_while_leader.append(node.is_leader)
                    raise
            assert cancelled_while_leader == [False]

    asyncio.run(asyncio.wait_for(main(), 3 * TIMEOUT))


def test_run_while_leader_once() -> None:
    async def main() -> None:
        async def job(token: FencingToken) -> str:
            return "done"

        async with member(store(), "a") as node:
            await asyncio.wait_for(node.run_while_leader(job, repeat=False), TIMEOUT)

    asyncio.run(main())
