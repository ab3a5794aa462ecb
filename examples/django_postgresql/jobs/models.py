"""The job's tables: the fence, and what the job does (one row per run).

``FencedEpoch`` is ``PostgreSQLEpochGuard``'s table (examples/fencing.py), declared as a model
so that ``manage.py migrate`` creates it with the rest. followtheleader's own two tables are
created by the coordinator on first use (or by your migrations: see docs/beyond-one-subnet.rst).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class FencedEpoch(models.Model):
    """One row per guarded resource: the epoch of the newest leadership that wrote."""

    name = models.TextField(primary_key=True)
    epoch = models.BigIntegerField()
    value = models.TextField()

    class Meta:
        db_table = "fenced_epoch"


class JobRun(models.Model):
    """One run of the singleton job, written only under the fence (see ``jobs/tasks.py``)."""

    group = models.TextField()
    epoch = models.BigIntegerField()
    node_id = models.TextField()
    ran_at = models.DateTimeField(default=timezone.now)
