"""The deterministic fault simulator (``tests/simfuzz.py``) in CI: fixed seeds, fake clock.

Seeds are a plain range, so a failure here is replayed by
``python benchmarks/simulate.py --seed N`` (add ``--quorum`` or ``--no-quorum`` as the test
id says). ``benchmarks/simulate.py --seeds N`` runs many more.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import Any

import pytest

from followtheleader._core.machine import Machine
from followtheleader._core.model import State

from simfuzz import Fault, Result, faults_of, generate, run_schedule, shrink

CI_SEEDS = {False: range(0, 400), True: range(0, 200)}
"""Seeds per mode (without quorum, with quorum): about 35 + 25 s on this 2-core machine."""

# Seeds that break an invariant on today's machine, each with the regression test of its bug
# (tests/test_sim_regressions.py): none since the eight bugs found so far were fixed. A seed
# listed here must still fail the same way, so that the list empties as bugs are fixed.
KNOWN_FAILING: dict[bool, dict[int, tuple[str, str]]] = {
    False: {},
    True: {},
}

MODES = [pytest.param(False, id="no-quorum"), pytest.param(True, id="quorum")]

PROTOCOL_3_SEEDS = {("0.3", False): range(0, 200), ("0.3", True): range(0, 100), ("mixed", None): range(0, 300)}
"""Seeds of the schedules whose nodes speak protocol 3 (thinned acks), all of them or some
beside nodes of 0.2 (``mixed``, quorum mode at random): 600 in all, about 60 s."""


def failures(results: list[Result]) -> str:
    lines = []
    for result in results:
        assert result.violation is not None
        quorum = "--quorum" if result.schedule.quorum else "--no-quorum"
        lines.append(f"seed {result.schedule.seed}: {result.violation}")
        lines.append(f"    replay: python benchmarks/simulate.py --seed {result.schedule.seed} {quorum}")
    return "\n".join(lines)


@pytest.mark.parametrize("quorum", MODES)
def test_random_fault_schedules_keep_every_invariant(quorum: bool) -> None:
    failed = []
    for seed in CI_SEEDS[quorum]:
        if seed not in KNOWN_FAILING[quorum]:
            result = run_schedule(generate(seed, quorum))
            if not result.ok:
                failed.append(result)
    assert not failed, f"{len(failed)} of {len(CI_SEEDS[quorum])} seeds failed:\n{failures(failed)}"


@pytest.mark.parametrize(("version", "quorum"), list(PROTOCOL_3_SEEDS), ids=["0.3-no-quorum", "0.3-quorum", "mixed"])
def test_random_fault_schedules_of_protocol_3_keep_every_invariant(version: str, quorum: bool | None) -> None:
    failed = []
    for seed in PROTOCOL_3_SEEDS[(version, quorum)]:
        result = run_schedule(generate(seed, quorum, version=version))
        if not result.ok:
            failed.append(result)
    flag = {True: "--quorum", False: "--no-quorum", None: ""}[quorum]
    replay = "\n".join(
        f"seed {r.schedule.seed}: {r.violation}\n    replay: python benchmarks/simulate.py --seed {r.schedule.seed}"
        f" {flag} --version {version}"
        for r in failed
    )
    assert not failed, f"{len(failed)} seeds failed:\n{replay}"


@pytest.mark.parametrize("quorum", MODES)
def test_seeds_of_known_bugs_still_fail_as_recorded(quorum: bool) -> None:
    changed = []
    for seed, (invariant, bug) in sorted(KNOWN_FAILING[quorum].items()):
        result = run_schedule(generate(seed, quorum))
        found = result.violation.invariant if result.violation else None
        if found != invariant:
            changed.append(f"seed {seed} ({bug}): expected {invariant}, got {found or 'no violation'}")
    assert not changed, "update KNOWN_FAILING (a bug fixed, or a new one):\n" + "\n".join(changed)


def test_a_seed_gives_the_same_schedule_and_the_same_run() -> None:
    """Replays are exact: a seed alone gives the same schedule, events and datagrams."""
    for seed in (3, 11, 47):
        first, second = run_schedule(generate(seed), verbose=True), run_schedule(generate(seed), verbose=True)
        assert generate(seed) == generate(seed)
        assert first.log == second.log and first.sent == second.sent
        assert (first.violation is None) == (second.violation is None)
    assert generate(1) != generate(2)


@pytest.fixture
def planted_bug(monkeypatch: pytest.MonkeyPatch) -> int:
    """A bug planted in the machine for the simulator to find: followers never give up on a
    silent leader (every leader crash leaves its group without one). Returns the first CI seed
    without quorum that breaks an invariant with it (so these tests do not depend on a real
    bug staying unfixed)."""
    expire = Machine._expire

    def never_give_up(self: Machine, now: float) -> None:
        if self.state is State.FOLLOWER and self.leader is not None and not self.leader.npm:
            self._leader_peer().last_heard = now
        expire(self, now)

    monkeypatch.setattr(Machine, "_expire", never_give_up)
    for seed in CI_SEEDS[False]:
        if not run_schedule(generate(seed, False)).ok:
            return seed
    raise AssertionError("no CI seed finds the planted bug")


def test_the_shrinker_drops_faults_that_do_not_matter_and_the_replay_fails_alike(planted_bug: int) -> None:
    """A schedule that breaks an invariant is padded with faults that do not matter; the
    shrinker drops them, and the kept faults replay to the same violation."""
    schedule = generate(planted_bug, False)
    padded = schedule.keep(range(len(schedule.faults)))
    extra = tuple(Fault(0.9 + i * 0.01, "resign", ("n1",)) for i in range(6))  # before anyone leads
    padded = type(schedule)(**{**padded.__dict__, "faults": tuple(sorted(padded.faults + extra, key=lambda f: f.at))})
    padded_result = run_schedule(padded)
    assert padded_result.violation is not None
    shrunk = shrink(padded_result)
    assert shrunk.violation is not None
    assert shrunk.violation.invariant == padded_result.violation.invariant
    assert len(shrunk.schedule.faults) < len(padded.faults)
    assert not any(f in extra for f in shrunk.schedule.faults)
    # The printed replay (--seed N --keep i,j) gives the shrunk schedule back, and its failure.
    keep = faults_of(padded, shrunk.schedule)
    replayed = run_schedule(padded.keep(keep))
    assert replayed.violation is not None and str(replayed.violation) == str(shrunk.violation)


def test_simulate_replays_a_seed_from_the_command_line(planted_bug: int, capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/simulate.py --seed N --keep ...`` replays the printed shrunk schedule."""
    simulate = load_simulate()
    original = generate(planted_bug, False)
    shrunk = shrink(run_schedule(original))
    keep = ",".join(str(i) for i in faults_of(original, shrunk.schedule))
    assert simulate.main(["--seed", str(planted_bug), "--no-quorum", "--keep", keep]) == 1
    out = capsys.readouterr().out
    assert f"FAIL: {shrunk.violation}" in out
    assert simulate.main(["--seeds", "3", "--start", "0", "--no-quorum", "--no-shrink"]) in (0, 1)
    assert "seeds/s" in capsys.readouterr().out


def load_simulate() -> Any:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "simulate.py")
    spec = importlib.util.spec_from_file_location("simulate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_replay_does_not_depend_on_the_hash_seed() -> None:
    """``--seed N`` prints the same run in processes with different ``PYTHONHASHSEED`` (sets of
    strings iterate in another order there)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "simulate.py")
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, path, "--seed", "240", "--no-quorum"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode in (0, 1), done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1
