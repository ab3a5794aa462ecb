"""``python manage.py run_singleton``: run the singleton job while this copy leads its group.

Start one such process on every host or container (a systemd service, a Deployment's
replicas, a supervisor program), next to the web servers. They elect one leader in the
project's own PostgreSQL database (the coordinator URL comes from ``DATABASES["default"]``),
and only the leader runs the job. When it stops (SIGTERM), another copy takes over at once;
when it crashes, once its lease has run out (``FOLLOWTHELEADER_TTL``, 10 s by default).

Threads: the main thread starts the elector and waits; the job runs on the thread
``Elector.run_while_leader`` starts at each leadership; ``log_role`` runs on the elector's
callback thread.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from followtheleader import Event, State, elect
from jobs.coordinator import coordinator_url_from_django
from jobs.tasks import run_while_leading

log = logging.getLogger("jobs")

GRACE = 5.0
"""Seconds a run of the job may take to notice the demotion before it is reported."""


def log_role(event: Event) -> None:
    """Elector callback for every role event; on the elector's callback thread: keep it short."""
    if event.kind == "leader":
        log.info("leading (term %d): this copy runs the job", event.term)
    elif event.previous_state is State.LEADER:
        log.info("not leading any more (%s)", event.reason)


class Command(BaseCommand):
    help = "Join the group in the project's PostgreSQL database and run the singleton job while leading."

    def handle(self, *args: Any, **options: Any) -> None:
        # SIGTERM becomes a normal exit: it unwinds the blocks below, which stop the job's
        # thread first and then the elector, which hands leadership over.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        url = settings.FOLLOWTHELEADER_COORDINATOR or coordinator_url_from_django(settings.DATABASES["default"])
        elector = elect(
            settings.FOLLOWTHELEADER_GROUP,
            coordinator=url,
            coordinator_ttl=settings.FOLLOWTHELEADER_TTL,
            node_id=settings.FOLLOWTHELEADER_NODE_ID,
        )
        for kind in ("leader", "follower", "reelection"):
            elector.on(kind, log_role)
        with elector:  # start() here; stop() however the block is left
            log.info("joined group %r as node %s", elector.name, elector.node_id)
            work = elector.run_while_leader(functools.partial(run_while_leading, node_id=elector.node_id), GRACE)
            try:
                elector.join()  # returns once the elector has stopped; SIGTERM interrupts it
            finally:
                if not work.close(timeout=GRACE):
                    log.warning("the job did not stop within %s s", GRACE)
