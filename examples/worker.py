"""A plain worker script: start it on several hosts, and only the elected leader does the work.

::

    python examples/worker.py

The main thread does the work, in rounds: one round every ``JOB_PERIOD`` seconds, only while
this node leads. Between rounds it waits in :meth:`Elector.join`, which returns False when the
timeout passes and True once the elector has stopped (``elector.stop()`` from another thread or
from a callback), which ends the loop. SIGTERM and Ctrl-C leave the ``with`` block, which stops
the elector: a leader hands over at once.

Settings come from the environment: ``FTL_GROUP`` (the group name) and ``JOB_PERIOD``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from followtheleader import Event, FencingToken, State, elect

log = logging.getLogger("worker")

GROUP = os.environ.get("FTL_GROUP", "worker-example")
JOB_PERIOD = float(os.environ.get("JOB_PERIOD", "10"))


def do_work(token: FencingToken) -> None:
    """One round of the singleton work; ``token`` is this leadership's fencing token.

    Store ``token.key`` with whatever the round writes to shared state, which refuses a
    lesser key than the greatest it has stored (see examples/fencing.py).
    """
    log.info("job: processing a batch (term %d)", token.term)


def log_role(event: Event) -> None:
    """Elector callback for every role event; on the elector's callback thread: keep it short."""
    if event.kind == "leader":
        log.info("leading now, term %d", event.term)
    elif event.previous_state is State.LEADER:  # "reelection", or "follower" of a better leader
        log.info("not leading any more: %s", event.reason)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM becomes a normal exit: it unwinds the `with` block below, which stops the elector.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    elector = elect(GROUP)
    for kind in ("leader", "follower", "reelection"):
        elector.on(kind, log_role)
    with elector:  # start() here; stop() however the block is left, so a leader hands over
        log.info("joined group %r as node %s", GROUP, elector.node_id)
        while not elector.join(timeout=JOB_PERIOD):
            token = elector.fencing_token  # read first: never newer than the leadership checked next
            if token is not None and elector.is_leader:
                do_work(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
