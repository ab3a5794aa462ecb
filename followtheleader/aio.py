"""asyncio interface: :class:`AsyncElector` wraps the threaded :class:`~followtheleader.Elector`.

The election still runs on the elector's threads. Its callback thread hands each event to the
event loop with ``call_soon_threadsafe``; blocking calls (``start``, ``stop``, ``resign``) run
in the loop's default executor, so nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

from ._core.model import Event, FencingToken, Member, State
from ._elector import Elector, elect

__all__ = ["AsyncElector", "async_elect"]

POLL = 0.05
"""Seconds between two reads of ``is_leader`` while leader-only work runs."""


class AsyncElector:
    """One node of a leader election group, for asyncio code.

    Create it with :func:`async_elect` inside a running loop; use ``async with`` or
    ``await start()`` / ``await stop()``. Properties are those of :class:`~followtheleader.Elector`.
    """

    def __init__(self, elector: Elector, loop: asyncio.AbstractEventLoop) -> None:
        self._elector = elector
        self._loop = loop
        self._queues: set[asyncio.Queue[Event | None]] = set()
        self._changed = asyncio.Event()
        for kind in ("leader", "follower", "reelection", "error"):
            elector.on(kind, self._from_thread)

    @property
    def elector(self) -> Elector:
        """The threaded elector underneath."""
        return self._elector

    def _from_thread(self, event: Event) -> None:
        """Callback thread: hand the event to the loop (dropped once the loop is closed)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: Event | None) -> None:
        """Loop thread."""
        for queue in self._queues:
            queue.put_nowait(event)
        self._changed.set()
        self._changed = asyncio.Event()

    # ----------------------------------------------------------------- life cycle

    async def start(self) -> Self:
        """Start the elector (in the executor: starting may bind sockets)."""
        await self._loop.run_in_executor(None, self._elector.start)
        return self

    async def stop(self, timeout: float = 5.0) -> bool:
        """Stop the elector in the executor; ends every :meth:`events` iterator."""
        done = await self._loop.run_in_executor(None, self._elector.stop, timeout)
        self._deliver(None)
        return done

    async def resign(self) -> bool:
        """Hand leadership over (see :meth:`Elector.resign`); False if this node did not lead."""
        return await self._loop.run_in_executor(None, self._elector.resign)

    async def wait_leader(self, timeout: float | None = None) -> Member | None:
        """Wait until this node leads or follows a leader; return the leader (None on timeout)."""
        return await self._loop.run_in_executor(None, self._elector.wait_for_leader, timeout)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()

    def events(self) -> AsyncIterator[Event]:
        """Every event from this call on, in order, until :meth:`stop` (loop thread)."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._queues.add(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[Event | None]) -> AsyncIterator[Event]:
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._queues.discard(queue)

    # ----------------------------------------------------------------- leader-only work

    async def _until_leading(self) -> FencingToken:
        while True:
            changed = self._changed
            token = self._elector.fencing_token
            if self._elector.is_leader and token is not None:
                return token
            await changed.wait()

    async def _until_demoted(self, token: FencingToken) -> None:
        """Return once this node no longer leads under ``token``.

        The elector signals the loop from the thread that first sees the leadership over
        (``_arm_leadership_end``: the ticker at the lease's end, or any read of ``is_leader``),
        before ``is_leader`` can read False anywhere; events and a read every :data:`POLL` s
        (a backstop, should the ticker be starved) also end the wait.
        """
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()

        def signal() -> None:  # any thread, under the elector's state lock: only schedules
            loop.call_soon_threadsafe(ended.set)

        self._elector._arm_leadership_end(signal)
        while not ended.is_set() and self._elector.is_leader and self._elector.fencing_token == token:
            changed = self._changed
            waits = {asyncio.ensure_future(changed.wait()), asyncio.ensure_future(ended.wait())}
            try:
                await asyncio.wait(waits, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def run_while_leader(self, function: Callable[[FencingToken], Awaitable[Any]], repeat: bool = True) -> None:
        """At each leadership, run ``await function(token)``; cancel it when leadership ends.

        Cancelled when the leadership ends: the elector signals the loop at the local lease's
        end, before ``is_leader`` can read False, and on a ``reelection`` event; the coroutine
        receives ``CancelledError`` at its next ``await``. With ``repeat=False``, return after the first
        leadership. An exception of ``function`` propagates.
        """
        while True:
            token = await self._until_leading()
            task = asyncio.ensure_future(function(token))
            watch = asyncio.ensure_future(self._until_demoted(token))
            try:
                await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pending in (task, watch):
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pending
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
            if not repeat:
                return
            await self._until_demoted(token)

    @contextlib.asynccontextmanager
    async def leadership(self) -> AsyncIterator[FencingToken]:
        """Wait until this node leads, then run the body with the token; the body is cancelled
        when leadership ends (a ``CancelledError`` inside it, which leaves this block)."""
        token = await self._until_leading()
        body = asyncio.current_task()
        assert body is not None
        demoted = False

        async def watch() -> None:
            nonlocal demoted
            await self._until_demoted(token)
            demoted = True
            body.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            yield token
        except asyncio.CancelledError:
            if not demoted:
                raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # ----------------------------------------------------------------- properties

    @property
    def name(self) -> str:
        return self._elector.name

    @property
    def node_id(self) -> str:
        return self._elector.node_id

    @property
    def state(self) -> State:
        return self._elector.state

    @property
    def is_leader(self) -> bool:
        return self._elector.is_leader

    @property
    def term(self) -> int:
        return self._elector.term

    @property
    def fencing_token(self) -> FencingToken | None:
        return self._elector.fencing_token

    @property
    def leader(self) -> Member | None:
        return self._elector.leader

    @property
    def members(self) -> tuple[Member, ...]:
        return self._elector.members


def async_elect(*args: Any, **kwargs: Any) -> AsyncElector:
    """Like :func:`~followtheleader.elect`, for the running event loop (call it inside one)."""
    return AsyncElector(elect(*args, **kwargs), asyncio.get_running_loop())
