"""The jobs app. Its ready() starts nothing: the elector lives in ``run_singleton``, a process
of its own (see docs/recipes/django.rst for why not ``AppConfig.ready()``)."""

from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
