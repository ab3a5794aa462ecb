"""Soak under packet loss: role changes per hour at 0, 10, 20 and 30 % random loss.

For each loss level, a fresh group of N node processes (one per lab host) elects a leader;
then every node's outgoing datagrams are dropped at random with that probability (an
nftables rule on its bridge port) for the soak period, and every role event is counted. At
the end the loss is removed and the group must agree on one leader again.

Run as root (it creates network namespaces; all traffic stays inside them)::

    python benchmarks/soak.py --nodes 3 --seconds 300
"""

from __future__ import annotations

import contextlib
import sys
import time

from _common import argument_parser, ready_to_run

from cluster import Cluster
from netlab import Lab


def soak(lab: Lab, hosts: list, loss: int, seconds: float) -> dict[str, float]:
    cluster = Cluster(lab)
    try:
        for index, host in enumerate(hosts):
            cluster.spawn(host, node_ids=[f"node-{index}"])
        first = cluster.wait_agreement(timeout=30)
        lab.set_faults(loss={host.name: loss for host in hosts})
        started = time.monotonic()
        with cluster.changed:
            before = len(cluster.all_events_locked())
        with contextlib.suppress(TimeoutError):
            cluster.wait(lambda: False, seconds, "the end of the soak")
        with cluster.changed:
            events = cluster.all_events_locked()[before:]
        lab.set_faults()
        healed = time.monotonic()
        final = cluster.wait_agreement(timeout=30)
        return {
            "loss": loss,
            "seconds": healed - started,
            "role_events": len(events),
            "leader_events": sum(1 for e in events if e["kind"] == "leader"),
            "same_leader": float(final.leader == first.leader and final.term == first.term),
        }
    finally:
        lab.set_faults()
        cluster.finish()


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=300.0, help="soak time per loss level")
    parser.add_argument("--losses", default="0,10,20,30", help="comma-separated loss percentages")
    args = parser.parse_args()
    if not ready_to_run():
        return 2
    rows = []
    with Lab() as lab:
        hosts = [lab.add_host(f"s{i}") for i in range(args.nodes)]
        for loss in (int(x) for x in args.losses.split(",")):
            row = soak(lab, hosts, loss, args.seconds)
            rows.append(row)
            print(
                f"loss {loss:3d}%: {row['seconds']:.0f} s, {row['role_events']} role events, "
                f"{row['leader_events']} new leaders, same leader at the end: {bool(row['same_leader'])}",
                flush=True,
            )
    print()
    print(f"{args.nodes} nodes, default settings, {args.seconds:.0f} s per loss level")
    print(f"{'loss':>5s} {'role changes/hour':>18s} {'new leaders/hour':>17s} {'same leader after':>18s}")
    for row in rows:
        hours = row["seconds"] / 3600
        print(
            f"{row['loss']:4d}% {row['role_events'] / hours:18.1f} {row['leader_events'] / hours:17.1f} "
            f"{'yes' if row['same_leader'] else 'no':>18s}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
