"""Crash failover in the namespace lab, round by round, with the timeline of each failover.

Each round starts N fresh node processes (one per lab host, mDNS mode unless ``--peers``),
waits until all agree on one leader, waits ``--settle`` seconds, SIGKILLs the leader and waits
until the N-1 survivors agree on another: the same measure as ``benchmarks/election.py``'s
crash failover, without its handovers (at 30 nodes its ``resign()`` phase may time out, which
ends the run before it prints anything). For each round it prints, in ms after the SIGKILL:

* ``gave up``: the first and last survivor's ``reelection`` (its leader unreachable: the
  last beat it heard plus the failure window), and how many reelections there were (N-1
  when nothing else happened);
* ``claim``: the successor's ``leader`` event; ``last follower``: the last survivor's
  ``follower`` event of the new term, which ends the failover;
* any other reason of a role event after the SIGKILL (``leader stepped down``: a follower
  took a datagram of its leader for a step-down).

It imports the package and ``tests/`` of ``--tree`` (default: this checkout), so that two
codes can be measured one after the other on the same machine::

    python benchmarks/failover.py --rounds 10 --nodes 30
    python benchmarks/failover.py --rounds 10 --nodes 30 --tree /path/to/other/checkout

Run as root (it creates network namespaces; all traffic stays inside them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def one_round(lab: Any, hosts: list[Any], options: dict[str, Any], settle: float) -> dict[str, Any]:
    from cluster import Cluster

    cluster = Cluster(lab)
    try:
        processes = [cluster.spawn(host, options=options, wait_go=True) for host in hosts]
        cluster.wait_ready(60)
        for process in processes:
            process.send("go")
        first = cluster.wait_agreement(timeout=30)
        threading.Event().wait(settle)
        t_kill = cluster.process_of(first.leader).kill()
        second = cluster.wait_agreement(timeout=30, other_than=first.leader, after_term=first.term)
        with cluster.changed:
            records = [dict(r) for p in cluster.processes for r in p.records if r.get("t", 0.0) >= t_kill]
        after = [r for r in records if r["kind"] in ("reelection", "follower", "leader")]
        gave_up = sorted(r["t"] - t_kill for r in after if r["kind"] == "reelection")
        return {
            "total": second.time - t_kill,
            "after_agreement": t_kill - first.time,
            "gave_up": gave_up,
            "claim": min(r["t"] - t_kill for r in after if r["kind"] == "leader" and r["term"] == second.term),
            "last_follower": max(
                r["t"] - t_kill for r in after if r["kind"] == "follower" and r["term"] == second.term
            ),
            "other_reasons": sorted(
                {r["reason"] for r in after} - {"leader unreachable", "claimed leadership", "found the leader"}
            ),
            "events": [
                {k: r.get(k) for k in ("node", "kind", "term", "leader", "reason")} | {"t": r["t"] - t_kill}
                for r in after
            ],
        }
    finally:
        cluster.finish()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--settle", type=float, default=0.0, help="seconds from agreement to SIGKILL (default 0)")
    parser.add_argument("--peers", action="store_true", help="unicast mode: every node's address listed")
    parser.add_argument("--tree", default=os.path.dirname(HERE), help="checkout whose package and tests run")
    parser.add_argument("--json", help="write every round's figures and role events here")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(os.path.abspath(args.tree), "tests"))
    from netlab import Lab, lab_unavailable_reason

    reason = lab_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}")
        return 2
    rows: list[dict[str, Any]] = []
    with Lab() as lab:
        hosts = [lab.add_host(f"n{i}") for i in range(args.nodes)]
        options: dict[str, Any] = {}
        if args.peers:
            lab.block_multicast()
            options["peers"] = [f"{host.address}:9001" for host in hosts]
        for number in range(1, args.rounds + 1):
            row = one_round(lab, hosts, options, args.settle)
            rows.append(row)
            gave_up = row["gave_up"] or [float("nan")]
            print(
                f"round {number:2d}: failover {row['total'] * 1000:6.0f}  gave up {gave_up[0] * 1000:5.0f}.."
                f"{gave_up[-1] * 1000:5.0f} ({len(row['gave_up'])})  claim {row['claim'] * 1000:5.0f}  "
                f"last follower {row['last_follower'] * 1000:5.0f}  (SIGKILL {row['after_agreement'] * 1000:4.0f} ms "
                f"after agreement)  {', '.join(row['other_reasons'])}",
                flush=True,
            )
    totals = [row["total"] for row in rows]
    spreads = [row["last_follower"] - row["claim"] for row in rows]
    print(
        f"{args.rounds} rounds, {args.nodes} nodes, {'unicast' if args.peers else 'mDNS'}, settle {args.settle} s, "
        f"tree {os.path.abspath(args.tree)}"
    )
    print(
        f"failover p50 {statistics.median(totals) * 1000:.0f} ms, p90 {percentile(totals, 90) * 1000:.0f} ms, "
        f"max {max(totals) * 1000:.0f} ms; claim p50 {statistics.median(r['claim'] for r in rows) * 1000:.0f} ms; "
        f"claim to last follower p50 {statistics.median(spreads) * 1000:.0f} ms, max {max(spreads) * 1000:.0f} ms; "
        f"rounds with other reasons: {sum(1 for r in rows if r['other_reasons'])}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
