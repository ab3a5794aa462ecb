"""The coordinator mode's policy (:mod:`followtheleader._core.coordination`), by a fake clock:
what a member's session thread does next, with no thread, no server and no real time."""

from __future__ import annotations

import pytest

from followtheleader._core.coordination import (
    FIRST_BACKOFF,
    GRACE,
    RESIGN_HOLD,
    SETTLE,
    Decision,
    Op,
    SessionPolicy,
)
from followtheleader._core.lease import Leadership, View
from followtheleader._core.model import Member

RENEW = 2.0  # the default TTL of 10 s, renewed every fifth of it


def view(leader: str | None = None, members: tuple[str, ...] = ("b", "a"), term: int = 7, mine: bool = False) -> View:
    held = Leadership(Member(leader), term, mine) if leader else None
    return View(held, tuple(Member(m) for m in members))


def opened(node_id: str = "b", now: float = 0.0) -> SessionPolicy:
    """A policy whose session was opened at ``now``."""
    policy = SessionPolicy(node_id, RENEW)
    assert policy.next(now) == Decision(Op.OPEN)
    policy.opened_session(now)
    return policy


def test_a_new_session_settles_then_the_best_ranked_member_claims() -> None:
    policy = opened("b", now=10.0)
    assert policy.next(10.0) == Decision(Op.RENEW)
    policy.viewed(10.01, view())  # vacant, and "b" is the best-ranked
    assert policy.next(10.01) == Decision(Op.WAIT, seconds=pytest.approx(SETTLE - 0.01))
    policy.waited()
    assert policy.next(10.3) == Decision(Op.RENEW)
    policy.viewed(10.3, view())
    assert policy.next(10.3) == Decision(Op.CLAIM)
    policy.claimed(True)
    assert policy.next(10.31) == Decision(Op.RENEW)  # at once: the view makes it leader
    policy.viewed(10.32, view("b", mine=True))
    assert policy.next(10.32) == Decision(Op.WAIT, seconds=RENEW)  # held: renew in due time


def test_the_others_give_the_best_ranked_member_a_grace_period() -> None:
    best, other = opened("b"), opened("a")
    for policy in (best, other):
        policy.next(1.0)
        policy.viewed(1.0, view())  # vacant since 1.0, the settle window long over
    assert best.next(1.0) == Decision(Op.CLAIM)
    assert other.next(1.0) == Decision(Op.WAIT, seconds=pytest.approx(GRACE))
    other.waited()
    other.next(1.2)
    other.viewed(1.2, view())  # still vacant: the grace runs from the first sight of it
    assert other.next(1.2) == Decision(Op.WAIT, seconds=pytest.approx(GRACE - 0.2))
    other.waited()
    other.next(1.5)
    other.viewed(1.5, view())
    assert other.next(1.5) == Decision(Op.CLAIM)  # the best-ranked one never came


def test_a_leadership_seen_held_restarts_the_grace_period() -> None:
    policy = opened("a")
    policy.next(1.0)
    policy.viewed(1.0, view())
    policy.waited()
    policy.next(1.2)
    policy.viewed(1.2, view("b"))  # claimed, then lost again
    assert policy.vacant_since == 0.0
    policy.waited()
    policy.next(1.4)
    policy.viewed(1.4, view())
    assert policy.next(1.4) == Decision(Op.WAIT, seconds=pytest.approx(GRACE))


def test_a_lost_claim_waits_for_the_group_to_change() -> None:
    policy = opened("b")
    policy.next(1.0)
    policy.viewed(1.0, view())
    assert policy.next(1.0).op is Op.CLAIM
    policy.claimed(False)
    assert policy.next(1.0) == Decision(Op.WAIT, seconds=RENEW)


def test_resign_releases_holds_back_then_rejoins() -> None:
    policy = opened("b")
    assert policy.next(5.0, release_term=7) == Decision(Op.RELEASE, term=7)
    policy.released(5.0)
    assert policy.next(5.0) == Decision(Op.RENEW)  # withdrawn: renew, but no rejoin yet
    policy.viewed(5.01, view(members=("a",)))
    # vacant, yet no claim while held back; woken for the end of the hold
    assert policy.next(5.01) == Decision(Op.WAIT, seconds=pytest.approx(min(RENEW, RESIGN_HOLD - 0.01)))
    policy.waited()
    policy.next(5.41)
    policy.viewed(5.41, view("a", members=("a",)))
    assert policy.next(5.41) == Decision(Op.WAIT, seconds=pytest.approx(RESIGN_HOLD - 0.41))
    policy.waited()
    assert policy.next(6.0) == Decision(Op.REJOIN)
    policy.rejoined()
    assert policy.next(6.0) == Decision(Op.RENEW)
    policy.viewed(6.0, view(members=("b", "a")))  # alone again (the other one left): it claims
    assert policy.next(6.0) == Decision(Op.CLAIM)


def test_a_failed_release_is_retried_after_the_backoff() -> None:
    policy = opened("b")
    assert policy.next(1.0, release_term=7) == Decision(Op.RELEASE, term=7)
    assert policy.failed() is True
    assert policy.next(1.0, release_term=7) == Decision(Op.BACKOFF, seconds=FIRST_BACKOFF)
    policy.waited()
    assert policy.next(1.1, release_term=7) == Decision(Op.RELEASE, term=7)


def test_errors_back_off_doubling_up_to_the_renewal_period_and_reset_once_it_answers() -> None:
    policy = opened("b")
    waits, reports = [], []
    for _ in range(7):
        assert policy.next(1.0).op is Op.RENEW
        reports.append(policy.failed())
        do = policy.next(1.0)
        assert do.op is Op.BACKOFF
        waits.append(do.seconds)
        policy.waited()
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, RENEW, RENEW])
    assert reports == [True] + [False] * 6  # the first of a streak is reported
    assert policy.opened  # an error of the service is no lost session
    assert policy.next(2.0).op is Op.RENEW
    assert policy.viewed(2.0, view("a")) is True  # "answers again"
    assert policy.viewed(2.1, view("a")) is False
    policy.next(2.1)
    policy.failed()
    assert policy.next(2.1) == Decision(Op.BACKOFF, seconds=FIRST_BACKOFF)


def test_a_short_renewal_period_still_backs_off_by_the_first_step() -> None:
    policy = SessionPolicy("b", renew_every=0.05)
    policy.next(0.0)
    policy.failed()
    policy.waited()
    policy.next(0.1)
    policy.failed()
    assert policy.next(0.1) == Decision(Op.BACKOFF, seconds=FIRST_BACKOFF)


def test_a_lost_session_is_opened_anew_and_a_lapsed_one_replaced() -> None:
    policy = opened("b", now=0.0)
    policy.next(0.5)
    assert policy.failed(lost=True) is True
    assert not policy.opened
    policy.waited()
    assert policy.next(0.6) == Decision(Op.OPEN)  # nothing to close: the session is gone
    policy.opened_session(0.6)
    assert policy.settle_until == pytest.approx(0.6 + SETTLE)
    policy.next(0.6)
    policy.viewed(0.6, view("b", mine=True))
    policy.waited()
    assert policy.next(1.0, abandon=True) == Decision(Op.REOPEN)  # the lease lapsed: replace it
    assert policy.failed() is True  # the reopen failed: a new streak (the last renewal worked)
    assert policy.opened  # so the lapsed session is still to be replaced
    policy.waited()
    assert policy.next(1.2, abandon=True) == Decision(Op.REOPEN)  # still to be replaced


def test_an_unexpected_error_is_always_reported_and_the_session_opened_anew() -> None:
    policy = opened("b")
    policy.next(1.0)
    assert policy.failed(expected=False) is True
    assert policy.next(1.0) == Decision(Op.BACKOFF, seconds=FIRST_BACKOFF)
    policy.waited()
    assert policy.failed(expected=False) is True
    assert policy.next(1.2) == Decision(Op.BACKOFF, seconds=2 * FIRST_BACKOFF)
    policy.waited()
    assert policy.next(1.4) == Decision(Op.REOPEN)  # the lease machine hears the old session is gone
    policy.opened_session(1.5)
    assert policy.next(1.5) == Decision(Op.RENEW)


def test_a_reopened_session_forgets_the_hold_and_settles_again() -> None:
    policy = opened("b")
    policy.next(1.0, release_term=3)
    policy.released(1.0)
    assert policy.rejoin_due
    policy.next(1.0)
    policy.failed(lost=True)
    policy.waited()
    assert policy.next(1.1) == Decision(Op.OPEN)
    policy.opened_session(1.1)  # a new session registers the member: nothing to rejoin
    assert not policy.rejoin_due
    policy.next(1.1)
    policy.viewed(1.1, view())
    assert policy.next(1.1) == Decision(Op.WAIT, seconds=pytest.approx(SETTLE))


@pytest.mark.parametrize("phase", ["start", "renew", "claim", "wait", "backoff"])
def test_closing_ends_the_thread_from_any_step(phase: str) -> None:
    policy = opened("b")
    if phase != "start":
        policy.next(1.0)
        if phase == "backoff":
            policy.failed()
        elif phase != "renew":
            policy.viewed(1.0, view() if phase == "claim" else view("a"))
    assert policy.next(1.0).op is not Op.CLOSE
    assert policy.next(1.0, closing=True) == Decision(Op.CLOSE)
    assert SessionPolicy("b", RENEW).next(0.0, closing=True) == Decision(Op.CLOSE)


def test_three_members_started_together_elect_the_best_ranked_one() -> None:
    """A tiny service and three policies by one fake clock: only "c" claims."""
    names = ("a", "c", "b")
    policies = {name: opened(name, now=0.0) for name in names}
    holder: str | None = None
    claims = []
    now = 0.0
    while now < 2.0:
        for name, policy in policies.items():
            for _ in range(4):  # each member's steps until it waits
                do = policy.next(now)
                if do.op is Op.RENEW:
                    policy.viewed(now, view(holder, members=("c", "b", "a"), mine=holder == name))
                elif do.op is Op.CLAIM:
                    claims.append((name, now))
                    won = holder is None
                    holder = holder or name
                    policy.claimed(won)
                else:
                    assert do.op is Op.WAIT
                    policy.waited()
                    break
        now = round(now + 0.05, 2)
    assert holder == "c" and claims == [("c", SETTLE)]
