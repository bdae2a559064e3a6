"""Outlier ejection and the retry budget (router/adaptors/http/health.py): pure, so time is
a parameter and every case is exact."""

from __future__ import annotations

import pytest

from router.adaptors.http.health import (
    BASE_EJECTION_S,
    CONSECUTIVE_FAILURES,
    FORGET_AFTER_S,
    MAX_EJECTION_S,
    MIN_RETRIES_PER_S,
    MIN_RETRY_BURST,
    OutlierTracker,
    RetryBudget,
    order_without_ejected,
)
from router.routing import Candidate

OK, FAIL = True, False


def cand(rid: str) -> Candidate:
    return Candidate(router_id=rid, site=f"site-{rid}", cost=1, priority=0, weight=1,
                     next_hop=None)


def fail_n(tracker: OutlierTracker, key: str, n: int, now: float) -> list[bool]:
    return [tracker.record(key, FAIL, now, reason="connection refused") for _ in range(n)]


# ---- ejection rules ----------------------------------------------------------------------

# (outcomes in order at t=0, ejected at t=0?)
@pytest.mark.parametrize(("outcomes", "ejected"), [
    ([FAIL] * 4, False),
    ([FAIL] * 5, True),
    ([FAIL] * 4 + [OK] + [FAIL] * 4, False),  # a success resets the run
    ([FAIL] * 4 + [OK] + [FAIL] * 5, True),
    ([OK] * 100, False),
    ([FAIL, OK] * 50, False),  # half failing, never five in a row
])
def test_consecutive_failures_eject(outcomes: list[bool], ejected: bool) -> None:
    tracker = OutlierTracker()
    for ok in outcomes:
        tracker.record("west", ok, 0.0)
    assert tracker.ejected("west", 0.0) is ejected
    assert not tracker.ejected("north", 0.0)


def test_record_says_when_it_ejected_once() -> None:
    tracker = OutlierTracker()
    results = fail_n(tracker, "west", CONSECUTIVE_FAILURES + 10, 0.0)
    assert results == [False] * 4 + [True] + [False] * 10  # failures while ejected: no more


# (ejection number, its duration): doubling from 30 s, capped at 300 s
@pytest.mark.parametrize(("nth", "duration"), [
    (1, 30.0), (2, 60.0), (3, 120.0), (4, 240.0), (5, 300.0), (6, 300.0), (50, 300.0),
])
def test_repeat_ejections_double_up_to_the_cap(nth: int, duration: float) -> None:
    tracker = OutlierTracker()
    now = 0.0
    for _ in range(nth):
        assert fail_n(tracker, "west", CONSECUTIVE_FAILURES, now)[-1]
        start = now
        now += 1.0
        while tracker.ejected("west", now):
            now += 1.0  # it comes back and fails again at once
    assert now - start == duration


def test_an_ejection_ends_exactly_on_time() -> None:
    tracker = OutlierTracker()
    fail_n(tracker, "west", CONSECUTIVE_FAILURES, 10.0)
    assert tracker.ejected("west", 10.0 + BASE_EJECTION_S - 0.001)
    assert not tracker.ejected("west", 10.0 + BASE_EJECTION_S)


def test_failures_while_ejected_do_not_lengthen_it_but_count_for_the_next() -> None:
    tracker = OutlierTracker()
    fail_n(tracker, "west", 5, 0.0)
    fail_n(tracker, "west", 4, 10.0)  # as the last resort, while ejected
    assert not tracker.ejected("west", BASE_EJECTION_S)
    assert tracker.record("west", FAIL, BASE_EJECTION_S)  # the fifth: ejected again, doubled
    assert tracker.ejected("west", BASE_EJECTION_S + 2 * BASE_EJECTION_S - 0.001)
    assert not tracker.ejected("west", BASE_EJECTION_S + 2 * BASE_EJECTION_S)


def test_a_success_does_not_end_an_ejection_early() -> None:
    tracker = OutlierTracker()
    fail_n(tracker, "west", 5, 0.0)
    tracker.record("west", OK, 1.0)
    assert tracker.ejected("west", 1.0)
    fail_n(tracker, "west", 4, BASE_EJECTION_S)  # the success reset the run: 4 is not enough
    assert not tracker.ejected("west", BASE_EJECTION_S)


def test_doubling_decays_after_a_long_healthy_spell() -> None:
    tracker = OutlierTracker()
    fail_n(tracker, "west", 5, 0.0)  # 30 s
    fail_n(tracker, "west", 5, 30.0)  # 60 s, until 90
    fail_n(tracker, "west", 5, 90.0 + MAX_EJECTION_S)  # still recent: 120 s
    assert tracker.ejected("west", 90.0 + MAX_EJECTION_S + 119.0)
    back = 90.0 + MAX_EJECTION_S + 120.0
    fail_n(tracker, "west", 5, back + MAX_EJECTION_S + 1.0)  # healthy long enough: 30 s again
    assert not tracker.ejected("west", back + MAX_EJECTION_S + 1.0 + BASE_EJECTION_S)


def test_keys_are_independent() -> None:
    tracker = OutlierTracker()
    for _ in range(5):
        tracker.record("10.0.0.1:8080", FAIL, 0.0)
        tracker.record("10.0.0.2:8080", OK, 0.0)
    assert tracker.ejected("10.0.0.1:8080", 0.0)
    assert not tracker.ejected("10.0.0.2:8080", 0.0)


def test_time_going_backwards_is_clamped() -> None:
    tracker = OutlierTracker()
    fail_n(tracker, "west", 5, 100.0)
    assert tracker.ejected("west", 0.0)  # read as 100: still ejected
    assert not tracker.ejected("west", 100.0 + BASE_EJECTION_S)


# ---- filter: the last key is never ejected -----------------------------------------------

# (key -> time it was ejected, or None for healthy; the keys asked; expected)
@pytest.mark.parametrize(("ejected_at", "keys", "expected"), [
    ({}, [], []),
    ({"a": None, "b": None}, ["a", "b"], ["a", "b"]),
    ({"a": 0.0, "b": None}, ["a", "b"], ["b"]),
    ({"a": 0.0, "b": None, "c": None}, ["c", "a", "b"], ["c", "b"]),  # order kept
    ({"a": 0.0}, ["a"], ["a"]),  # the only one: never ejected
    ({"a": 2.0, "b": 1.0, "c": 3.0}, ["a", "b", "c"], ["b"]),  # least recently ejected
    ({"a": 1.0, "b": 1.0, "c": 3.0}, ["c", "b", "a"], ["b", "a"]),  # ties: all of them
    ({"a": 0.0, "b": 1.0}, ["a", "zzz"], ["zzz"]),  # never seen: healthy
])
def test_filter(ejected_at: dict[str, float | None], keys: list[str],
                expected: list[str]) -> None:
    tracker = OutlierTracker()
    for key, at in sorted(ejected_at.items(), key=lambda kv: kv[1] or 0.0):
        if at is None:
            tracker.record(key, OK, 0.0)
        else:
            fail_n(tracker, key, 5, at)
    assert tracker.filter(keys, 5.0) == expected


def test_filter_takes_any_iterable() -> None:
    tracker = OutlierTracker()
    fail_n(tracker, "a", 5, 0.0)
    assert tracker.filter(iter(["a"]), 1.0) == ["a"]


# ---- why ---------------------------------------------------------------------------------

def test_why() -> None:
    tracker = OutlierTracker()
    assert tracker.why("west", 0.0) is None
    fail_n(tracker, "west", 5, 0.0)
    assert tracker.why("west", 1.0) == (
        "ejected for 30 s after 5 consecutive failures, the last: connection refused")
    assert tracker.why("west", BASE_EJECTION_S) is None
    for _ in range(5):
        tracker.record("west", FAIL, BASE_EJECTION_S, reason="503 from the application")
    assert tracker.why("west", BASE_EJECTION_S) == (
        "ejected for 60 s after 5 consecutive failures (ejection 2 in a row), "
        "the last: 503 from the application")
    tracker.record("north", FAIL, 0.0)
    assert tracker.ejections(BASE_EJECTION_S) == {"west": tracker.why("west", BASE_EJECTION_S)}


def test_why_without_a_reason() -> None:
    tracker = OutlierTracker()
    for _ in range(5):
        tracker.record("west", FAIL, 0.0)
    assert tracker.why("west", 0.0) == "ejected for 30 s after 5 consecutive failures"


# ---- memory bound ------------------------------------------------------------------------

def test_the_number_of_keys_is_capped_least_recently_seen_first() -> None:
    tracker = OutlierTracker(max_keys=3)
    for i, key in enumerate(["a", "b", "c"]):
        tracker.record(key, FAIL, float(i))
    tracker.record("a", FAIL, 3.0)  # a seen again: b is now the oldest
    tracker.record("d", FAIL, 4.0)
    assert len(tracker) == 3
    for _ in range(4):
        tracker.record("b", FAIL, 5.0)  # b was forgotten: its earlier failure no longer counts
    assert not tracker.ejected("b", 5.0)
    fail_n(tracker, "a", 3, 5.0)  # a kept its two
    assert tracker.ejected("a", 5.0)


def test_many_distinct_keys_stay_bounded() -> None:
    tracker = OutlierTracker(max_keys=100)
    for i in range(10_000):
        tracker.record(f"10.0.{i // 256}.{i % 256}:80", FAIL, float(i))
    assert len(tracker) == 100


def test_keys_not_seen_for_long_are_forgotten() -> None:
    tracker = OutlierTracker()
    fail_n(tracker, "west", 4, 0.0)
    tracker.record("north", OK, FORGET_AFTER_S)
    assert len(tracker) == 2  # exactly FORGET_AFTER_S: kept
    tracker.record("north", OK, FORGET_AFTER_S + 1.0)
    assert len(tracker) == 1
    tracker.record("west", FAIL, FORGET_AFTER_S + 1.0)  # a fresh start: 1 failure, not 5
    assert not tracker.ejected("west", FORGET_AFTER_S + 1.0)


@pytest.mark.parametrize("kwargs", [
    {"consecutive": 0}, {"max_keys": 0}, {"base_s": 0.0}, {"base_s": 400.0},
    {"forget_after_s": MAX_EJECTION_S},
])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OutlierTracker(**kwargs)  # type: ignore[arg-type]


# ---- order_without_ejected ---------------------------------------------------------------

# (ejected router ids with the time of their ejection; strategy's order; expected order)
@pytest.mark.parametrize(("ejected_at", "order", "expected"), [
    ({}, "abc", "abc"),
    ({"a": 0.0}, "abc", "bca"),
    ({"b": 0.0}, "abc", "acb"),
    ({"a": 0.0, "c": 0.0}, "abc", "bac"),  # ejected ones keep their order on ties
    ({"a": 1.0, "c": 0.0}, "abc", "bca"),  # least recently ejected first among them
    ({"a": 0.0, "b": 0.0, "c": 0.0}, "cab", "cab"),  # all ejected: none dropped
    ({"a": 2.0, "b": 1.0}, "ab", "ba"),
    ({"a": 3.0, "b": 2.0, "c": 1.0}, "abcd", "dcba"),  # by time of ejection, not just first
    ({}, "", ""),
])
def test_order_without_ejected(ejected_at: dict[str, float], order: str,
                               expected: str) -> None:
    tracker = OutlierTracker()
    for rid, at in sorted(ejected_at.items(), key=lambda kv: kv[1]):
        fail_n(tracker, rid, 5, at)
    result = order_without_ejected([cand(r) for r in order], tracker, 5.0)
    assert "".join(c.router_id for c in result) == expected


def test_an_ejected_site_returns_first_in_order_after_its_time() -> None:
    tracker = OutlierTracker()
    fail_n(tracker, "a", 5, 0.0)
    cands = [cand("a"), cand("b")]
    assert [c.router_id for c in order_without_ejected(cands, tracker, 29.0)] == ["b", "a"]
    assert [c.router_id for c in order_without_ejected(cands, tracker, 30.0)] == ["a", "b"]


# ---- retry budget ------------------------------------------------------------------------

def spend(budget: RetryBudget, now: float) -> int:
    """Retries allowed at `now` until the first refusal."""
    n = 0
    while budget.can_retry(now):
        n += 1
    return n


def test_a_new_listener_may_retry_a_few_at_once() -> None:
    budget = RetryBudget(0.0)
    assert spend(budget, 0.0) == int(MIN_RETRY_BURST)
    assert budget.denied == 1


# (original requests per second, seconds, retries wanted per request, retries allowed at most)
@pytest.mark.parametrize(("rate", "seconds", "wanted", "most"), [
    (100, 10, 2, 1000 + 30 + 3),  # an outage: retries about the requests, never twice them
    (1000, 10, 2, 10_000 + 30 + 3),
    (100, 10, 1, 1000),  # one retry each: all allowed
    (1, 10, 2, 10 + 30 + 3),  # quiet: the floor adds 3 per second
])
def test_retries_at_most_double_the_load(rate: int, seconds: int, wanted: int,
                                         most: int) -> None:
    budget = RetryBudget(0.0)
    allowed = 0
    for i in range(rate * seconds):
        now = i / rate
        budget.on_request(now)
        allowed += sum(budget.can_retry(now) for _ in range(wanted))
    assert allowed <= most
    originals = rate * seconds
    assert allowed <= originals + MIN_RETRIES_PER_S * seconds + MIN_RETRY_BURST
    if wanted == 1:
        assert allowed == originals
    else:
        assert allowed >= originals  # the budget is a ratio of 1, not a pessimism


def test_credit_is_capped() -> None:
    budget = RetryBudget(0.0, max_credit=100.0)
    for _ in range(10_000):
        budget.on_request(0.0)  # a long healthy spell
    assert budget.credit == 100.0
    assert spend(budget, 0.0) == 100  # then everything fails: at most the cap at once


# (credit spent at 0, then idle seconds, retries allowed after)
@pytest.mark.parametrize(("idle", "allowed"), [
    (0.0, 0), (0.2, 0), (1 / MIN_RETRIES_PER_S, 1), (0.7, 2), (1.0, 3), (60.0, 3),
])
def test_the_floor_refills_with_time_up_to_its_burst(idle: float, allowed: int) -> None:
    budget = RetryBudget(0.0)
    spend(budget, 0.0)
    assert spend(budget, idle) == allowed


def test_the_floor_does_not_add_to_credit_above_its_burst() -> None:
    budget = RetryBudget(0.0, max_credit=100.0)
    for _ in range(10):
        budget.on_request(0.0)
    assert budget.credit == MIN_RETRY_BURST + 10
    assert spend(budget, 1000.0) == int(MIN_RETRY_BURST) + 10


def test_no_floor_and_no_ratio_means_no_retries() -> None:
    budget = RetryBudget(0.0, ratio=0.0, min_per_s=0.0, min_burst=0.0)
    budget.on_request(0.0)
    assert not budget.can_retry(100.0)


@pytest.mark.parametrize("kwargs", [
    {"ratio": -1.0}, {"min_per_s": -1.0}, {"max_credit": 0.5}, {"min_burst": 200.0},
])
def test_bad_budget_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryBudget(0.0, **kwargs)
