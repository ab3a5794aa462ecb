"""``followtheleader run NAME -- CMD``: run CMD only while this node leads its group.

Threads:

* the main thread runs :meth:`Runner.run`: it alone starts, signals and waits for CMD, taking
  one item at a time from the inbox (a ``queue.SimpleQueue``);
* the elector's callback thread runs the callbacks registered here; they print the event and
  put an item into the inbox, nothing else, so they never hold up later events;
* one ``followtheleader-wait-<pid>`` thread per run of CMD waits for it to exit and puts
  that into the inbox;
* SIGINT and SIGTERM handlers (main thread, between two bytecodes) put the signal into the
  inbox.

CMD runs in a process group of its own (a new session), so that a demotion can signal
everything CMD started: SIGTERM to the group, SIGKILL after the grace period, and SIGKILL to
whatever is left in the group once CMD itself has exited. On Linux, CMD also gets SIGKILL
when the ``run`` process dies (``PR_SET_PDEATHSIG``), so it cannot outlive a crashed or
killed ``run``; processes CMD starts itself are not covered by that.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._core.model import Event, FencingToken
from .._elector import Elector
from .._options import ACCEPTED_SECRET_ENVIRONMENT_VARIABLE, SECRET_ENVIRONMENT_VARIABLE
from .console import Console, catch_signals, format_token

__all__ = ["ON_EXIT_CHOICES", "RESTART_DELAY", "Runner"]

ON_EXIT_CHOICES = ("resign", "restart", "exit")
RESTART_DELAY = 1.0
"""With ``--on-exit restart``, CMD is started at most once a second."""

_PR_SET_PDEATHSIG = 1
_SECRET_VARIABLES = (SECRET_ENVIRONMENT_VARIABLE, ACCEPTED_SECRET_ENVIRONMENT_VARIABLE)
"""The group's secrets are this command's business, not CMD's: they are not passed on."""


@dataclass(frozen=True)
class _Leading:
    """This node became leader with ``token`` (from the callback thread)."""

    token: FencingToken


@dataclass(frozen=True)
class _Demoted:
    """This node stopped leading or follows another one (from the callback thread)."""


@dataclass(frozen=True)
class _Exited:
    """A run of CMD has exited (from its wait thread)."""

    child: _Child


@dataclass(frozen=True)
class _Signalled:
    """SIGINT or SIGTERM arrived (from the signal handler)."""

    signum: int


_Item = _Leading | _Demoted | _Exited | _Signalled


class _Child:
    """One run of CMD, in its own session and process group (process group id = its pid).

    Created and stopped on the main thread; its wait thread only reaps it and reports it.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str], inbox: queue.SimpleQueue[_Item]) -> None:
        self.proc = subprocess.Popen(list(argv), env=env, start_new_session=True, preexec_fn=_die_with_parent())
        self.pid = self.proc.pid
        self.started = time.monotonic()
        self.exited = threading.Event()
        self._inbox = inbox
        threading.Thread(target=self._wait, name=f"followtheleader-wait-{self.pid}", daemon=True).start()

    def _wait(self) -> None:
        """Wait thread: reap CMD, then tell the main thread."""
        self.proc.wait()
        self.exited.set()
        self._inbox.put(_Exited(self))

    @property
    def returncode(self) -> int:
        """CMD's exit status, or minus the signal that killed it (only once it has exited)."""
        code = self.proc.returncode
        assert code is not None
        return code

    def stop(self, grace: float, console: Console) -> None:
        """SIGTERM to CMD's process group, SIGKILL after ``grace`` seconds; wait until it exited."""
        if not self.exited.is_set():
            console.record(
                "command",
                f"stopping pid {self.pid}: SIGTERM to its process group (SIGKILL after {grace:g} s)",
                action="stopping",
                pid=self.pid,
            )
            self.signal_group(signal.SIGTERM)
            if not self.exited.wait(grace):
                console.record(
                    "command", f"pid {self.pid} still runs after {grace:g} s: SIGKILL", action="killing", pid=self.pid
                )
                self.signal_group(signal.SIGKILL)
                self.exited.wait()
        self.signal_group(signal.SIGKILL)  # whatever CMD left behind in its group

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to CMD's process group, if anything is left in it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)


class Runner:
    """Runs CMD while ``elector`` leads; see the module docstring for the threads.

    :param elector: a new, not yet started elector.
    :param command: CMD and its arguments.
    :param grace: seconds between SIGTERM and SIGKILL when CMD is stopped.
    :param on_exit: what to do when CMD exits by itself: ``resign`` (another node takes
        over), ``restart`` (start it again while leading) or ``exit`` (leave the group and
        exit with CMD's status).
    :param console: where the events and what happens to CMD are reported.
    """

    def __init__(self, elector: Elector, command: Sequence[str], grace: float, on_exit: str, console: Console) -> None:
        if on_exit not in ON_EXIT_CHOICES:
            raise ValueError(f"on_exit must be one of {', '.join(ON_EXIT_CHOICES)}, not {on_exit!r}")
        self._elector = elector
        self._command = list(command)
        self._grace = grace
        self._on_exit = on_exit
        self._console = console
        self._inbox: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._child: _Child | None = None
        self._restart_at: float | None = None
        for kind in ("leader", "follower", "reelection", "error"):
            elector.on(kind, self._on_event)

    def _on_event(self, event: Event) -> None:
        """Callback thread: report the event and hand it to the main thread."""
        self._console.event(event)
        if event.kind == "leader" and event.fencing_token is not None:
            self._inbox.put(_Leading(event.fencing_token))
        elif event.kind in ("follower", "reelection"):
            self._inbox.put(_Demoted())

    def run(self) -> int:
        """Main thread: join the group and run CMD while leading, until a signal or CMD says stop.

        :returns: the exit status of the command line: 0 after SIGINT or SIGTERM, CMD's own
            status with ``on_exit="exit"`` (128 + N when a signal N killed it), 1 when the
            elector cannot start.
        """
        with catch_signals(lambda signum: self._inbox.put(_Signalled(signum))):
            try:
                self._elector.start()
            except OSError as exc:
                print(f"followtheleader: {exc}", file=sys.stderr)
                return 1
            elector = self._elector
            where = elector.describe()
            self._console.record(
                "joined",
                f"group {elector.name!r} as node {elector.node_id} ({where.text})",
                group=elector.name,
                node_id=elector.node_id,
                **where.fields,
            )
            try:
                return self._loop()
            finally:
                self._stop_child()
                self._elector.stop()

    def _loop(self) -> int:
        while True:
            timeout = None if self._restart_at is None else max(0.0, self._restart_at - time.monotonic())
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                self._restart_at = None
                status = self._start_if_leading(self._elector.fencing_token)
                if status is not None:
                    return status
                continue
            if isinstance(item, _Signalled):
                self._console.record(
                    "signal",
                    f"{signal.Signals(item.signum).name}: stopping",
                    signal=signal.Signals(item.signum).name,
                )
                return 0
            status = None
            if isinstance(item, _Leading):
                self._restart_at = None
                status = self._start_if_leading(item.token)
            elif isinstance(item, _Demoted):
                self._restart_at = None
                self._stop_child()
            elif item.child is self._child:
                self._child = None
                item.child.signal_group(signal.SIGKILL)  # whatever CMD left behind in its group
                self._report_exit(item.child)
                status = self._apply_on_exit(item.child.returncode, item.child.started)
            if status is not None:
                return status

    def _start_if_leading(self, token: FencingToken | None) -> int | None:
        """Start CMD unless it runs, or this node no longer holds the leadership ``token``.

        :returns: the exit status of the command line when CMD cannot start and
            ``on_exit`` is ``exit``, else None.
        """
        elector = self._elector
        # The token first: it is then never newer than the leadership is_leader checks.
        if self._child is not None or token is None or elector.fencing_token != token or not elector.is_leader:
            return None
        term = token.term
        env = {k: v for k, v in os.environ.items() if k not in _SECRET_VARIABLES}
        env.update(
            FOLLOWTHELEADER_TERM=str(term),
            FOLLOWTHELEADER_FENCING_TOKEN=token.key,
            FOLLOWTHELEADER_NODE_ID=elector.node_id,
            FOLLOWTHELEADER_NAME=elector.name,
        )
        started = time.monotonic()
        try:
            self._child = _Child(self._command, env, self._inbox)
        except OSError as exc:  # as a shell would say: status 127
            self._console.record("command", f"cannot start: {exc}", action="failed", error=str(exc))
            return self._apply_on_exit(127, started)
        self._console.record(
            "command",
            f"started pid {self._child.pid} (term {term}, token {format_token(token)}): {shlex.join(self._command)}",
            action="started",
            pid=self._child.pid,
            term=term,
            fencing_token=token.key,
        )
        return None

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop(self._grace, self._console)
            self._report_exit(child)

    def _apply_on_exit(self, returncode: int, started: float) -> int | None:
        """CMD (started at ``started``) ended by itself; a status returned means: exit now."""
        if self._on_exit == "exit":
            return returncode if returncode >= 0 else 128 - returncode
        if self._on_exit == "restart":
            if self._elector.is_leader:
                self._restart_at = max(time.monotonic(), started + RESTART_DELAY)
        else:
            self._elector.resign()
        return None

    def _report_exit(self, child: _Child) -> None:
        code = child.returncode
        if code >= 0:
            self._console.record(
                "command", f"pid {child.pid} exited with status {code}", action="exited", pid=child.pid, returncode=code
            )
        else:
            name = signal.Signals(-code).name
            self._console.record(
                "command", f"pid {child.pid} killed by {name}", action="exited", pid=child.pid, signal=name
            )


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL CMD when this process dies (Linux only).

    ``PR_SET_PDEATHSIG`` fires when the thread that forked the child ends, so CMD must be
    started from a thread that lives as long as the process: the main thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    kill = int(signal.SIGKILL)

    def preexec() -> None:
        # In the child, between fork and exec: as little work as possible.
        prctl(_PR_SET_PDEATHSIG, kill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), kill)

    return preexec
