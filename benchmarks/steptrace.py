"""Run a node process with the coordinator drivers' steps timed (for ``election.py --trace``).

Usage (as a wrapper in front of the node runner's command line)::

    python benchmarks/steptrace.py python tests/node_runner.py GROUP ...

It wraps the methods of the ZooKeeper and etcd drivers that the session thread calls, and the
callbacks by which a watch wakes it, then runs the node runner. Each call writes one line to
stderr: ``STEP {"node": ..., "step": ..., "t0": ..., "t1": ...}`` with the monotonic times
at which the call began and returned (one clock for every process of the lab). Nothing of
the library is changed on disk; the runner's own output (stdout) is unchanged.
"""

from __future__ import annotations

import functools
import json
import os
import runpy
import sys
import threading
import time
from typing import Any

_lock = threading.Lock()

TIMED = ("open", "close", "keep_alive", "observe", "watched_view", "claim", "release", "rejoin", "wait")
"""Methods of a coordinator whose calls are timed (from call to return)."""


def _emit(node: str, step: str, t0: float, t1: float) -> None:
    line = json.dumps({"node": node, "step": step, "t0": t0, "t1": t1})
    with _lock:
        sys.stderr.write(f"STEP {line}\n")
        sys.stderr.flush()


def _timed(cls: type, name: str) -> None:
    original = getattr(cls, name)

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            result = original(self, *args, **kwargs)
        finally:
            t1 = time.monotonic()
            _emit(self.me.node_id, name, t0, t1)
        if name == "watched_view":
            step = "watched_view_hit" if result is not None else "watched_view_miss"
            watch = getattr(self, "_watch", None)
            if result is None and hasattr(watch, "current"):  # etcd: how far the watch is behind
                current = watch.current()
                step += f" (watch at {current[0] if current else None}, own writes {self._wrote})"
            _emit(self.me.node_id, step, t1, t1)
        return result

    setattr(cls, name, wrapper)


def _marked(cls: type, name: str, step: str, node_of: Any) -> None:
    """A callback (a watch firing): one point in time."""
    original = getattr(cls, name)

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        _emit(node_of(self), step, now, now)
        return original(self, *args, **kwargs)

    setattr(cls, name, wrapper)


def install() -> None:
    """Wrap the drivers' methods (those whose client library is installed)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    try:
        from followtheleader._coordinators import zookeeper

        for name in TIMED:
            _timed(zookeeper.ZooKeeperCoordinator, name)
        _marked(zookeeper.ZooKeeperCoordinator, "_watch", "watch_event", lambda c: c.me.node_id)
    except ImportError:
        pass
    try:
        from followtheleader._coordinators import etcd

        for name in TIMED:
            _timed(etcd.EtcdCoordinator, name)
        original_init = etcd.GroupWatch.__init__

        def init(self: Any, owner: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, owner, *args, **kwargs)
            self._trace_node = owner.me.node_id

        etcd.GroupWatch.__init__ = init  # type: ignore[method-assign]
        _marked(etcd.GroupWatch, "_set", "watch_event", lambda w: getattr(w, "_trace_node", "?"))
    except ImportError:
        pass


def main() -> None:
    install()
    argv = sys.argv[1:]
    if argv and os.path.basename(argv[0]).startswith("python"):
        argv = argv[1:]  # the interpreter of the wrapped command: this one
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
