"""APScheduler jobs that run on the elected leader only.

Start this script on several hosts: each runs an APScheduler ``BackgroundScheduler``, but only
the leader's has jobs. The ``leader`` callback adds them; any other role event (``reelection``,
or ``follower`` when a better leader took over) removes them. ::

    python examples/apscheduler_jobs.py

Threads: the elector calls the callbacks on its callback thread, one at a time; adding and
removing jobs is quick, so they do nothing else. The jobs run on the scheduler's worker
threads; each one checks :attr:`Elector.is_leader` first, because the lease can run out a
moment before the demotion reaches the callbacks.

Settings come from the environment: ``FTL_GROUP`` (the group name) and ``JOB_PERIOD``
(seconds between two runs of the interval job).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from apscheduler.schedulers.background import BackgroundScheduler

from followtheleader import Elector, Event, elect

log = logging.getLogger("jobs")

GROUP = os.environ.get("FTL_GROUP", "apscheduler-example-jobs")
JOB_PERIOD = float(os.environ.get("JOB_PERIOD", "300"))


def expire_sessions(elector: Elector) -> None:
    """An interval job, on one of the scheduler's worker threads."""
    term = elector.term  # read first: never newer than the leadership checked next
    if not elector.is_leader:
        return
    log.info("job: expiring old sessions (term %d)", term)


def send_nightly_report(elector: Elector) -> None:
    """A cron job: it runs at 02:00 on whichever node leads then."""
    term = elector.term
    if not elector.is_leader:
        return
    log.info("job: sending the nightly report (term %d)", term)


def add_jobs(scheduler: BackgroundScheduler, elector: Elector) -> None:
    """The leader's schedule. Triggers start counting when the jobs are added."""
    scheduler.add_job(expire_sessions, "interval", seconds=JOB_PERIOD, args=[elector], id="expire-sessions")
    scheduler.add_job(send_nightly_report, "cron", hour=2, args=[elector], id="nightly-report")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run is plenty
    # SIGTERM becomes a normal exit: it unwinds the `finally` below, which hands leadership over.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    scheduler = BackgroundScheduler(job_defaults={"max_instances": 1, "coalesce": True})
    elector = elect(GROUP)

    def on_role(event: Event) -> None:
        """Elector callback for every role event: adds the jobs on a leader, else removes them."""
        if event.kind == "leader":
            add_jobs(scheduler, elector)
            log.info("leading (term %d): jobs scheduled", event.term)
        elif scheduler.get_jobs():
            scheduler.remove_all_jobs()  # a job already running finishes: it checks is_leader
            log.info("not leading any more (%s): jobs removed", event.reason)

    for kind in ("leader", "follower", "reelection"):
        elector.on(kind, on_role)
    scheduler.start()
    elector.start()
    try:
        log.info("joined group %r as node %s", GROUP, elector.node_id)
        elector.join()  # until SIGTERM or Ctrl-C
    finally:
        scheduler.shutdown()  # waits for running jobs, so that none runs after the handover
        elector.stop()


if __name__ == "__main__":
    main()
