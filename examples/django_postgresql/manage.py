#!/usr/bin/env python
"""Django's command-line utility for this example project.

``python manage.py migrate`` creates the job's tables in the database; ``python manage.py
run_singleton`` runs the singleton job, on the elected leader only, with that same database
as the coordinator.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    # examples/, for examples/fencing.py (PostgreSQLEpochGuard); a real project copies the
    # class, or its statement, into its own code.
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
