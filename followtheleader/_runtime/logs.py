"""Logging helpers: repeated trouble is counted, and logged at WARNING once a minute at most."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["RateLimitedWarning"]

WARNING_PERIOD = 60.0
"""Seconds between two WARNING lines about the same kind of trouble."""


class RateLimitedWarning:
    """Count each kind of trouble; log it at WARNING at most once per period, else at DEBUG.

    Thread-safe: heartbeat, browser and ticker threads share one instance per elector.
    """

    def __init__(self, logger: logging.Logger, period: float = WARNING_PERIOD) -> None:
        self._logger = logger
        self._period = period
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self._warned_at: dict[str, tuple[float, int]] = {}  # key -> (when, count then)

    def __call__(self, key: str, message: str, *args: Any) -> bool:
        """Count one occurrence of ``key`` and log ``message % args``; True if at WARNING."""
        now = time.monotonic()
        with self._lock:
            count = self.counts.get(key, 0) + 1
            self.counts[key] = count
            warned = self._warned_at.get(key)
            due = warned is None or now - warned[0] >= self._period
            if due:
                self._warned_at[key] = (now, count)
        if due:
            since = "" if warned is None else f" ({count - warned[1] - 1} more since the last warning)"
            self._logger.warning(message + since, *args)
        else:
            self._logger.debug(message, *args)
        return due
