"""Idle load on the coordination service: requests per second that one idle member costs.

For each ``--backend`` (any backend ``tests/coordservers.py``'s :class:`ServerSet` knows), it
starts one server in a lab host, then N member processes of one group (one per lab host),
waits until they agree on a leader and for a few renewals more, and reads the server's own
request counter (:meth:`ServerSet.requests_served`: ZooKeeper's ``srvr`` ``Received``,
etcd's ``grpc_server_started_total``) before and after a quiet window in which nothing
happens. It prints the requests per second per member.

Run as root (it creates network namespaces; all traffic stays inside them)::

    python benchmarks/idle_load.py --backend zookeeper --backend etcd --nodes 5 --quiet 30
"""

from __future__ import annotations

import sys
import time

from _common import argument_parser, ready_to_run

from cluster import Cluster
from coordservers import ServerSet, unavailable_reason
from netlab import Lab


def idle_rate(lab: Lab, backend: str, nodes: int, quiet: float, ttl: float | None) -> float:
    """Requests per second per idle member of ``backend``'s server, over ``quiet`` seconds."""
    servers = ServerSet(backend, [lab.add_host(f"{backend[:3]}srv")])
    try:
        options: dict[str, object] = {"coordinator": servers.start().url}
        if ttl is not None:
            options["coordinator_ttl"] = ttl
        hosts = [lab.add_host(f"{backend[:3]}{i}") for i in range(nodes)]
        cluster = Cluster(lab)
        try:
            cluster.start_together(hosts, options=options)
            cluster.wait_agreement(timeout=60)
            # A benchmark: let the first two renewal periods pass (the longest is Redis's, 0.6
            # TTL), so that the window sees the steady state: a Redis follower's reads fall in
            # step with the leader's expiry times once (one read earlier than its period, once).
            time.sleep(2 * (ttl or 10.0) * 0.6)
            before, started = servers.requests_served(), time.monotonic()
            time.sleep(quiet)
            after, ended = servers.requests_served(), time.monotonic()
            return (after - before) / (ended - started) / nodes
        finally:
            cluster.finish()
    finally:
        servers.close()


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--backend", action="append", default=None, help="a ServerSet backend (repeatable)")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--quiet", type=float, default=30.0, help="seconds of the quiet window")
    parser.add_argument("--coordinator-ttl", type=float, default=None, metavar="SECONDS")
    args = parser.parse_args()
    if not ready_to_run():
        return 2
    backends = args.backend or ["zookeeper", "etcd"]
    ttl = "default" if args.coordinator_ttl is None else f"{args.coordinator_ttl:g} s"
    print(f"{args.nodes} idle members, quiet window {args.quiet:g} s, ttl {ttl}")
    for backend in backends:
        if reason := unavailable_reason(backend):
            print(f"{backend:12s} skipped: {reason}")
            continue
        with Lab() as lab:
            rate = idle_rate(lab, backend, args.nodes, args.quiet, args.coordinator_ttl)
        print(f"{backend:12s} {rate:6.2f} requests/s per member", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
