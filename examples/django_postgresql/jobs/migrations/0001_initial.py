"""The job's tables (``manage.py makemigrations jobs`` wrote the same)."""

from __future__ import annotations

from typing import ClassVar

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: ClassVar[list[tuple[str, str]]] = []

    operations: ClassVar[list[migrations.operations.base.Operation]] = [
        migrations.CreateModel(
            name="FencedEpoch",
            fields=[
                ("name", models.TextField(primary_key=True, serialize=False)),
                ("epoch", models.BigIntegerField()),
                ("value", models.TextField()),
            ],
            options={"db_table": "fenced_epoch"},
        ),
        migrations.CreateModel(
            name="JobRun",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("group", models.TextField()),
                ("epoch", models.BigIntegerField()),
                ("node_id", models.TextField()),
                ("ran_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
        ),
    ]
