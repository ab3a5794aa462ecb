"""Record and check the fault simulator's full traces, to prove a refactoring keeps behaviour.

    python benchmarks/trace.py --record [--seeds 2000] [--jobs 2]   # write the digest file
    python benchmarks/trace.py --check [--seeds 50] [--jobs 2]      # compare with it
    python benchmarks/trace.py --show 42 --mode quorum > seed42.txt # one whole trace

For each seed, with and without quorum mode, it plays exactly the schedule of
``benchmarks/simulate.py`` with a recorder on the simulated network (``tests/simtrace.py``):
every event delivered to callbacks, every datagram sent, dropped, queued and delivered, every
record published, every tick and fault, each with its time on the fake clock. The sha256 of
each seed's trace goes to ``benchmarks/results/sim-traces.sha256`` (``seed mode sha256``
lines, then ``total sha256``).

``--check`` recomputes the recorded seeds (or the first ``--seeds`` of each mode) and lists
those whose trace differs: exit status 1 if any does. ``--record`` prints, as well, the seeds
whose digest differs from the file it replaces. To see why a seed differs, run ``--show`` for
it before and after the change (in two worktrees) and ``diff`` the outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# This checkout's tests and package first: in a worktree, trace its machine, not the one an
# editable install points at.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import followtheleader

from simtrace import DIGESTS, MODES, Digests, compute, differences, format_file, read_file, total_digest, trace_lines

DEFAULT_SEEDS = 2000


def run(tasks: list[tuple[int, str]], jobs: int) -> tuple[Digests, float]:
    """The digests of ``tasks`` and the seconds they took, with a progress line on stderr."""
    digests: Digests = {}
    began = time.perf_counter()
    for done, (seed, mode, digest) in enumerate(compute(tasks, jobs), 1):
        digests[(seed, mode)] = digest
        if sys.stderr.isatty() and (done % 100 == 0 or done == len(tasks)):
            print(f"\r{done}/{len(tasks)} traces", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return digests, time.perf_counter() - began


def print_differences(keys: list[tuple[int, str]], recorded: Digests, limit: int = 200) -> None:
    for seed, mode in keys[:limit]:
        state = "differs" if (seed, mode) in recorded else "not recorded"
        print(f"{seed} {mode} {state}: python benchmarks/trace.py --show {seed} --mode {mode}")
    if len(keys) > limit:
        print(f"... and {len(keys) - limit} more")
    for mode in MODES:
        seeds = [seed for seed, m in keys if m == mode]
        if seeds:
            print(f"{mode}: {len(seeds)} seeds differ: {' '.join(map(str, seeds))}")


def ranges_of(recorded: Digests, new: Digests, mode: str) -> str:
    """The seeds of ``mode`` in the file to be written, as ``first..last``."""
    seeds = sorted(s for s, m in (new if any(m == mode for _, m in new) else recorded) if m == mode)
    return f"{seeds[0]}..{seeds[-1]}" if seeds else "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", action="store_true", help="compute the digests and write the file")
    action.add_argument("--check", action="store_true", help="compare the digests with the file")
    action.add_argument("--show", type=int, metavar="SEED", help="print the whole trace of one seed")
    parser.add_argument(
        "--mode", choices=[*MODES, "both"], default=None, help="one mode, or both: every mode (default)"
    )
    parser.add_argument("--seeds", type=int, help=f"seeds per mode (record: {DEFAULT_SEEDS}; check: all recorded)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--file", default=DIGESTS, help="the digest file (default: %(default)s)")
    args = parser.parse_args(argv)
    modes = list(MODES) if args.mode in (None, "both") else [args.mode]

    if args.show is not None:
        if args.mode in (None, "both"):
            parser.error("--show needs --mode (one of: " + ", ".join(MODES) + ")")
        for line in trace_lines(args.show, args.mode):
            print(line)
        return 0

    recorded: Digests = {}
    recorded_total = None
    if os.path.exists(args.file):
        recorded, recorded_total = read_file(args.file)
    elif args.check:
        print(f"no digest file {args.file}: record it first (--record)")
        return 2

    if args.record:
        count = args.seeds if args.seeds is not None else DEFAULT_SEEDS
        tasks = [(seed, mode) for mode in modes for seed in range(args.start, args.start + count)]
    elif args.seeds is not None:
        tasks = [(seed, mode) for mode in modes for seed in range(args.start, args.start + args.seeds)]
    else:
        tasks = sorted((key for key in recorded if key[1] in modes and key[0] >= args.start), key=lambda k: k[::-1])
    print(f"tracing the machine of {os.path.dirname(os.path.abspath(followtheleader.__file__))}")
    digests, took = run(tasks, args.jobs)
    rate = len(tasks) / took if took else 0.0
    print(f"{len(tasks)} traces in {took:.1f} s ({rate:.1f} per second, {args.jobs} job(s))")
    changed = differences(recorded, digests)

    if args.record:
        seeds = {mode: sorted(s for s, m in digests if m == mode) for mode in modes}
        ranges = ", ".join(f"{mode} {s[0]}..{s[-1]}" for mode, s in seeds.items() if s)
        header = [
            "sha256 of the fault simulator's full trace of each seed (tests/simtrace.py):",
            f"python benchmarks/trace.py --record --seeds {len(tasks) // len(modes)} ({ranges}).",
            "Check with: python benchmarks/trace.py --check",
        ]
        if args.mode not in (None, "both"):
            # One mode is (re)recorded: the others keep their digests, which --check proves
            # (the file must not mix versions of the machine: check them first).
            header[1] = "python benchmarks/trace.py --record --seeds N --mode M, one mode at a time:"
            header.insert(2, "; ".join(f"{m} {ranges_of(recorded, digests, m)}" for m in MODES))
            digests = {**{k: v for k, v in recorded.items() if k[1] not in modes}, **digests}
        with open(args.file, "w", encoding="ascii") as file:
            file.write(format_file(digests, header))
        print(f"wrote {args.file}: total {total_digest(digests)}")
        if recorded:
            common = [key for key in changed if key in recorded]
            print(f"{len(common)} of the {len(digests)} traces differ from the file replaced")
            print_differences(common, recorded)
        return 0

    whole = set(digests) == set(recorded)
    if whole:
        print(f"total {total_digest(digests)} (recorded {recorded_total})")
    if changed:
        print(f"{len(changed)} of {len(digests)} traces differ from {args.file}:")
        print_differences(changed, recorded)
        return 1
    if whole and recorded_total != total_digest(digests):
        print("every seed matches but the recorded total does not: the file was edited by hand")
        return 1
    print(f"all {len(digests)} traces match the recorded digests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
