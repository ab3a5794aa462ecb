"""An elector whose figures Prometheus scrapes: start it on several hosts.

::

    FTL_GROUP=jobs METRICS_PORT=9464 METRICS_ADDRESS=0.0.0.0 python examples/prometheus_metrics.py

Needs the extra: ``pip install 'followtheleader[prometheus]'``. The main thread serves
``/metrics`` (from a ``followtheleader-metrics`` thread) and waits in :meth:`Elector.join`;
SIGTERM and Ctrl-C leave the ``with`` blocks: the elector stops (a leader hands over at once),
then the metrics server.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from followtheleader import elect
from followtheleader.metrics import serve_metrics

GROUP = os.environ.get("FTL_GROUP", "metrics-example")
PORT = int(os.environ.get("METRICS_PORT", "9464"))
ADDRESS = os.environ.get("METRICS_ADDRESS", "127.0.0.1")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    elector = elect(GROUP)
    server = serve_metrics([elector], PORT, ADDRESS)
    try:
        with elector:
            print(f"serving http://{ADDRESS}:{server.port}/metrics", flush=True)
            while not elector.join(timeout=60):
                pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
