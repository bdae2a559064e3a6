"""The console's rates (router/daemon/console/rates.py): differences of two samples
over a window of a few seconds, with an injected clock."""

from __future__ import annotations

from router.daemon.console.rates import MAX_SPAN_S, RATE_WINDOW_S, Rates, Sample, sample
from router.flows.counters import Histogram, KeyStats, KeyTotals

LINK = ("to-hub", "hub")
KEY = ("db", "listener")


def at(t: float, link_bytes: tuple[int, int] = (0, 0), opened: int = 0, failed: int = 0,
       ttfbs: tuple[float, ...] = (), requests: tuple[int, int] | None = None) -> Sample:
    ttfb = Histogram()
    for v in ttfbs:
        ttfb.observe(v)
    totals = KeyTotals(opened=opened, active=0, closed={"ok": opened - failed,
                                                       "refused": failed},
                       bytes_c2s=opened * 100, bytes_s2c=opened * 1000, ttfb=ttfb)
    http = {}
    if requests is not None:
        http["db"] = KeyStats(requests=requests[0], errors=requests[1])
    return sample(t, [(LINK, *link_bytes)], {KEY: totals}, http)


def test_rates_over_the_window() -> None:
    rates = Rates()
    assert rates.take(at(0.0)) is None  # nothing to compare with yet
    for t in range(1, 10):
        now = at(float(t), (t * 1000, t * 500), opened=t * 2)
        base = rates.take(now)
        assert base is not None
        assert now.at - base.at == min(t, RATE_WINDOW_S)
        assert Rates.link(now, base, LINK) == {"in_bytes_per_s": 1000.0,
                                               "out_bytes_per_s": 500.0}
        got = Rates.key(now, base, KEY)
        assert got["flows_per_s"] == 2.0 and got["bytes_s2c_per_s"] == 2000.0
        assert got["error_share"] == 0.0


def test_counters_that_start_again_give_no_negative_rate() -> None:
    rates = Rates()
    rates.take(at(0.0, (10_000, 10_000)))
    now = at(1.0, (100, 50))  # the link came up again: its counters restarted
    assert Rates.link(now, rates.take(now), LINK) == {"in_bytes_per_s": 0.0,
                                                      "out_bytes_per_s": 0.0}


def test_after_a_pause_the_rate_spans_it_unless_too_long() -> None:
    rates = Rates()
    rates.take(at(0.0, (0, 0)))
    now = at(30.0, (3000, 0))
    base = rates.take(now)
    assert base is not None and base.at == 0.0
    assert Rates.link(now, base, LINK)["in_bytes_per_s"] == 100.0
    later = at(30.0 + MAX_SPAN_S + 1, (9000, 0))
    assert rates.take(later) is None  # a minute's silence: no rate at all
    assert Rates.link(later, None, LINK)["in_bytes_per_s"] is None


def test_ttfb_and_errors_of_the_window_and_of_all_time() -> None:
    rates = Rates()
    rates.take(at(0.0, opened=10, failed=5, ttfbs=(4.0,) * 10))
    now = at(2.0, opened=30, failed=5, ttfbs=(4.0,) * 10 + (0.002,) * 20)
    got = Rates.key(now, rates.take(now), KEY)
    assert got["error_share"] == 0.0  # none of the 20 flows of the window failed
    assert got["error_share_total"] == round(5 / 30, 4)
    assert got["ttfb_p95_ms"] is not None and got["ttfb_p95_ms"] <= 2.5  # the window's
    assert got["ttfb_p95_ms_total"] is not None and got["ttfb_p95_ms_total"] > 1000


def test_http_keys_count_request_errors() -> None:
    rates = Rates()
    rates.take(at(0.0, opened=1, requests=(10, 0)))
    now = at(1.0, opened=1, requests=(20, 5))  # one connection, 10 requests, 5 failed
    got = Rates.key(now, rates.take(now), KEY)
    assert got["error_share"] == 0.5 and got["error_share_total"] == 0.25
