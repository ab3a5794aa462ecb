"""Full, canonical traces of the fault simulator's runs, to prove a refactoring keeps behaviour.

:func:`trace_lines` plays exactly the schedule of ``simfuzz.generate(seed, quorum, version=...)`` (as
``benchmarks/simulate.py`` and ``tests/test_simulation.py`` do) with a :class:`Recorder` as
:attr:`simnet.SimNet.trace`, and returns one line of text per thing that happened, in order:

* the schedule (``simfuzz.Schedule.describe``) and the run's own notes (faults as resolved);
* every input to a machine (``start``, ``stop``, ``resign``, ``tick``, ``pop`` of a datagram
  or a DNS-SD record, goodbye, npm pong or address list, ``held`` items handled on resume);
* every action a machine returned: ``action`` with the event delivered to callbacks (node,
  kind, state, previous state, term, leader, reason, time, fencing token), the published
  role and term, npm pings; every datagram: ``send`` with its encoded bytes, then ``drop``
  (and why) or one ``queue`` line per copy with its arrival time and queue number;
* the faults (``crash``, ``pause``, ``resume``, ``restart``, ``links`` with every cut and
  loss rate, npm leaders), and DNS-SD records ``pending`` behind a cut;
* the outcome (violation or not) and each node's final state, term, leader and deadline.

Each line starts with the fake clock's time as ``repr`` of its float (exact). Values are
written canonically by :func:`canon`: dataclasses field by field, enums by name, floats by
``repr``, sets and dicts sorted, so that no line depends on ``PYTHONHASHSEED``. Nothing of the
trace is sampled: two versions of the machine that give the same trace took the same inputs
and returned the same actions at the same times.

``benchmarks/trace.py`` records the sha256 of the trace of every seed in
``benchmarks/results/sim-traces.sha256`` and checks them; ``--show`` prints one trace.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from simfuzz import Run, Schedule, generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGESTS = os.path.join(ROOT, "benchmarks", "results", "sim-traces.sha256")
"""The committed digests: ``seed mode sha256`` per line, then ``total sha256``."""

MODES: dict[str, tuple[bool | None, str]] = {
    "plain": (False, "0.2"),
    "quorum": (True, "0.2"),
    "plain-0.3": (False, "0.3"),
    "quorum-0.3": (True, "0.3"),
    "mixed": (None, "mixed"),
}
"""Mode name in the digest file -> the ``quorum`` and ``version`` arguments of
:func:`simfuzz.generate`. ``plain`` and ``quorum`` are 0.2's protocol (their traces were
recorded before protocol 3 and must stay equal); the others run protocol 3 (``mixed``: some
nodes of each, quorum mode at random)."""

_MESSAGE_ITEMS = ("message", "address-ping")
"""Queued items that carry a datagram (its bytes are on the ``send`` line before them)."""

_PLAIN = frozenset({type(None), bool, int, float, str})
"""Types written as their ``repr`` (exact for floats)."""
_FIELDS: dict[type, tuple[str, ...]] = {}
"""The field names of each dataclass met so far."""


def canon(value: object) -> str:
    """``value`` as text that is the same in every process: exact floats, sorted sets and dicts,
    dataclasses and enums by their type's name (not their module, which a refactoring may move)."""
    kind = type(value)
    if kind in _PLAIN:
        return repr(value)
    names = _FIELDS.get(kind)
    if names is not None:
        return kind.__name__ + "(" + ", ".join(f"{n}={canon(getattr(value, n))}" for n in names) + ")"
    if isinstance(value, bool | int | str | float):
        return repr(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, tuple | list):
        return "(" + ", ".join(canon(v) for v in value) + ")"
    if isinstance(value, set | frozenset):
        return "{" + ", ".join(sorted(canon(v) for v in value)) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(sorted(f"{canon(k)}: {canon(v)}" for k, v in value.items())) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(value))
        return canon(value)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}({str(value)!r})"
    raise TypeError(f"no canonical form for {type(value).__name__}: {value!r}")


class Recorder:
    """A trace sink for :attr:`simnet.SimNet.trace`: turns each call into one canonical line
    and passes it to ``emit``."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit

    def __call__(self, now: float, what: str, *details: Any) -> None:
        if what == "queue":
            seq, at, node_id, (kind, payload) = details
            if kind in _MESSAGE_ITEMS:
                _message, source = payload
                shown = f"{kind} from {canon(source)}"
            else:
                shown = f"{kind} {canon(payload)}"
            self.emit(f"{now!r} queue #{seq} at {at!r} for {node_id}: {shown}")
            return
        if what == "pop":
            seq, node_id, kind, fate = details
            self.emit(f"{now!r} pop #{seq} {node_id} {kind} {fate}")
            return
        self.emit(f"{now!r} {what} " + " ".join(canon(d) for d in details))


class TracedRun(Run):
    """:class:`simfuzz.Run` with the recorder on its network and its notes (the faults as
    resolved: which node ``@leader`` was) in the trace."""

    def __init__(self, schedule: Schedule, recorder: Recorder) -> None:
        super().__init__(schedule)
        self.recorder = recorder
        self.net.trace = recorder

    def say(self, text: str) -> None:
        self.recorder.emit(f"{self.net.now!r} run {text}")


def record(seed: int, mode: str, emit: Callable[[str], None]) -> None:
    """Play the simulator's schedule of ``seed`` in ``mode`` (one of :data:`MODES`) and pass
    every line of its trace to ``emit``."""
    quorum, version = MODES[mode]
    schedule = generate(seed, quorum, version=version)
    emit(f"trace of seed {seed}, {mode}")
    for line in schedule.describe().splitlines():
        emit(f"schedule {line}")
    run = TracedRun(schedule, Recorder(emit))
    result = run.play()
    net = run.net
    emit(
        f"{net.now!r} end {'violation ' + str(result.violation) if result.violation else 'ok'};"
        f" simulated {result.simulated!r} s, {result.sent} datagrams, {net.lost} lost,"
        f" {net.duplicated} duplicated, {net.npm_pings} npm pings"
    )
    for node_id in sorted(net.nodes):
        node = net.nodes[node_id]
        machine = node.machine
        emit(
            f"{net.now!r} final {node_id} boot={machine.boot} crashed={node.crashed} paused={node.paused}"
            f" state={canon(machine.state)} term={machine.term} leader={canon(machine.leader)}"
            f" is_leader={machine.is_leader(net.now)} deadline={machine.next_deadline()!r}"
            f" events={len(node.events)} incarnations={len(node.incarnations)}"
        )


def trace_lines(seed: int, mode: str) -> list[str]:
    """The whole trace of one seed, one line per item."""
    lines: list[str] = []
    record(seed, mode, lines.append)
    return lines


def trace_digest(seed: int, mode: str) -> str:
    """The sha256 (hex) of the trace of one seed: of its lines, each followed by a newline."""
    digest = hashlib.sha256()
    record(seed, mode, lambda line: digest.update(line.encode("utf-8") + b"\n"))
    return digest.hexdigest()


def digest_task(task: tuple[int, str]) -> tuple[int, str, str]:
    """``(seed, mode)`` -> ``(seed, mode, sha256)``, for a process pool."""
    seed, mode = task
    return seed, mode, trace_digest(seed, mode)


def compute(tasks: Iterable[tuple[int, str]], jobs: int = 1) -> Iterator[tuple[int, str, str]]:
    """The digests of ``(seed, mode)`` tasks, in their order, with ``jobs`` processes."""
    if jobs <= 1:
        yield from map(digest_task, tasks)
        return
    import multiprocessing

    with multiprocessing.Pool(jobs) as pool:
        yield from pool.imap(digest_task, list(tasks), chunksize=4)


# ----------------------------------------------------------------------------- digest file

Digests = dict[tuple[int, str], str]
"""(seed, mode) -> sha256 of its trace."""


def total_digest(digests: Digests) -> str:
    """The sha256 of all per-seed lines, in file order (by mode, then seed)."""
    total = hashlib.sha256()
    for line in digest_lines(digests):
        total.update(line.encode("ascii") + b"\n")
    return total.hexdigest()


def digest_lines(digests: Digests) -> list[str]:
    """``seed mode sha256`` lines: the plain seeds first, then the quorum ones, each ascending."""
    order = list(MODES)
    keys = sorted(digests, key=lambda key: (order.index(key[1]), key[0]))
    return [f"{seed} {mode} {digests[(seed, mode)]}" for seed, mode in keys]


def format_file(digests: Digests, header: Iterable[str] = ()) -> str:
    """The text of the digest file: ``#`` comments, a line per seed, then ``total sha256``."""
    lines = [f"# {line}" if line else "#" for line in header]
    lines += digest_lines(digests)
    lines.append(f"total {total_digest(digests)}")
    return "\n".join(lines) + "\n"


def parse_file(text: str) -> tuple[Digests, str | None]:
    """The per-seed digests and the recorded total of a digest file's text."""
    digests: Digests = {}
    total = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total":
            total = parts[1]
        elif len(parts) == 3 and parts[1] in MODES:
            digests[(int(parts[0]), parts[1])] = parts[2]
        else:
            raise ValueError(f"line {number} of the digest file: {line!r}")
    return digests, total


def read_file(path: str = DIGESTS) -> tuple[Digests, str | None]:
    with open(path, encoding="ascii") as file:
        return parse_file(file.read())


def differences(recorded: Digests, computed: Digests) -> list[tuple[int, str]]:
    """The (seed, mode) keys of ``computed`` whose digest is not the recorded one (or none is)."""
    return sorted(
        (key for key, digest in computed.items() if recorded.get(key) != digest),
        key=lambda key: (list(MODES).index(key[1]), key[0]),
    )
