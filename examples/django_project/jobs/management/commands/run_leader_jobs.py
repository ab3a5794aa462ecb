"""``python manage.py run_leader_jobs``: run the periodic jobs while this node leads its group.

Start one such process on every host (a systemd service, a container, a supervisor program).
They elect one leader between them, and only the leader runs the jobs. When it stops, another
one takes over within milliseconds; when it crashes, within about a second.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from followtheleader import Event, FencingToken, State, elect
from jobs.tasks import PERIODIC_JOBS

log = logging.getLogger("jobs")


def log_role(event: Event) -> None:
    """Elector callback for every role event; on the elector's callback thread: keep it short."""
    if event.kind == "leader":
        log.info("leading (term %d): this node runs the jobs", event.term)
    elif event.previous_state is State.LEADER:  # "reelection", or "follower" of a better leader
        log.info("not leading any more (%s)", event.reason)


class Command(BaseCommand):
    help = "Join the leader election group and run the periodic jobs while this node leads."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", type=float, default=60.0, help="seconds between two rounds (default 60)")

    def handle(self, *args: Any, **options: Any) -> None:
        # SIGTERM becomes a normal exit: it unwinds the `with` block, which hands leadership over.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        elector = elect(settings.FOLLOWTHELEADER_GROUP)
        for kind in ("leader", "follower", "reelection"):
            elector.on(kind, log_role)
        with elector:  # start() here; stop() however the block is left
            log.info("joined group %r as node %s", elector.name, elector.node_id)
            while not elector.join(timeout=options["period"]):  # True once the elector has stopped
                token = elector.fencing_token  # read first: never newer than the leadership checked next
                if token is not None and elector.is_leader:
                    self.run_jobs(token)

    def run_jobs(self, token: FencingToken) -> None:
        close_old_connections()  # a long-running command must not keep stale connections
        for job in PERIODIC_JOBS:
            try:
                job(token)
            except Exception:
                log.exception("job %s failed", job.__name__)
        close_old_connections()
