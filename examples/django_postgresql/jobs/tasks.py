"""The singleton job: what must run on one copy at a time, fenced by the PostgreSQL epoch.

``run_while_leading`` runs on the thread ``Elector.run_while_leader`` starts at each
leadership (``followtheleader-work-<group>``): one run every ``JOB_PERIOD`` seconds until
``demoted`` is set. Each run writes in one transaction of Django's connection, whose first
statement is the fence: ``PostgreSQLEpochGuard.WRITE`` (examples/fencing.py), which stores
this leadership's epoch on the row of the group, unless a greater epoch has written. The
coordinator's epoch is the token's term; it is in the same database, so the fence and the
job's rows commit together or not at all.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from fencing import PostgreSQLEpochGuard

from followtheleader import FencingToken
from jobs.models import JobRun

log = logging.getLogger("jobs")


def fenced_run(token: FencingToken, group: str, node_id: str) -> bool:
    """One run of the job under ``token``; False, with nothing written, when a newer
    leadership has written since (this one is over, whether this node knows it yet or not).

    The fence's ``UPDATE`` locks the group's row until the commit: a newer leader's run
    waits for it, then writes after it; an older one's finds the greater epoch and is
    refused. So runs commit in the order of their epochs, and ``JobRun``'s ids with them.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            PostgreSQLEpochGuard.WRITE, {"name": group, "epoch": int(token.term), "value": f"run by {node_id}"}
        )
        if cursor.rowcount != 1:
            return False
        # The job's real work goes here, in this transaction (send the reminders that are due,
        # close expired orders...). This one records that it ran.
        JobRun.objects.create(group=group, epoch=token.term, node_id=node_id)
    return True


def run_while_leading(token: FencingToken, demoted: threading.Event, node_id: str) -> None:
    """The work thread of one leadership: run the job every ``JOB_PERIOD`` seconds until
    ``demoted`` is set or the fence refuses a run."""
    group = settings.FOLLOWTHELEADER_GROUP
    try:
        while not demoted.is_set():
            close_old_connections()  # drops this thread's connection if it is broken or too old
            try:
                written = fenced_run(token, group, node_id)
            except Exception:  # the database may be down for a while: log, and try at the next run
                log.exception("job: failed (term %d)", token.term)
            else:
                if not written:
                    log.warning("job: refused (term %d): a newer leadership has written", token.term)
                    return
                log.info("job: ran (term %d)", token.term)
            demoted.wait(settings.JOB_PERIOD)
    finally:
        connection.close()  # this thread's own connection: the next leadership has a new thread
