"""Logging helpers: repeated trouble is logged at WARNING once, then at DEBUG."""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["WarnOnce"]


class WarnOnce:
    """Log each kind of trouble at WARNING the first time, at DEBUG after that, and count it.

    Thread-safe: heartbeat, browser and ticker threads share one instance per elector.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def __call__(self, key: str, message: str, *args: Any) -> None:
        """Count one occurrence of ``key`` and log ``message % args``."""
        with self._lock:
            count = self.counts.get(key, 0) + 1
            self.counts[key] = count
        if count == 1:
            self._logger.warning(message + " (further ones are logged at DEBUG)", *args)
        else:
            self._logger.debug(message, *args)
