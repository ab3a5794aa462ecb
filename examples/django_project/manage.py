#!/usr/bin/env python
"""Django's command-line utility for this example project.

``python manage.py run_leader_jobs`` runs the periodic jobs, on the elected leader only.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
