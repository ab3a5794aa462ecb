"""The singleton job: what must run on one copy at a time, fenced by the PostgreSQL epoch.

``run_while_leading`` runs on the thread ``Elector.run_while_leader`` starts at each
leadership (``followtheleader-work-<group>``): one run every ``JOB_PERIOD`` seconds until
``demoted`` is set. Each run does its work, then writes its result in one transaction of
Django's connection, whose first statement is the fence: ``PostgreSQLEpochGuard.WRITE``
(examples/fencing.py), which stores this leadership's epoch on the group's row unless a
greater epoch has written. The coordinator's epoch is the token's term, and the fence is in
the same database as the job's rows: they commit together or not at all.

Nothing is checked between the work and the write, on purpose: however late a check, the
process can be paused right after it (SIGSTOP, a long garbage collection, a frozen virtual
machine) while another copy takes over. The fence refuses the late write.
"""

from __future__ import annotations

import logging
import threading
import time

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
        # The job's writes go here, in this transaction (mark the reminders sent, close the
        # expired orders...). This one records that it ran.
        JobRun.objects.create(group=group, epoch=token.term, node_id=node_id)
    return True


def work(token: FencingToken) -> None:
    """The job's work before it writes (reading, computing, calling other services); here
    it only takes ``JOB_WORK_SECONDS``."""
    log.info("job: working (term %d)", token.term)
    time.sleep(settings.JOB_WORK_SECONDS)


def run_while_leading(token: FencingToken, demoted: threading.Event, node_id: str) -> None:
    """The work thread of one leadership: run the job every ``JOB_PERIOD`` seconds until
    ``demoted`` is set or the fence refuses a run."""
    group = settings.FOLLOWTHELEADER_GROUP
    try:
        while not demoted.is_set():
            close_old_connections()  # drops this thread's connection if it is broken or too old
            try:
                work(token)
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
