"""Authenticated groups: HMAC-SHA256 tags on every datagram and TXT record, replay refusal.

With a shared secret, a datagram is ``<JSON body with a stamp> + <32-byte tag>``: the tag is
HMAC-SHA256 over the body under a key derived from the secret and the group name, and the
stamp ``"a": [boot, counter, time, to]`` says which run of which node sent it, in which order,
when, and to which node. A receiver drops a datagram whose tag is wrong, that was sent to
another node, whose time is outside the allowed clock skew, or whose counter it has accepted
before from that run of that node (or is too old to tell), so a captured datagram replayed
later, here or elsewhere, is refused. TXT records carry ``ts`` and ``mac`` the same
way; a node re-publishes its record well before it would count as stale.

The secret itself never leaves this module's objects: :class:`Secret` hides it from ``repr``,
and only the derived key is used.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import threading
from collections.abc import Mapping, Sequence

from .._core.messages import ANYONE
from .protocol import Stamp

__all__ = ["MAX_CLOCK_SKEW", "RECORD_MAX_AGE", "RECORD_REFRESH", "Authenticator", "Secret"]

TAG_SIZE = 32
MAX_CLOCK_SKEW = 30.0
"""Seconds a stamped datagram's time may differ from the receiver's wall clock."""
RECORD_REFRESH = 240.0
"""Seconds between re-publications of an authenticated TXT record (fresh ``ts``)."""
RECORD_MAX_AGE = 600.0
"""An authenticated TXT record older than this is refused as a replay."""
_MAX_TRACKED_RUNS = 4096
REPLAY_WINDOW = 64
"""Datagrams of one run may arrive this many counters out of order and still be accepted."""
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1


class Secret:
    """A shared secret; ``repr`` and ``str`` never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._value).digest())

    def derive_key(self, group: str) -> bytes:
        """The HMAC key of one group: the same secret gives other groups other keys."""
        return hmac.new(self._value, b"followtheleader/1/" + group.encode(), hashlib.sha256).digest()


class Authenticator:
    """Signs and checks datagrams and records of one group. Thread-safe.

    :param secrets: the group's shared secrets: the first one signs, every one is accepted
        (several while a secret is being rotated).
    :param group: the group name.
    """

    def __init__(self, secrets: Sequence[Secret], group: str) -> None:
        self._keys = [secret.derive_key(group) for secret in secrets]
        self._key = self._keys[0]
        self._boot = os.urandom(8).hex()
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        # (sender, boot) -> (greatest counter, bitmap of the counters below it seen, latest time)
        self._runs: dict[tuple[str, str], tuple[int, int, float]] = {}

    def __repr__(self) -> str:
        return "<Authenticator>"

    # ----------------------------------------------------------------- datagrams

    def next_stamp(self, now_wall: float, to: str) -> Stamp:
        """A fresh stamp for one outgoing datagram to node ``to``."""
        return Stamp(self._boot, next(self._counter), round(now_wall, 3), to)

    def seal(self, body: bytes) -> bytes:
        """``body`` followed by its tag."""
        return body + hmac.new(self._key, body, hashlib.sha256).digest()

    def open(self, data: bytes) -> bytes | None:
        """The body of a datagram whose tag is right, else None."""
        if len(data) <= TAG_SIZE:
            return None
        body, tag = data[:-TAG_SIZE], data[-TAG_SIZE:]
        for key in self._keys:
            if hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), tag):
                return body
        return None

    def refusal(self, sender: str, stamp: Stamp, now_wall: float, me: str) -> str | None:
        """None, and remembered, if this stamp is fresh and for node ``me``; else why not.

        ``"misdirected"``: it was sent to another node (a copy replayed here). A stamp for
        :data:`ANYONE` passes this check (a ping to an address whose node is not known yet):
        the caller must then take the datagram as a ping to answer, never as proof of life;
        ``"clock-skew"``: its time is too far from ours; ``"replayed"``: this counter of this
        run of this sender was accepted before, or is too old to tell. Each run keeps its
        greatest counter and a window of the :data:`REPLAY_WINDOW` counters below it, so
        datagrams that overtake each other on the way are still accepted once each.
        """
        if stamp.to not in (me, ANYONE):
            return "misdirected"
        if abs(stamp.time - now_wall) > MAX_CLOCK_SKEW:
            return "clock-skew"
        run = (sender, stamp.boot)
        with self._lock:
            seen = self._runs.get(run)
            if seen is None:
                if len(self._runs) >= _MAX_TRACKED_RUNS:
                    self._forget_stale(now_wall)
                self._runs[run] = (stamp.counter, 1, stamp.time)
                return None
            top, window, sent_at = seen
            if stamp.counter > top:
                shift = stamp.counter - top
                window = ((window << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
                self._runs[run] = (stamp.counter, window, max(sent_at, stamp.time))
                return None
            offset = top - stamp.counter
            if offset >= REPLAY_WINDOW or window & (1 << offset):
                return "replayed"
            self._runs[run] = (top, window | (1 << offset), sent_at)
            return None

    def _forget_stale(self, now_wall: float) -> None:
        for run, (_top, _window, sent_at) in list(self._runs.items()):
            if sent_at < now_wall - 2 * MAX_CLOCK_SKEW:
                del self._runs[run]
        while len(self._runs) >= _MAX_TRACKED_RUNS:  # a flood of valid-looking runs: drop the oldest
            del self._runs[min(self._runs, key=lambda r: self._runs[r][2])]

    # ----------------------------------------------------------------- TXT records

    def sign_record(self, properties: Mapping[str, str], now_wall: float) -> dict[str, str]:
        """``properties`` with a time stamp ``ts`` and a tag ``mac``."""
        signed = {**properties, "ts": str(int(now_wall))}
        signed["mac"] = self._record_tag(signed, self._key)
        return signed

    def record_valid(self, properties: Mapping[str, str | None], now_wall: float) -> bool:
        """True if the record's tag is right and it is not older than :data:`RECORD_MAX_AGE`."""
        mac, ts = properties.get("mac"), properties.get("ts")
        if not isinstance(mac, str) or not isinstance(ts, str) or not ts.isdigit() or len(ts) > 12:
            return False
        if any(value is None for value in properties.values()):
            return False
        present = {k: v for k, v in properties.items() if v is not None}
        if not any(hmac.compare_digest(self._record_tag(present, key).encode(), mac.encode()) for key in self._keys):
            return False
        return -MAX_CLOCK_SKEW <= now_wall - int(ts) <= RECORD_MAX_AGE + MAX_CLOCK_SKEW

    @staticmethod
    def _record_tag(properties: Mapping[str, str], key: bytes) -> str:
        canonical = "\n".join(f"{k}={v}" for k, v in sorted(properties.items()) if k != "mac")
        return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
