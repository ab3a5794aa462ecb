"""The recorded simulator traces (``benchmarks/results/sim-traces.sha256``) still match.

The file holds the sha256 of the full trace (``tests/simtrace.py``) of thousands of seeds;
here only the first :data:`CI_SEEDS` of each mode are checked, so that an accidental change
of behaviour shows up cheaply. A deliberate one (a bug fix) is re-recorded with
``python benchmarks/trace.py --record --jobs 2``, and the seeds it lists as changed are named,
with the reason, in the commit.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from followtheleader._core.machine import Machine
from followtheleader._core.node import Role

from simfuzz import Run, generate, run_seed
from simtrace import (
    DIGESTS,
    MODES,
    Recorder,
    TracedRun,
    differences,
    parse_file,
    total_digest,
    trace_digest,
    trace_lines,
)

CI_SEEDS = 50
"""Seeds per mode checked against the digest file: about 10 s in all on this 2-core machine
(20 s while lab tests run)."""

TRACE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "trace.py")


def recorded() -> tuple[dict[tuple[int, str], str], str | None]:
    with open(DIGESTS, encoding="ascii") as file:
        return parse_file(file.read())


def test_the_digest_file_is_whole_and_consistent() -> None:
    digests, total = recorded()
    for mode in MODES:
        seeds = sorted(seed for seed, m in digests if m == mode)
        assert seeds == list(range(len(seeds))) and len(seeds) >= CI_SEEDS, mode
    assert total == total_digest(digests), "the total does not match the seeds' lines: re-record the file"


@pytest.mark.parametrize("mode", list(MODES))
def test_the_first_seeds_give_the_recorded_traces(mode: str) -> None:
    digests, _ = recorded()
    computed = {(seed, mode): trace_digest(seed, mode) for seed in range(CI_SEEDS)}
    changed = differences(digests, computed)
    shown = "\n".join(f"    python benchmarks/trace.py --show {seed} --mode {mode}" for seed, _ in changed[:10])
    assert not changed, (
        f"{len(changed)} of the first {CI_SEEDS} {mode} seeds behave differently from the recorded traces"
        f" (seeds {[seed for seed, _ in changed]}). If the change of behaviour is deliberate, re-record with"
        f" 'python benchmarks/trace.py --record --jobs 2' (or with --mode {mode} alone) and list the changed seeds;"
        f" else compare a trace"
        f" with the one before the change:\n{shown}"
    )


@pytest.mark.parametrize("mode", list(MODES))
def test_a_seed_gives_the_same_trace_twice(mode: str) -> None:
    first, second = trace_lines(17, mode), trace_lines(17, mode)
    assert first == second
    assert len(first) > 500 and any(" action " in line for line in first) and any(" send " in line for line in first)


def test_the_trace_does_not_depend_on_the_hash_seed() -> None:
    """The same trace in processes with different ``PYTHONHASHSEED`` (sets iterate in another
    order there)."""
    for mode in MODES:
        outputs = set()
        for hash_seed in ("1", "2"):
            env = {**os.environ, "PYTHONHASHSEED": hash_seed}
            done = subprocess.run(
                [sys.executable, TRACE, "--show", "240", "--mode", mode],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            outputs.add(done.stdout)
        assert len(outputs) == 1, mode


def test_recording_only_observes() -> None:
    """A run with the recorder gives the same result and the same events as one without."""
    for seed, quorum in ((3, False), (5, True)):
        plain = Run(generate(seed, quorum))
        plain_result = plain.play()
        lines: list[str] = []
        traced = TracedRun(generate(seed, quorum), Recorder(lines.append))
        traced_result = traced.play()
        assert str(plain_result.violation) == str(traced_result.violation)
        assert (plain_result.simulated, plain_result.sent) == (traced_result.simulated, traced_result.sent)
        for node_id, node in plain.net.nodes.items():
            assert [i.events for i in node.incarnations] == [i.events for i in traced.net.nodes[node_id].incarnations]
        assert lines


def test_a_change_the_invariants_do_not_see_changes_the_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trace is finer than the invariants: events that say another reason keep every
    invariant, and the run's result, but give another trace."""
    before = trace_digest(3, "plain")
    announce = Machine.announce

    def other_reason(self: Machine, previous: Role, now: float, reason: str, quiet: bool = False) -> None:
        announce(self, previous, now, reason.upper(), quiet)

    monkeypatch.setattr(Machine, "announce", other_reason)
    assert run_seed(3, False).ok
    assert trace_digest(3, "plain") != before
