"""What the lab benchmarks share (election, idle_load, soak, compare, scale).

Importing it puts ``tests/`` on ``sys.path``, so that a benchmark imports the tests' lab
modules (``netlab``, ``cluster``, ``coordservers``...) after it. Run on the main thread.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from coordservers import unavailable_reason
from netlab import lab_unavailable_reason


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """The benchmark's argument parser, its help the script's docstring ``doc``, as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def ready_to_run(backend: str | None = None) -> bool:
    """Makes SIGTERM exit (so that the lab is removed on the way out), then checks that a lab
    can be made and, with ``backend``, that its server can be started (:class:`ServerSet`).
    False, after saying why on standard error, when it cannot: the benchmark then exits 2."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    reason = lab_unavailable_reason() or (unavailable_reason(backend) if backend is not None else None)
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return False
    return True
