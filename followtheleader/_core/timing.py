"""The timing of the LAN election: every timeout derives from ``interval`` and
``max_failed_responses``; and the probing schedule of lost peers."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACK_EVERY", "FORGET_AFTER", "NPM_HOLD", "PROBE_FAST_FOR", "PROBE_SLOW_EVERY", "THIN_FROM", "Timing"]


@dataclass(frozen=True)
class Timing:
    """The timing parameters, all derived from ``interval`` and ``max_failed_responses``.

    :ivar interval: seconds between two heartbeats (a leader's beats, a candidate's pings).
    :ivar max_failed: heartbeats missed in a row after which a peer counts as lost (at least 2).
    """

    interval: float
    max_failed: int

    @property
    def failure_window(self) -> float:
        """Silence after which a peer counts as lost: ``(max_failed + 0.5) * interval``."""
        return (self.max_failed + 0.5) * self.interval

    @property
    def lease(self) -> float:
        """How long a leader's lease runs from its last renewal.

        A follower gives up at (the last heartbeat it received + failure window), and the
        leader's clock when it sent that heartbeat is no later than its renewal: a renewal
        by its own tick comes with the beats it sends on that tick; a renewal by an echoed
        lease mark is the mark itself, the leader's clock when it sent a heartbeat that
        arrived. So a lease shorter than the failure window ends before any follower that
        heard that heartbeat gives up; the fifth of an interval between them covers timer
        jitter. (A follower that missed the latest beats says so with a stale mark in its
        pings, and the lease is then the echoed one: see ``Leading.lease_end``.)
        """
        return self.failure_window - 0.2 * self.interval

    @property
    def overdue(self) -> float:
        """A follower pings its leader when no heartbeat came for this long: one and a half
        intervals (the leader sends one every interval)."""
        return 1.5 * self.interval

    @property
    def settle(self) -> float:
        """After start, nobody claims for this long: time to hear of an existing leader."""
        return 2.5 * self.interval

    @property
    def suspect(self) -> float:
        """A follower switches to a better leader only if its own has been silent this long.

        One and a half intervals short of the failure window: after a crash, the node that
        claims first has waited a whole failure window (and the confirmation), and the others
        have not heard from the dead leader for at least an interval less than that; while a
        leader lives, its followers hear from it every interval. So a node that lost only its
        own link to the leader cannot take the others over. (In quorum mode the lease is
        used instead: see ``Follower.alive``.)
        """
        return self.failure_window - 1.5 * self.interval

    @property
    def confirm(self) -> float:
        """After losing its leader, a follower waits this long before claiming: half an interval,
        enough to hear back from a leader that is alive after all."""
        return self.interval / 2

    @property
    def retry(self) -> float:
        """A follower whose last ping got no answer pings again this soon (an eighth interval).

        A lost datagram then costs one retry, not an interval: the failure window holds
        ``max_failed`` beats of the leader when all goes well, and once one is overdue, some
        eight pings an interval until an answer comes, so a few lost in a row are not taken
        for a crash.
        """
        return self.interval / 8


PROBE_FAST_FOR = 60.0
"""A leader probes a peer it lost every interval for this many seconds ..."""
PROBE_SLOW_EVERY = 2.0
"""... then every this many seconds ..."""
FORGET_AFTER = 3600.0
"""... and forgets it after this long without a word from it."""
NPM_HOLD = 1.5
"""A leader publishes the records npm nodes look for only once it has led this long: an npm
node that emitted ``leader`` before our claim is silent while it probes its name (up to 1 s),
then announces it; this node then follows it, and no npm node was pointed at this one."""
ACK_EVERY = 4
"""A leader of protocol 3 with :data:`THIN_FROM` followers of protocol 3 or more asks them to
ack every this many beats, each in its own slot, so that it reads about a quarter of the acks
(outside quorum mode, and while no follower shows that it does not hear the beats)."""
THIN_FROM = 8
"""The fewest followers of protocol 3 for which a leader thins the acks. With this many, each
of the :data:`ACK_EVERY` slots holds two followers on average, so the lease marks echoed
still come with nearly every beat; a smaller group has little to save."""
