"""A WSGI app for gunicorn with several workers, whose job runs in one worker of the whole group.

Every gunicorn worker is a process of its own, so each one is a node of the group: gunicorn's
``post_fork`` hook (see ``gunicorn.conf.py``) calls :meth:`Leadership.start` in each worker
right after the fork, and ``worker_exit`` calls :meth:`Leadership.stop`, so that a worker
that exits hands leadership over at once. ::

    gunicorn -c examples/gunicorn.conf.py
    curl http://localhost:8000/              # this worker's view of the group

With ``FTL_HOST_LOCK`` set to a lock file, only one worker per host is a node
(:meth:`Leadership.start_when_host_lock_is_free`); the others wait for the lock, and one of
them takes its place when that worker exits, however it exits.

Never start the elector in the gunicorn master (``when_ready``, ``on_starting``, or an app
module imported with ``--preload``): threads do not survive a fork, and the workers would
share the master's node id.

Settings come from the environment: ``FTL_GROUP`` (the group name), ``JOB_PERIOD`` and
``FTL_HOST_LOCK``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING

from followtheleader import Elector, FencingToken, elect

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

GROUP = os.environ.get("FTL_GROUP", "gunicorn-example-jobs")
JOB_PERIOD = float(os.environ.get("JOB_PERIOD", "60"))


def send_report(token: FencingToken) -> None:
    """The singleton work; ``token`` is this leadership's fencing token (see examples/fencing.py)."""
    log.info("job: sending the report (term %d)", token.term)


class Leadership:
    """This worker's elector, and the thread that runs the job while the worker leads."""

    def __init__(self) -> None:
        self.elector: Elector | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._job_thread: threading.Thread | None = None
        self._host_lock: IO[str] | None = None

    def start(self) -> None:
        """Join the group. Call it in the worker, after the fork."""
        with self._lock:
            if self.elector is not None or self._stopped.is_set():
                return
            self.elector = elect(GROUP).start()
            self._job_thread = threading.Thread(target=self._run_job, args=(self.elector,), daemon=True)
            self._job_thread.start()
        log.info("worker %d joined group %r as node %s", os.getpid(), GROUP, self.elector.node_id)

    def start_when_host_lock_is_free(self, path: str) -> None:
        """Join the group once this worker holds the lock file ``path``: one node per host.

        A thread waits for the lock. The kernel releases it when the process that holds it
        exits, SIGKILL included, and another worker of the host then gets it and joins.
        """
        threading.Thread(target=self._lock_then_start, args=(path,), name="host-lock", daemon=True).start()

    def _lock_then_start(self, path: str) -> None:
        lock_file = open(path, "a")  # noqa: SIM115 - held open for the life of the worker
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # waits while another worker holds it
        self._host_lock = lock_file  # closing the file would release the lock
        self.start()

    def stop(self) -> None:
        """Stop the job, then hand leadership over. Idempotent; in the worker, at its exit."""
        with self._lock:
            self._stopped.set()
            elector, job_thread = self.elector, self._job_thread
        if job_thread is not None:
            job_thread.join()
        if elector is not None:
            elector.stop()

    def status(self) -> dict[str, object]:
        """This worker's view of the group."""
        elector = self.elector
        leader = elector.leader if elector is not None else None
        return {
            "pid": os.getpid(),
            "node_id": elector.node_id if elector is not None else None,
            "is_leader": elector is not None and elector.is_leader,
            "term": elector.term if elector is not None else None,
            "leader": leader.node_id if leader is not None else None,
        }

    def _run_job(self, elector: Elector) -> None:
        while not self._stopped.wait(JOB_PERIOD):
            token = elector.fencing_token  # read first: never newer than the leadership checked next
            if token is not None and elector.is_leader:
                try:
                    send_report(token)
                except Exception:
                    log.exception("the job failed")


leadership = Leadership()


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI app: answers every request with this worker's view of the group, as JSON."""
    body = json.dumps(leadership.status()).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
