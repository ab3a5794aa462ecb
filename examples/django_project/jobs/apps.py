"""The jobs app. Its ready() starts nothing: the elector lives in ``run_leader_jobs``."""

from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
