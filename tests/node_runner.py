"""A test and benchmark node: runs electors in one process and reports on stdout.

Run inside a lab namespace::

    python tests/node_runner.py GROUP [--count N] [--options JSON] [--wait-go]

Prints one JSON object a line: ``{"t": <monotonic>, "i": <elector index>, "node": <id>,
"kind": "leader"|"follower"|"reelection"|"error"|"started"|"stopped"|"status", ...}``.
All processes in the lab share one monotonic clock, so times from different nodes compare.

Reads commands on stdin, one a line: ``go`` (start, with --wait-go), ``stop I``,
``resign I``, ``status I``, ``raise-in-callback I`` (the next event callback of elector I
raises), ``stop-in-callback I`` (elector I stops itself from its next callback), ``exit``.
End of input stops every elector.

The ``followtheleader`` package imported is this checkout's, or the copy in the directory named
by the environment variable ``NODE_RUNNER_PACKAGE_PATH`` (a release a test installed; see
tests/test_release_interop.py, whose old release this file must keep working with: use
only the public API). The ``ready`` record names the package directory and version imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(
    0, os.environ.get("NODE_RUNNER_PACKAGE_PATH") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
)

import followtheleader
from followtheleader import Elector, Event, elect

_print_lock = threading.Lock()


def emit(**fields: Any) -> None:
    fields.setdefault("t", time.monotonic())
    with _print_lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


class Node:
    def __init__(self, index: int, elector: Elector) -> None:
        self.index = index
        self.elector = elector
        self.raise_next = False
        self.stop_next = False
        for kind in ("leader", "follower", "reelection", "error"):
            elector.on(kind, self.on_event)

    def on_event(self, event: Event) -> None:
        emit(
            t=event.time,
            i=self.index,
            node=event.node_id,
            kind=event.kind,
            state=event.state.value,
            previous=event.previous_state.value,
            term=event.term,
            token=event.fencing_token.key if event.fencing_token else None,
            leader=event.leader.node_id if event.leader else None,
            leader_npm=event.leader.npm if event.leader else None,
            reason=event.reason,
            error=repr(event.error) if event.error else None,
            thread=threading.current_thread().name,
        )
        if event.kind == "error":
            return
        if self.raise_next:
            self.raise_next = False
            raise RuntimeError("callback failure on purpose")
        if self.stop_next:
            self.stop_next = False
            stopped = self.elector.stop()
            emit(i=self.index, node=self.elector.node_id, kind="stopped-in-callback", result=stopped)

    def status(self) -> None:
        e = self.elector
        emit(
            i=self.index,
            node=e.node_id,
            kind="status",
            state=e.state.value,
            is_leader=e.is_leader,
            term=e.term,
            token=e.fencing_token.key if e.fencing_token else None,
            leader=e.leader.node_id if e.leader else None,
            members=[m.node_id for m in e.members],
            port=e.port,
            counters=e.counters,
            threads=sorted(t.name for t in threading.enumerate()),
            udp_ports=udp_ports(),
        )


def udp_ports() -> list[int]:
    """The local ports of this process's UDP sockets (in its network namespace)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        try:
            with open(table) as file:
                rows = file.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("group")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--options", default="{}", help="JSON options for every elector")
    parser.add_argument("--node-ids", default="", help="comma-separated node ids")
    parser.add_argument("--wait-go", action="store_true")
    parser.add_argument("--log", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log, stream=sys.stderr, format="%(relativeCreated)d %(threadName)s %(name)s %(message)s"
    )
    options = json.loads(args.options)
    ids = [x for x in args.node_ids.split(",") if x]
    nodes = []
    for index in range(args.count):
        extra = {"node_id": ids[index]} if index < len(ids) else {}
        nodes.append(Node(index, elect(args.group, **options, **extra)))
    emit(
        kind="ready",
        nodes=[n.elector.node_id for n in nodes],
        package=os.path.dirname(os.path.abspath(followtheleader.__file__)),
        version=followtheleader.__version__,
    )

    def start_all() -> None:
        for node in nodes:
            emit(i=node.index, node=node.elector.node_id, kind="started")
            node.elector.start()

    if not args.wait_go:
        start_all()
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command, index = words[0], int(words[1]) if len(words) > 1 else 0
        if command == "go":
            start_all()
        elif command == "stop":
            emit(i=index, node=nodes[index].elector.node_id, kind="stopping")
            result = nodes[index].elector.stop()
            emit(i=index, node=nodes[index].elector.node_id, kind="stopped", result=result)
        elif command == "resign":
            emit(i=index, node=nodes[index].elector.node_id, kind="resigning", result=nodes[index].elector.resign())
        elif command == "status":
            nodes[index].status()
        elif command == "raise-in-callback":
            nodes[index].raise_next = True
            emit(i=index, kind="ack")
        elif command == "stop-in-callback":
            nodes[index].stop_next = True
            emit(i=index, kind="ack")
        elif command == "exit":
            break
    for node in nodes:
        node.elector.stop()
    leftover = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
    emit(
        kind="exit", threads=leftover, fds=sorted(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else []
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
