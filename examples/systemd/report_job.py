"""The command that ``reports.service`` runs on the leader only, through ``followtheleader run``.

It knows nothing of the election: ``followtheleader run`` starts it when this node becomes the
group's leader, with the term in ``FOLLOWTHELEADER_TERM``, and stops it with SIGTERM (then
SIGKILL after ``--grace`` seconds) when the node stops leading or the service stops.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

log = logging.getLogger("report-job")

JOB_PERIOD = float(os.environ.get("JOB_PERIOD", "60"))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # stop between two reports
    term = int(os.environ["FOLLOWTHELEADER_TERM"])  # the fencing token of this leadership
    log.info("started on node %s (term %d)", os.environ["FOLLOWTHELEADER_NODE_ID"], term)
    while True:
        log.info("job: sending the report (term %d)", term)
        time.sleep(JOB_PERIOD)


if __name__ == "__main__":
    main()
