"""Run the deterministic fault simulator (``tests/simfuzz.py``) over many seeds.

    python benchmarks/simulate.py --seeds 1000 [--start 0] [--quorum | --no-quorum]
    python benchmarks/simulate.py --seed 42 [--keep 0,3]      # replay one seed verbosely

For many seeds it prints the seeds per second and, for every failing seed, the violated
invariant and a shrunk schedule (with the ``--seed N --keep ...`` line that replays it).
One seed is replayed with every fault and every event printed. Exit status 1 when a seed
failed. Pure computation on a fake clock: no network, no root.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from simfuzz import VERSIONS, Result, faults_of, generate, run_schedule, shrink


def report_failure(result: Result, quorum: bool | None, do_shrink: bool, version: str = "0.2") -> None:
    assert result.violation is not None
    schedule = result.schedule
    print(f"FAIL seed {schedule.seed}: {result.violation}")
    shrunk = shrink(result) if do_shrink else result
    keep = ",".join(str(i) for i in faults_of(schedule, shrunk.schedule))
    print(f"  shrunk to {len(shrunk.schedule.faults)} of {len(schedule.faults)} faults: {shrunk.violation}")
    for line in shrunk.schedule.describe().splitlines():
        print(f"  {line}")
    flag = {True: " --quorum", False: " --no-quorum", None: ""}[quorum]
    flag += f" --version {version}" if version != "0.2" else ""
    print(f"  replay: python benchmarks/simulate.py --seed {schedule.seed}{flag} --keep '{keep}'", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="replay this one seed verbosely")
    parser.add_argument("--keep", help="with --seed: keep only these faults (indices, comma-separated)")
    parser.add_argument("--no-shrink", action="store_true", help="report failures without shrinking them")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quorum", dest="quorum", action="store_true", default=None, help="quorum mode only")
    mode.add_argument("--no-quorum", dest="quorum", action="store_false", help="without quorum only")
    parser.add_argument(
        "--version", choices=VERSIONS, default="0.2", help="protocol of the nodes: 0.2's, 0.3's, or mixed"
    )
    args = parser.parse_args(argv)

    if args.seed is not None:
        schedule = generate(args.seed, args.quorum, version=args.version)
        if args.keep is not None:
            schedule = schedule.keep(int(i) for i in args.keep.split(",") if i.strip())
        print(schedule.describe())
        result = run_schedule(schedule, verbose=True)
        print("\n".join(result.log))
        print(f"{'FAIL' if result.violation else 'ok'}: {result.violation or 'every invariant held'}")
        print(f"simulated {result.simulated:.1f} s, {result.sent} datagrams")
        return 1 if result.violation else 0

    failures = 0
    simulated = 0.0
    began = time.perf_counter()
    for seed in range(args.start, args.start + args.seeds):
        result = run_schedule(generate(seed, args.quorum, version=args.version))
        simulated += result.simulated
        if result.violation is not None:
            failures += 1
            report_failure(result, args.quorum, not args.no_shrink, args.version)
    took = time.perf_counter() - began
    print(
        f"{args.seeds} seeds ({args.start}..{args.start + args.seeds - 1}) in {took:.1f} s:"
        f" {args.seeds / took:.1f} seeds/s, {simulated:.0f} s simulated, {failures} failed"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
