"""Settings of the example project: only what the leader-only jobs need."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["jobs"]
DATABASES: dict[str, dict[str, str]] = {}  # a real project has one; the jobs would use it
USE_TZ = True
TIME_ZONE = "UTC"

# Every copy of the jobs process, on every host, uses the same group name.
FOLLOWTHELEADER_GROUP = os.environ.get("FTL_GROUP", "django-example-jobs")

# followtheleader logs under the "followtheleader" logger (role changes at INFO) and never
# configures logging itself: the project decides where its lines go.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "jobs": {"handlers": ["console"], "level": "INFO"},
        "followtheleader": {"handlers": ["console"], "level": "INFO"},
    },
}
