"""The command line: ``followtheleader elect NAME`` joins a group and prints each event.

Runs on the main thread: it starts the elector, then waits in :meth:`Elector.join`. SIGINT
and SIGTERM stop the elector gracefully (a leader hands over) and the command exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from ._elector import Elector, elect
from ._model import Event

__all__ = ["main"]

_EXAMPLES = """examples:
  followtheleader elect MyService
  followtheleader elect MyService --priority 10 --interval 0.1
  followtheleader elect MyService --json | jq .
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``followtheleader`` console script and ``python -m followtheleader``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        elector = _make_elector(args)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    return _run_elect(elector, json_lines=args.json)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="followtheleader",
        description="Zero-configuration leader election on a local network.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    elect_parser = commands.add_parser(
        "elect",
        help="join a group and print each event until Ctrl-C",
        description="Join group NAME and print one line per event; Ctrl-C or SIGTERM hands over and exits 0.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    elect_parser.add_argument("name", metavar="NAME", help="the group name")
    elect_parser.add_argument("--port", type=int, help="UDP heartbeat port (default 9001, or any free one)")
    elect_parser.add_argument("--host", help="address to bind the heartbeat socket to (default 0.0.0.0)")
    elect_parser.add_argument("--priority", type=int, help="higher is preferred as leader (default 0)")
    elect_parser.add_argument("--interval", type=float, help="seconds between heartbeats (default 0.2)")
    elect_parser.add_argument("--max-failed-responses", type=int, help="missed heartbeats before failover (default 3)")
    elect_parser.add_argument("--node-id", help="this node's id (default: random)")
    elect_parser.add_argument("--type", help="DNS-SD service label (default ftl: _ftl._udp.local.)")
    elect_parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    return parser


def _make_elector(args: argparse.Namespace) -> Elector:
    names = ("port", "host", "priority", "interval", "max_failed_responses", "node_id", "type")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return elect(args.name, **options)


def _run_elect(elector: Elector, json_lines: bool) -> int:
    def show(event: Event) -> None:
        print(_format(event, elector, json_lines), flush=True)

    for kind in ("leader", "follower", "reelection", "error"):
        elector.on(kind, show)
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()
        elector.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            elector.start()
        except OSError as exc:
            print(f"followtheleader: {exc}", file=sys.stderr)
            return 1
        if not json_lines:
            print(
                f"joined group {elector.name!r} as node {elector.node_id} (heartbeat port {elector.port})", flush=True
            )
        elector.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        elector.stop()
    return 0


def _format(event: Event, elector: Elector, json_lines: bool) -> str:
    now = datetime.datetime.now().astimezone()
    leader = event.leader
    if json_lines:
        return json.dumps(
            {
                "time": now.isoformat(timespec="milliseconds"),
                "event": event.kind,
                "node_id": event.node_id,
                "state": event.state.value,
                "previous_state": event.previous_state.value,
                "term": event.term,
                "leader": None
                if leader is None
                else {
                    "node_id": leader.node_id,
                    "priority": leader.priority,
                    "host": leader.host,
                    "port": leader.port,
                },
                "reason": event.reason,
                "error": None if event.error is None else repr(event.error),
            }
        )
    if leader is None:
        who = "no leader"
    elif leader.node_id == elector.node_id:
        who = "leader this node"
    else:
        who = f"leader {leader.node_id} at {leader.host}:{leader.port}"
    text = (
        f"{now:%H:%M:%S.%f}"[:-3]
        + f" {event.kind:<10} {event.state.value:<8} term {event.term:<4} {who} ({event.reason})"
    )
    if event.error is not None:
        text += f": {event.error!r}"
    return text
