"""gunicorn settings: several workers, each of them a node of the leader election group.

::

    gunicorn -c examples/gunicorn.conf.py                      # one node per worker
    FTL_HOST_LOCK=/run/lock/my-app.lock gunicorn -c examples/gunicorn.conf.py   # one per host

The elector starts in each worker once the worker is ready (``post_worker_init``) and stops in
the worker as it exits (``worker_exit``). Not in ``post_fork``: that hook runs before the
worker installs its own signal handlers, and a SIGTERM that arrives meanwhile (the master
stopping just as it boots a worker) is lost, so the worker runs on until the master kills it,
without handing over. Never in the master: not in ``when_ready`` or ``on_starting``, and
not at import time of an app module with ``preload_app = True``. The master forks every
worker, and a forked child has no threads but the one that forked: it would inherit an
elector without threads (and the same node id), and possibly locks held by the master's
elector threads at the moment of the fork.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

wsgi_app = "gunicorn_app:app"
pythonpath = os.path.dirname(os.path.abspath(__file__))
bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WORKERS", "3"))
preload_app = False  # the app module is imported by each worker, after the fork

# One node per host instead of one per worker: the path of a lock file that only this
# service's workers use, in a directory private to it (systemd's RuntimeDirectory=, say).
host_lock = os.environ.get("FTL_HOST_LOCK")

# The app's own lines (and followtheleader's role changes) on stderr, with the worker's pid.
logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")


def post_worker_init(worker: Worker) -> None:
    """In each new worker, once its signal handlers are installed: join the group.

    A SIGTERM from now on ends the worker's loop, and ``worker_exit`` then stops the elector.
    """
    if not worker.alive:
        return  # already told to exit
    import gunicorn_app

    if host_lock:
        gunicorn_app.leadership.start_when_host_lock_is_free(host_lock)
    else:
        gunicorn_app.leadership.start()


def worker_exit(server: Arbiter, worker: Worker) -> None:
    """As a worker exits: stop its job, then hand leadership over at once."""
    if worker.pid != os.getpid():
        return  # gunicorn also calls this in the master, for a worker that is already gone
    import gunicorn_app

    gunicorn_app.leadership.stop()
