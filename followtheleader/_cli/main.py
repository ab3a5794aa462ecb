"""The command line: ``followtheleader elect``, ``status`` and ``run``.

Everything here runs on the main thread: it parses the arguments and hands over to the
subcommand. ``elect`` is here; ``status`` is in :mod:`.status` and ``run`` in
:mod:`followtheleader._cli.runner`. SIGINT and SIGTERM only put the signal into a queue (see
:func:`followtheleader._cli.console.catch_signals`); the main thread then stops the elector gracefully (a
leader hands over) and the command exits 0.

Bad arguments give a one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import queue
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .._coordinators.base import COORDINATOR_ENVIRONMENT_VARIABLE, parse_coordinator
from .._coordinators.survey import coordinator_status
from .._core.status import GroupView
from .._elector import Elector, elect
from .._lan.peers import PeerEntry
from .._lan.survey import DEFAULT_TIMEOUT, survey, survey_peers
from .._options import parse_options
from .._runtime.callbacks import EVENT_KINDS
from .console import Console, catch_signals
from .runner import ON_EXIT_CHOICES, Runner
from .status import format_table, to_json

__all__ = ["main"]

_EXAMPLES = """examples:
  followtheleader elect MyService
  followtheleader status
  followtheleader run MyService -- python scheduler.py --verbose
"""

_ELECT_EXAMPLES = """examples:
  followtheleader elect MyService
  followtheleader elect MyService --priority 10 --interval 0.1
  followtheleader elect MyService --peers dns:myservice-peers.default.svc.cluster.local
  followtheleader elect MyService --json | jq .
"""

_STATUS_EXAMPLES = """The records nodes publish through DNS-SD are a hint (a node's record says what it was doing
when it last published). Unless --no-ping is given, the leader a group's records name is asked
directly with one heartbeat ping; it counts as leader only if it answers as leader.

exit status: 0, or 1 when NAME is given and that group has no (live) leader.

examples:
  followtheleader status
  followtheleader status MyService --timeout 3
  followtheleader status MyService --peers 10.0.0.5,10.0.0.6:9001
  followtheleader status MyService --json | jq '.groups[0].leader'
  followtheleader status MyService >/dev/null && echo "MyService has a leader"
  followtheleader status --coordinator zookeeper://zk1:2181,zk2:2181/followtheleader
"""

_RUN_EXAMPLES = """CMD starts when this node becomes leader, with FOLLOWTHELEADER_FENCING_TOKEN (the key of this
leadership's fencing token: 104 hex digits, greater for every newer leadership, to be compared
as strings by the shared resource), FOLLOWTHELEADER_TERM, FOLLOWTHELEADER_NODE_ID and
FOLLOWTHELEADER_NAME in its environment. When the node stops leading, CMD's process group
gets SIGTERM, then SIGKILL after --grace seconds. SIGINT or SIGTERM to this command stops CMD
the same way, then hands leadership over and exits 0. If this command dies, CMD gets SIGKILL
from the kernel. Its own lines go to stderr; CMD keeps stdin, stdout and stderr.

examples:
  followtheleader run MyService -- python manage.py run_scheduler
  followtheleader run MyService --grace 30 --on-exit restart -- ./worker.sh --queue main
  followtheleader run MyService --on-exit exit -- sh -c 'backup.sh "$FOLLOWTHELEADER_FENCING_TOKEN"'
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


@dataclass(frozen=True)
class _ElectorOption:
    """A command-line option that becomes the ``elect()`` keyword ``option``.

    ``type`` turns the text into the value (raising ``argparse.ArgumentTypeError`` or
    ``ValueError`` for a bad one); ``elect()`` validates the value itself.
    """

    flag: str
    option: str
    type: Callable[[str], Any]
    metavar: str
    help: str


ELECTOR_OPTIONS: tuple[_ElectorOption, ...] = (
    _ElectorOption("--port", "port", int, "PORT", "UDP heartbeat port (default 9001, or any free one)"),
    _ElectorOption("--host", "host", str, "ADDRESS", "address to bind the heartbeat socket to (default 0.0.0.0)"),
    _ElectorOption("--priority", "priority", int, "N", "higher is preferred as leader (default 0)"),
    _ElectorOption("--interval", "interval", float, "SECONDS", "seconds between heartbeats (default 0.2)"),
    _ElectorOption(
        "--max-failed-responses", "max_failed_responses", int, "N", "missed heartbeats before failover (default 3)"
    ),
    _ElectorOption("--node-id", "node_id", str, "ID", "this node's id (default: random)"),
    _ElectorOption("--type", "type", str, "LABEL", "DNS-SD service label (default ftl: _ftl._udp.local.)"),
    _ElectorOption("--quorum", "quorum", int, "N", "expected group size: lead only while seeing a majority of N"),
    _ElectorOption(
        "--coordinator",
        "coordinator",
        str,
        "URL",
        "hold the leadership in ZooKeeper or etcd instead of mDNS: zookeeper://HOST:2181,.../PREFIX or"
        " etcd://HOST:2379,... (default: $FOLLOWTHELEADER_COORDINATOR, else mDNS)",
    ),
    _ElectorOption(
        "--coordinator-ttl", "coordinator_ttl", float, "SECONDS", "with --coordinator: session/lease TTL (default 10)"
    ),
    _ElectorOption(
        "--peers",
        "peers",
        str,
        "LIST",
        "unicast mode, no mDNS: 'host[:port],...' or 'dns:NAME' (default: $FOLLOWTHELEADER_PEERS, else mDNS)",
    ),
    _ElectorOption(
        "--secret-file",
        "secret",
        lambda path: _read_secret(path),
        "PATH",
        "file holding the group's shared secret (default: $FOLLOWTHELEADER_SECRET, else an open group)",
    ),
)
"""The election options of ``elect`` and ``run``; a new one is one more entry here."""

Handler = Callable[[argparse.Namespace, _Parser, "list[str] | None"], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``followtheleader`` console script and ``python -m followtheleader``."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    # ``run NAME [options] -- CMD ...``: everything after the first "--" is CMD.
    head, command = arguments, None
    if "--" in arguments:
        split = arguments.index("--")
        head, command = arguments[:split], arguments[split + 1 :]
    args, unknown = parser.parse_known_args(head)
    if args.command != "run" and command is not None:
        args, command = parser.parse_args(arguments), None  # elsewhere "--" means what it means to argparse
    elif unknown:
        hint = " (CMD goes after '--')" if args.command == "run" else ""
        (args.parser if args.command else parser).error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    if args.command is None:
        parser.error("a command is required: elect, status or run")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Handler = args.handler
    return handler(args, args.parser, command)


def _parser() -> _Parser:
    parser = _Parser(
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
        epilog=_ELECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    elect_parser.add_argument("name", metavar="NAME", help="the group name")
    _add_elector_options(elect_parser)
    _add_metrics_options(elect_parser)
    elect_parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    elect_parser.set_defaults(handler=_elect, parser=elect_parser)

    status_parser = commands.add_parser(
        "status",
        help="list the groups on this network, their leaders and members",
        description="List every group on this network segment (or only NAME): its leader, term, fencing token"
        " and members.",
        epilog=_STATUS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status_parser.add_argument("name", metavar="NAME", nargs="?", help="only this group")
    status_parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to collect DNS-SD records (default {DEFAULT_TIMEOUT:g})",
    )
    status_parser.add_argument("--type", metavar="LABEL", help="DNS-SD service label (default ftl)")
    status_parser.add_argument(
        "--no-ping", action="store_true", help="trust the DNS-SD records; do not ask the leader whether it leads"
    )
    status_parser.add_argument(
        "--coordinator",
        metavar="URL",
        default=os.environ.get(COORDINATOR_ENVIRONMENT_VARIABLE) or None,
        help="list the groups held in this ZooKeeper or etcd instead (default: $FOLLOWTHELEADER_COORDINATOR)",
    )
    status_parser.add_argument(
        "--peers",
        metavar="LIST",
        help="ask the nodes at these addresses instead of browsing mDNS: 'host[:port],...' or 'dns:NAME'"
        " (needs NAME; default: $FOLLOWTHELEADER_PEERS)",
    )
    status_parser.add_argument("--json", action="store_true", help="print one JSON object")
    status_parser.set_defaults(handler=_status, parser=status_parser)

    run_parser = commands.add_parser(
        "run",
        help="run a command only while this node leads",
        usage="%(prog)s [-h] [options] NAME -- CMD [ARGS...]",
        description="Join group NAME and run CMD only while this node is its leader (one CMD in the whole group).",
        epilog=_RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_parser.add_argument("name", metavar="NAME", help="the group name")
    _add_elector_options(run_parser)
    _add_metrics_options(run_parser)
    run_parser.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="seconds between SIGTERM and SIGKILL when CMD is stopped (default 10)",
    )
    run_parser.add_argument(
        "--on-exit",
        choices=ON_EXIT_CHOICES,
        default="resign",
        help="when CMD exits by itself: resign (default: another node takes over), restart it (at most once"
        " a second), or exit with its status",
    )
    run_parser.add_argument("--json", action="store_true", help="print one JSON object per line (on stderr)")
    run_parser.set_defaults(handler=_run, parser=run_parser)
    return parser


def _add_elector_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("election options")
    for option in ELECTOR_OPTIONS:
        group.add_argument(option.flag, dest=option.option, type=option.type, metavar=option.metavar, help=option.help)


def _add_metrics_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metrics options (need the [prometheus] extra)")
    group.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus /metrics on this port")
    group.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address to serve /metrics on (default 127.0.0.1: this host only; 0.0.0.0 for all)",
    )


@contextlib.contextmanager
def _metrics(args: argparse.Namespace, elector: Elector) -> Iterator[None]:
    """Main thread: serve the elector's /metrics while the body runs, if --metrics-port asks."""
    if args.metrics_port is None:
        yield
        return
    try:
        from ..metrics import serve_metrics
    except ImportError as exc:
        raise OSError(str(exc)) from exc
    server = serve_metrics([elector], args.metrics_port, args.metrics_address)
    try:
        yield
    finally:
        server.stop()


def _make_elector(args: argparse.Namespace, parser: _Parser) -> Elector:
    """The elector the election options ask for; a bad value is an argument error."""
    options = {o.option: getattr(args, o.option) for o in ELECTOR_OPTIONS if getattr(args, o.option) is not None}
    try:
        return elect(args.name, **options)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))


def _read_secret(path: str) -> bytes:
    """The secret in a file, without a trailing newline (argparse type; never shows it)."""
    try:
        with open(path, "rb") as file:
            secret = file.read().rstrip(b"\r\n")
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read the secret file {path}: {exc.strerror}") from None
    if not secret:
        raise argparse.ArgumentTypeError(f"the secret file {path} is empty")
    return secret


def _seconds(text: str) -> float:
    """A number of seconds, 0 or more (argparse type)."""
    return _parse_seconds(text, allow_zero=True)


def _positive_seconds(text: str) -> float:
    """A number of seconds greater than 0 (argparse type)."""
    return _parse_seconds(text, allow_zero=False)


def _parse_seconds(text: str, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        wanted = "0 or more" if allow_zero else "greater than 0"
        raise argparse.ArgumentTypeError(f"must be a number of seconds {wanted}, not {text!r}")
    return value


# --------------------------------------------------------------------- subcommands


def _elect(args: argparse.Namespace, parser: _Parser, command: list[str] | None) -> int:
    """``elect``: print each event until SIGINT or SIGTERM, then hand over and exit 0."""
    elector = _make_elector(args, parser)
    # Readable output starts with "joined group ...", which names the port chosen at start:
    # events reported while the elector starts wait for it.
    console = Console(sys.stdout, elector.node_id, args.json, hold_events=not args.json)
    for kind in EVENT_KINDS:
        elector.on(kind, console.event)
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()
    with catch_signals(signals.put), contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_metrics(args, elector))
            elector.start()
        except OSError as exc:
            print(f"followtheleader: {exc}", file=sys.stderr)
            return 1
        try:
            if not args.json:
                where = elector.describe().text
                console.release(f"joined group {elector.name!r} as node {elector.node_id} ({where})")
            signals.get()
        finally:
            console.release()
            elector.stop()
    return 0


def _status(args: argparse.Namespace, parser: _Parser, command: list[str] | None) -> int:
    """``status``: print the groups; exit 1 when the group NAME has no (live) leader."""
    found = _survey(args, parser)
    if found is None:
        return 1
    groups, key, where = found
    if args.json:
        print(json.dumps(to_json(groups, key, where)), flush=True)
    else:
        print(format_table(groups, where), flush=True)
    if args.name is None:
        return 0
    return 0 if any(group.leader is not None for group in groups) else 1


def _survey(args: argparse.Namespace, parser: _Parser) -> tuple[list[GroupView], str, str] | None:
    """The groups ``status`` asked for, the JSON key that says what was surveyed, and what
    was (``_ftl._udp.local.``, ``peers ...``, a coordinator URL); None after an error said
    on stderr."""
    if args.coordinator:
        try:
            groups = coordinator_status(args.coordinator, args.name)
            url = parse_coordinator(args.coordinator).url  # password masked
        except (TypeError, ValueError) as exc:
            parser.error(str(exc))
        except OSError as exc:
            print(f"followtheleader: {exc}", file=sys.stderr)
            return None
        return groups, "coordinator", url
    given: dict[str, Any] = {} if args.type is None else {"type": args.type}
    if args.peers is not None:
        given["peers"] = args.peers
    try:
        options = parse_options(args.name or "status", **given)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if options.peers is not None:
        if args.name is None:
            parser.error("status with peers needs the group NAME (the nodes are asked about it)")
        addresses = _resolve_peers(options.peers)
        return [survey_peers(args.name, addresses)], "service_type", "peers " + ",".join(e.text for e in options.peers)
    try:
        groups = survey(options.service_type, args.timeout, args.name, ping=not args.no_ping)
    except OSError as exc:
        print(f"followtheleader: cannot browse {options.service_type}: {exc}", file=sys.stderr)
        return None
    return groups, "service_type", options.service_type


def _resolve_peers(entries: Sequence[PeerEntry]) -> list[tuple[str, int]]:
    """The IPv4 addresses of a peer list (a name that does not resolve is said on stderr)."""
    found: list[tuple[str, int]] = []
    for entry in entries:
        try:
            infos = socket.getaddrinfo(entry.host, entry.port, socket.AF_INET, socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            print(f"followtheleader: cannot resolve the peer name {entry.host!r}: {exc}", file=sys.stderr)
            continue
        found.extend((str(info[4][0]), entry.port) for info in infos if (str(info[4][0]), entry.port) not in found)
    return found


def _run(args: argparse.Namespace, parser: _Parser, command: list[str] | None) -> int:
    """``run``: run CMD while this node leads (see :class:`followtheleader._cli.runner.Runner`)."""
    if not command:
        parser.error("give the command to run after '--', as in: followtheleader run NAME -- CMD [ARGS...]")
    if shutil.which(command[0]) is None:
        parser.error(f"command not found or not executable: {command[0]!r}")
    elector = _make_elector(args, parser)
    console = Console(sys.stderr, elector.node_id, args.json)
    try:
        with _metrics(args, elector):
            return Runner(elector, command, args.grace, args.on_exit, console).run()
    except OSError as exc:
        print(f"followtheleader: {exc}", file=sys.stderr)
        return 1
