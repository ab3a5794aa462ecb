"""The periodic jobs of the site: each must run on one node of the group at a time."""

from __future__ import annotations

import logging

from followtheleader import FencingToken

log = logging.getLogger(__name__)


def send_daily_digest(token: FencingToken) -> None:
    """One periodic job.

    ``token`` is this leadership's fencing token: unique to it, and greater for a newer one.
    Where a job writes shared state, store its key with the write and refuse writes with a
    lesser key, so that a former leader that has not noticed yet that it lost its role cannot
    overwrite the new leader's work (``fence_key``: a ``CharField(max_length=104)`` whose
    column compares bytes, ``db_collation="C"`` on PostgreSQL; see examples/fencing.py)::

        Digest.objects.filter(pk=1, fence_key__lte=token.key).update(fence_key=token.key, sent_at=timezone.now())
    """
    log.info("job: sending the daily digest (term %d)", token.term)


PERIODIC_JOBS = [send_daily_digest]
