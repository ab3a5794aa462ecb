"""The periodic jobs of the site: each must run on one node of the group at a time."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def send_daily_digest(term: int) -> None:
    """One periodic job.

    ``term`` grows with every new leadership. Where a job writes shared state, store the term
    with the write and refuse writes with a lower term, so that a former leader that has not
    noticed yet that it lost its role cannot overwrite the new leader's work::

        Digest.objects.filter(pk=1, term__lte=term).update(term=term, sent_at=timezone.now())
    """
    log.info("job: sending the daily digest (term %d)", term)


PERIODIC_JOBS = [send_daily_digest]
