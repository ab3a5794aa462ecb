"""The command that ``reports.service`` runs on the leader only, through ``followtheleader run``.

It knows nothing of the election: ``followtheleader run`` starts it when this node becomes the
group's leader, with the leadership's fencing token in ``FOLLOWTHELEADER_FENCING_TOKEN`` and
its term in ``FOLLOWTHELEADER_TERM``, and stops it with SIGTERM (then
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
    term = int(os.environ["FOLLOWTHELEADER_TERM"])
    # Store this key with whatever the job writes to shared state, which refuses a lesser one
    # (see examples/fencing.py): a former leader that is still running is then refused.
    token = os.environ["FOLLOWTHELEADER_FENCING_TOKEN"]
    log.info("started on node %s (term %d, fencing token %s)", os.environ["FOLLOWTHELEADER_NODE_ID"], term, token)
    while True:
        log.info("job: sending the report (term %d)", term)
        time.sleep(JOB_PERIOD)


if __name__ == "__main__":
    main()
