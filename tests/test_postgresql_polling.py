"""The PostgreSQL driver's polling mode (behind a transaction pooler, where LISTEN hears
nothing), without a server: when a member reads the group again before the renewal period.

The rows fed to ``_read_view`` are those of the driver's group read (``_GROUP_ROWS``): kind,
name, priority, epoch, session, and for the leadership the seconds it has left by the
server's clock. The lab cases (a SIGKILLed leader behind pgbouncer) are in
``test_postgresql.py`` and ``test_coordinator.py``.
"""

from __future__ import annotations

import time

from followtheleader._coordinators.base import parse_coordinator
from followtheleader._coordinators.postgresql import _VACANT_POLL, PostgreSQLCoordinator
from followtheleader._core.model import Member

TTL = 3.0


def _polling(listen_works: bool = False) -> PostgreSQLCoordinator:
    coordinator = PostgreSQLCoordinator(parse_coordinator("postgresql://db.invalid/app"), "g", Member("me", 1), TTL)
    coordinator._listen_works = listen_works
    coordinator._session = "mine"
    return coordinator


def _rows(holder_session: str | None, remaining: float = 0.0) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = [("S", "", 1, 0, "", 0.0), ("M", "me", 1, 0, "mine", 0.0)]
    if holder_session is not None:
        rows.append(("L", "other", 2, 7, holder_session, remaining))
    return rows


def test_a_follower_reads_again_when_the_leader_s_row_expires() -> None:
    coordinator = _polling()
    before = time.monotonic()
    coordinator._read_view(_rows("theirs", remaining=0.25))
    assert coordinator._poll_at is not None
    assert before + 0.25 <= coordinator._poll_at <= time.monotonic() + 0.25


def test_the_leader_itself_and_a_listening_member_schedule_nothing() -> None:
    leader = _polling()
    leader._read_view(_rows("mine", remaining=2.9))
    assert leader._poll_at is None
    listening = _polling(listen_works=True)
    listening._read_view(_rows("theirs", remaining=0.25))
    listening._read_view(_rows(None))
    assert listening._poll_at is None


def test_a_vacancy_is_read_again_soon_then_less_often_up_to_the_renewal_period() -> None:
    coordinator = _polling()
    for delay in (_VACANT_POLL, 0.1, 0.2, 0.4, 0.6, 0.6):  # 0.6: the renewal period, TTL / 5
        before = time.monotonic()
        coordinator._read_view(_rows(None))
        assert coordinator._poll_at is not None
        assert before + delay - 1e-9 <= coordinator._poll_at <= time.monotonic() + delay + 1e-9
    coordinator._read_view(_rows("theirs", remaining=2.5))  # a holder again: the next vacancy starts over
    coordinator._read_view(_rows(None))
    assert coordinator._poll_at is not None and coordinator._poll_at - time.monotonic() <= _VACANT_POLL


def test_wait_ends_at_the_early_poll_and_makes_the_next_renewal_read() -> None:
    coordinator = _polling()
    coordinator._wake_pair = coordinator._make_wake_pair()
    try:
        coordinator._dirty = False
        coordinator._poll_at = time.monotonic() + 0.05
        started = time.monotonic()
        coordinator.wait(30.0)
        assert time.monotonic() - started < 10.0  # ended by the poll, not the 30 s timeout
        assert coordinator._dirty
    finally:
        coordinator.close()
    assert coordinator._poll_at is None
