"""A node of the published npm package ``followtheleader`` 2.0.9 in a lab host.

Runs ``tests/npm/harness.js`` (see ``tests/npm/FINDINGS.md``) and collects the JSON lines it
prints. :func:`npm_unavailable_reason` installs the package from the npm registry (pinned by
``tests/npm/package-lock.json``) the first time, and says why npm nodes cannot run, if so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Any

from cluster import JsonLinesProcess
from netlab import Host

NPM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "npm")
HARNESS = os.path.join(NPM_DIR, "harness.js")
VERSION = "2.0.9"

_install_lock = threading.Lock()
_install_result: list[str | None] = []


def npm_id(host: Host, port: int = 9001) -> str:
    """The node id our electors give the npm leader on ``host`` (see ``npm_member``)."""
    return f"npm-{host.address.replace('.', '-')}-{port}"


def npm_unavailable_reason() -> str | None:
    """None when npm nodes can run; else why not (no node/npm, or the registry unreachable)."""
    with _install_lock:
        if not _install_result:
            _install_result.append(_install())
        return _install_result[0]


def _installed_version() -> str | None:
    try:
        with open(os.path.join(NPM_DIR, "node_modules", "followtheleader", "package.json")) as file:
            return str(json.load(file)["version"])
    except (OSError, ValueError, KeyError):
        return None


def _install() -> str | None:
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if _installed_version() == VERSION:
        return None
    try:
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NPM_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return "npm ci timed out (is the npm registry reachable?)"
    if done.returncode != 0 or _installed_version() != VERSION:
        return f"cannot install followtheleader@{VERSION} from the npm registry: {done.stderr.strip()[-500:]}"
    return None


class NpmNode(JsonLinesProcess):
    """One npm elector (``node harness.js GROUP``) in ``host``; its output lines in :attr:`records`."""

    def __init__(self, host: Host, group: str, hostname: str, *extra: str) -> None:
        super().__init__(host, ["node", HARNESS, group, "--hostname", hostname, *extra], threading.Condition())

    def kinds(self) -> list[str]:
        """The kinds of its role and failure records so far (``received`` lines left out)."""
        with self.changed:
            return [r["kind"] for r in self.records if r["kind"] != "received"]

    def wait(
        self, kind: str, timeout: float, count: int = 1, data: str | None = None, sender: str | None = None
    ) -> dict[str, Any]:
        """Wait for the ``count``-th record of ``kind`` (for ``received``: with ``data``, from ``sender``)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = [
                    r
                    for r in self.records
                    if r["kind"] == kind
                    and (data is None or r.get("data") == data)
                    and (sender is None or r.get("from") == sender)
                ]
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"npm node in {self.host.name}: no {kind} #{count} within {timeout}s; "
                        f"records {self.kinds()}, stderr {self.stderr[-500:]!r}"
                    )
                self.changed.wait(min(remaining, 0.5))

    def kill(self) -> float:
        """SIGKILL it (an npm node sends nothing when it dies); the monotonic time just before."""
        t = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        return t

    def finish(self) -> None:
        """Stop it (end of input) if it still runs."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
