"""Celery with exactly one beat scheduler in the whole group, elected through Redis.

Start ``celery beat`` under ``followtheleader run`` on every host (or several times on one)::

    followtheleader run beat --coordinator redis://redis.internal:6379/0 -- \
        celery -A tasks beat --schedule /var/lib/beat/schedule

Only the leader's ``celery beat`` runs; when it stops or dies, another node's starts within
the coordinator TTL (at once after a clean stop). Workers run as usual, on any number of
hosts, without followtheleader: ``celery -A tasks worker``.

Settings from the environment: ``CELERY_BROKER_URL`` (default ``redis://localhost:6379/0``;
the same Redis may hold the broker's queues and the election, under another prefix) and
``TICK_SECONDS`` (how often beat sends ``tasks.tick``, default 10).
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("tasks", broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))
app.conf.beat_schedule = {
    "tick": {"task": "tasks.tick", "schedule": float(os.environ.get("TICK_SECONDS", "10"))},
}
app.conf.broker_connection_retry_on_startup = True


@app.task(name="tasks.tick")
def tick() -> str:
    """The scheduled job (run by a worker, wherever it runs)."""
    return "tick"
