"""APScheduler 3.x ``AsyncIOScheduler`` that runs only on the leader.

At each leadership the scheduler is created and started with the jobs; at demotion it is shut
down (its running jobs are cancelled with the leadership body). ::

    pip install 'apscheduler<4' followtheleader
    FTL_GROUP=reports python examples/apscheduler_asyncio.py     # on each host

Settings: ``FTL_GROUP``, ``JOB_PERIOD`` (seconds, default 0.5), ``FOLLOWTHELEADER_JOB_LOG``
(when set, each run appends ``<pid> <time.monotonic()>`` to that file).

Everything runs on the event loop; the election runs on the elector's threads.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from followtheleader import FencingToken
from followtheleader.aio import async_elect

GROUP = os.environ.get("FTL_GROUP", "apscheduler-asyncio-example")
JOB_PERIOD = float(os.environ.get("JOB_PERIOD", "0.5"))
JOB_LOG = os.environ.get("FOLLOWTHELEADER_JOB_LOG")


def record_run() -> None:
    """Executor thread: append one line to the job log."""
    if JOB_LOG:
        with open(JOB_LOG, "a", encoding="ascii") as log:
            log.write(f"{os.getpid()} {time.monotonic()}\n")


async def report(token: FencingToken) -> None:
    """The singleton job (loop thread); real work passes ``token.key`` to what it writes."""
    await asyncio.to_thread(record_run)


async def lead(token: FencingToken) -> None:
    """While this node leads: a scheduler with the jobs; shut down when cancelled at demotion."""
    scheduler = AsyncIOScheduler()
    scheduler.add_job(report, "interval", seconds=JOB_PERIOD, args=[token])
    scheduler.start()
    await report(token)
    try:
        await asyncio.Event().wait()  # until leadership ends (cancelled)
    finally:
        scheduler.shutdown(wait=False)


async def main() -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with async_elect(GROUP) as elector:
        runner = asyncio.ensure_future(elector.run_while_leader(lead))
        await stopping.wait()
        runner.cancel()  # stop the work, then the elector
        await asyncio.gather(runner, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
