"""Ending the child processes a test started, when it tears down."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def terminate_or_kill(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM to ``process`` if it still runs, then wait up to ``timeout`` seconds for it to
    exit; past that, SIGKILL, and wait for it (10 s at most). Runs on the caller's thread."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
