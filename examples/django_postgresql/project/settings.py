"""Settings of the example project: a PostgreSQL database, and the singleton job's settings.

The database is the only server: the job's tables live in it, and so do followtheleader's
(``followtheleader_leader`` and ``followtheleader_member``, created on first use), since the
coordinator URL is derived from ``DATABASES["default"]`` (see ``jobs/coordinator.py``).
"""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["jobs"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DB_PORT", "5432"),
        "NAME": os.environ.get("DB_NAME", "mysite"),
        "USER": os.environ.get("DB_USER", ""),
        "PASSWORD": os.environ.get("DB_PASSWORD", ""),
        "OPTIONS": {"sslmode": os.environ.get("DB_SSLMODE", "prefer")},
        "CONN_MAX_AGE": 60,  # the job's thread keeps its connection between runs...
        "CONN_HEALTH_CHECKS": True,  # ...and checks it before reuse (see close_old_connections)
        # Behind pgbouncer in transaction mode, set DB_DISABLE_SERVER_SIDE_CURSORS=1: a
        # server-side cursor (QuerySet.iterator()) cannot outlive its transaction there.
        "DISABLE_SERVER_SIDE_CURSORS": os.environ.get("DB_DISABLE_SERVER_SIDE_CURSORS", "") == "1",
    }
}

# The coordinator: by default derived from DATABASES["default"] (jobs/coordinator.py); set
# FTL_COORDINATOR to a postgresql:// URL to connect elsewhere or otherwise.
FOLLOWTHELEADER_COORDINATOR = os.environ.get("FTL_COORDINATOR") or None

# Every copy of run_singleton, on every host, uses the same group name.
FOLLOWTHELEADER_GROUP = os.environ.get("FTL_GROUP", "mysite-singleton")
# How long a crashed leader keeps its leadership before another copy takes over (seconds;
# the coordinator's lease, counted by the database server's clock). At least 2.
FOLLOWTHELEADER_TTL = float(os.environ.get("FTL_TTL", "10"))
# This copy's node id (default: a random one per process). Unique in the group.
FOLLOWTHELEADER_NODE_ID = os.environ.get("FTL_NODE_ID") or None
# Seconds between two runs of the job while leading.
JOB_PERIOD = float(os.environ.get("JOB_PERIOD", "60"))
# Seconds the example job "works" before it writes (a stand-in for real work).
JOB_WORK_SECONDS = float(os.environ.get("JOB_WORK_SECONDS", "0"))

# followtheleader logs under the "followtheleader" logger (role changes at INFO) and never
# configures logging itself: the project decides where its lines go.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "jobs": {"handlers": ["console"], "level": "INFO"},
        "followtheleader": {"handlers": ["console"], "level": "INFO"},
    },
}
