"""A Flask app whose background job runs on one node only: the elected leader.

Start it on every host (or several times on one host): the copies find each other on the
LAN, elect one leader, and only the leader runs the job. When the leader stops, another copy
takes over within milliseconds; when it crashes, within about a second. ::

    python examples/flask_app.py             # Flask's development server, on port 5000
    curl http://localhost:5000/leader        # who leads the group, seen from this node

Settings come from the environment: ``FTL_GROUP`` (the group name: every copy uses the same
one), ``JOB_PERIOD`` (seconds between two runs of the job) and ``PORT``.

Threads: the elector runs on threads of its own, and calls the role callbacks below on its
callback thread, one at a time; they only log. The job runs on a thread of this module
(:class:`LeaderOnlyScheduler`), which checks :attr:`Elector.is_leader` before every run.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from flask import Flask

from followtheleader import Elector, Event, FencingToken, State, elect

log = logging.getLogger(__name__)

GROUP = os.environ.get("FTL_GROUP", "flask-example-jobs")
JOB_PERIOD = float(os.environ.get("JOB_PERIOD", "60"))


def send_report(token: FencingToken) -> None:
    """The singleton work.

    ``token`` is unique to this leadership and greater for a newer one: store its ``key``
    with whatever the work writes to shared state, and let the shared state refuse a lesser
    key, so that a former leader's late writes are refused (see examples/fencing.py).
    """
    log.info("job: sending the report (term %d)", token.term)


class LeaderOnlyScheduler:
    """Runs ``job(token)`` every ``period`` seconds on a thread of its own, while this node leads."""

    def __init__(self, elector: Elector, job: Callable[[FencingToken], None], period: float) -> None:
        self._elector = elector
        self._job = job
        self._period = period
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-only-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; waits for a run of the job that is under way."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self._period):
            token = self._elector.fencing_token  # read first: never newer than the leadership checked next
            if token is None or not self._elector.is_leader:
                continue
            try:
                self._job(token)
            except Exception:
                log.exception("the job failed")


def log_role(event: Event) -> None:
    """Elector callback for every role event; on the elector's callback thread: keep it short."""
    if event.kind == "leader":
        log.info("this node leads now (term %d): it runs the job", event.term)
    elif event.previous_state is State.LEADER:  # "reelection", or "follower" of a better leader
        log.info("this node stopped leading (%s)", event.reason)


def create_app() -> Flask:
    """The app factory: joins the group and starts the job thread.

    Call it once per process. Under a pre-forking server (gunicorn), call it in each worker
    after the fork, never in the master: no ``--preload`` (see the gunicorn recipe).
    """
    app = Flask(__name__)
    elector = elect(GROUP)
    for kind in ("leader", "follower", "reelection"):
        elector.on(kind, log_role)
    scheduler = LeaderOnlyScheduler(elector, send_report, JOB_PERIOD)
    app.extensions["followtheleader"] = elector

    @app.get("/leader")
    def leader() -> dict[str, object]:
        current = elector.leader
        return {
            "node_id": elector.node_id,
            "is_leader": elector.is_leader,
            "term": elector.term,
            "leader": current.node_id if current else None,
        }

    owner = os.getpid()

    def shutdown() -> None:
        if os.getpid() != owner:
            return  # a forked child inherited this handler: the elector is its parent's
        scheduler.stop()  # first the job, so that it never runs after the handover
        elector.stop()  # then hand leadership over at once

    elector.start()
    scheduler.start()
    atexit.register(shutdown)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM becomes a normal exit, so that the atexit handler above runs and a leader hands over.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    create_app().run(host="0.0.0.0", port=int(os.environ.get("PORT", "5000")))


if __name__ == "__main__":
    main()
