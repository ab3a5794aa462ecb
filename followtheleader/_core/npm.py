"""npm compatibility: the npm leader this node knows of, and the records it serves npm nodes.

A leader of the npm package (seen as the DNS-SD record ``<group>`` of the service type) never
steps down: a node that knows of one pings it on the lost-peer probing schedule, follows it
when it answers, and claims nothing while it may be alive. An announced leader of ours with
``npm_compat`` publishes the records npm nodes look for once it has led for :data:`NPM_HOLD`.
This part has its own timers: the probe, the npm leader's failure, and the serving hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .peers import Peer, npm_member, silent_since
from .timing import PROBE_FAST_FOR, PROBE_SLOW_EVERY, Timing

__all__ = ["NpmPart"]


@dataclass
class NpmPart:
    """The npm leader known to this node (if any) and the npm records' serving hold."""

    peer: Peer | None = None
    """The npm leader this node knows of (its DNS-SD record was seen), if any."""
    serve_at: float | None = None
    """As announced leader with ``npm_compat``: when to publish the records npm nodes look
    for (:data:`NPM_HOLD` after the announcement); None once published, or when not to be
    (set at every change of role)."""

    def know(self, host: str, port: int, now: float) -> Peer:
        """The npm leader at ``host:port``, known from now on (in place of any other)."""
        member = npm_member(host, port)
        if self.peer is None or self.peer.member != member:
            self.peer = Peer(member, probed_since=now)
        return self.peer

    def probe_due(self, following: bool, last_now: float, timing: Timing) -> float | None:
        """When a node that does not follow the known npm leader pings it next, if ever
        (the lost-peer probing schedule)."""
        npm = self.peer
        if npm is None or following:
            return None
        if npm.last_ping is None:
            return last_now
        fast = last_now - silent_since(npm, last_now) < PROBE_FAST_FOR
        return npm.last_ping + (timing.interval if fast else PROBE_SLOW_EVERY)

    def failure_due(self, timing: Timing) -> float | None:
        """When the pinged npm leader counts as dead, unless it answers first."""
        npm = self.peer
        if npm is None or npm.dead or npm.pinged_since is None:
            return None
        return npm.pinged_since + timing.failure_window

    def serve_due(self, timing: Timing) -> float | None:
        """As leader: when to publish the records npm nodes look for, if still to come.

        Not before :attr:`serve_at`, nor while a known npm leader may be alive (pinged, not
        yet silent for the failure window): if it answers, this node follows it instead.
        """
        if self.serve_at is None:
            return None
        failure = self.failure_due(timing)
        return self.serve_at if failure is None else max(self.serve_at, failure)

    def deadlines(self, following: bool, last_now: float, timing: Timing) -> list[float]:
        """The times at which :meth:`expire` or :meth:`tick` next have work."""
        dues = (self.probe_due(following, last_now, timing), self.failure_due(timing), self.serve_due(timing))
        return [t for t in dues if t is not None]

    def expire(self, now: float, timing: Timing) -> None:
        """In any role: the npm leader silent for the failure window is no candidate, and no
        reason to wait, any more."""
        due = self.failure_due(timing)
        if self.peer is not None and due is not None and now >= due:
            self.peer.dead = True

    def tick(
        self,
        now: float,
        following: bool,
        last_now: float,
        timing: Timing,
        probe: Callable[[Peer, float], bool],
    ) -> bool:
        """Ping the known npm leader this node does not follow (``probe``; forget it when that
        says so); True when the records for npm nodes are to be published now."""
        due = self.probe_due(following, last_now, timing)
        if self.peer is not None and due is not None and now >= due and not probe(self.peer, now):
            self.peer = None
        due = self.serve_due(timing)
        if due is not None and now >= due:
            self.serve_at = None
            return True
        return False
