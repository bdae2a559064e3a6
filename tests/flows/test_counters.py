"""Per-key counters (flows/counters.py): by role and outcome, bytes each way, time to
first byte, open flows added at read time, and label values that stay bounded."""

from __future__ import annotations

import pytest

from router.flows.counters import OTHER_KEY, Counters, Histogram, status_class
from router.flows.entry import FlowEntry, Outcome, Role


def ended(key: str, role: Role, outcome: Outcome = "ok", *, bytes_in: int = 0,
          bytes_out: int = 0, ttfb: float | None = None) -> FlowEntry:
    e = FlowEntry(id=1, key=key, role=role, client="10.0.0.1:1", trace=(), start=100.0)
    e.bytes_in, e.bytes_out, e.ttfb_s = bytes_in, bytes_out, ttfb
    e.end, e.outcome = 101.0, outcome
    return e


def test_totals_by_role_with_bytes_each_way_and_open_flows_added() -> None:
    c = Counters()
    # The listener's socket is the client's: what it sends toward the link is c2s.
    c.add(ended("db", "listener", bytes_out=10, bytes_in=200, ttfb=0.004))
    c.add(ended("db", "listener", "refused"))
    c.add(ended("db", "connector", "reset", bytes_in=10, bytes_out=200))
    open_now = ended("db", "listener", bytes_out=5, bytes_in=7)
    open_now.end = open_now.outcome = None
    t = c.totals([open_now])
    lst, con = t["db", "listener"], t["db", "connector"]
    assert (lst.opened, lst.active, lst.bytes_c2s, lst.bytes_s2c) == (3, 1, 15, 207)
    assert lst.closed == {"ok": 1, "refused": 1, "reset": 0, "error": 0}
    assert (con.opened, con.active, con.bytes_c2s, con.bytes_s2c) == (1, 0, 10, 200)
    assert con.closed["reset"] == 1
    assert lst.ttfb.count == 1 and con.ttfb.count == 0  # only flows that had a first byte
    assert c.flows_by_key() == {"db": {"listener": 2, "connector": 1}}
    assert c.flows["db", "listener", "refused"] == 1


def test_keys_past_the_cap_are_counted_as_other() -> None:
    c = Counters(max_keys=2)
    for key in ("a", "b", "made-up-1", "made-up-2"):
        c.add(ended(key, "connector", "refused"))
    assert set(c.roles) == {("a", "connector"), ("b", "connector"), (OTHER_KEY, "connector")}
    assert c.roles[OTHER_KEY, "connector"].closed["refused"] == 2
    c.add(ended("a", "connector"))  # a key already counted keeps its own series
    assert c.roles["a", "connector"].closed["ok"] == 1
    live = ended("made-up-3", "connector")
    live.end = live.outcome = None
    assert c.totals([live])[OTHER_KEY, "connector"].active == 1


@pytest.mark.parametrize(("status", "grpc", "label"), [
    (200, None, "2xx"), (503, None, "5xx"), (None, None, "none"), (200, 14, "grpc_14"),
    (200, 16, "grpc_16"), (200, 17, "grpc_other"), (200, 123456, "grpc_other"),
])
def test_code_class_is_bounded(status: int | None, grpc: int | None, label: str) -> None:
    e = ended("api", "listener")
    e.status, e.grpc_status = status, grpc
    assert status_class(e) == label


def test_histogram_quantiles_as_prometheus_estimates_them() -> None:
    h = Histogram(bounds=(0.01, 0.1, 1.0))
    assert h.quantile(0.5) is None
    for v in [0.005] * 50 + [0.05] * 40 + [0.5] * 9 + [5.0]:
        h.observe(v)
    assert h.quantile(0.5) == pytest.approx(0.01)  # the top of the first bucket
    assert h.quantile(0.7) == pytest.approx(0.01 + 0.09 * 20 / 40)
    assert h.quantile(0.999) == 1.0  # in +Inf: the highest bound
    snap = h.copy()
    for _ in range(10):
        h.observe(0.5)
    assert h.quantile(0.5, since=snap) == pytest.approx(0.1 + 0.9 * 0.5)
