"""A FastAPI app whose periodic job runs on one worker only: the elected leader.

Every worker process runs its own elector (started in the app's lifespan, so after the fork),
and the job runs only on the one that leads; when it dies, another takes over. ::

    uvicorn examples.fastapi_app:app --workers 3
    curl http://localhost:8000/leader

Settings come from the environment: ``FTL_GROUP`` (the group name), ``JOB_PERIOD`` (seconds
between two runs, default 0.5) and ``FOLLOWTHELEADER_JOB_LOG`` (when set, each run appends
``<pid> <time.monotonic()>`` to that file).

Everything here runs on the event loop; the election runs on the elector's threads
(:mod:`followtheleader.aio`), and the job is cancelled when leadership ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI

from followtheleader import FencingToken
from followtheleader.aio import AsyncElector, async_elect

GROUP = os.environ.get("FTL_GROUP", "fastapi-example-jobs")
JOB_PERIOD = float(os.environ.get("JOB_PERIOD", "0.5"))
JOB_LOG = os.environ.get("FOLLOWTHELEADER_JOB_LOG")


def record_run() -> None:
    """Executor thread: append one line to the job log (a blocking write, off the loop)."""
    if JOB_LOG:
        with open(JOB_LOG, "a", encoding="ascii") as log:
            log.write(f"{os.getpid()} {time.monotonic()}\n")


async def job(token: FencingToken) -> None:
    """The singleton work, every JOB_PERIOD seconds while this worker leads (loop thread)."""
    while True:
        await asyncio.to_thread(record_run)  # real work would pass token.key to what it writes
        await asyncio.sleep(JOB_PERIOD)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with async_elect(GROUP) as elector:
        app.state.elector = elector
        runner = asyncio.ensure_future(elector.run_while_leader(job))
        try:
            yield
        finally:  # stop the work, then the elector
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


app = FastAPI(lifespan=lifespan)


@app.get("/leader")
async def leader() -> dict[str, object]:
    elector: AsyncElector = app.state.elector
    current = elector.leader
    return {"node_id": elector.node_id, "is_leader": elector.is_leader, "leader": current and current.node_id}
