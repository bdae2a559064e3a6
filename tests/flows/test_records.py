"""Flow records and per-key counters: the ring, the HTTP fields, the counters the
metrics and status read, and what a TCP flow's begin/end costs now."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from router.daemon.metrics import per_key_metrics
from router.daemon.status import traffic
from router.flows.counters import LATENCY_BUCKETS, Histogram
from router.flows.entry import FlowEntry
from router.flows.records import record_dict
from router.flows.table import FlowTable
from sitectl.render import render_requests


def request(table: FlowTable, key: str, method: str, status: int | None, *,
            site: str | None = "west", by_router: bool = False, path: str = "/x",
            retries: tuple[str, ...] = (), grpc_status: int | None = None) -> FlowEntry:
    entry = table.begin(key, "listener", client="10.0.0.1:5000")
    table.note_request(entry, method=method, path=path)
    for reason in retries:
        table.note_attempt(entry, reason)
    table.serving(entry, f"r-{site}")
    if status is not None:
        table.note_response(entry, status=status, site=site, by_router=by_router)
    if grpc_status is not None:
        table.note_grpc_status(entry, grpc_status)
    table.end(entry, "ok" if status is not None else "reset")
    return entry


def test_ring_keeps_the_newest_and_counts_drops() -> None:
    table = FlowTable(records_max=3)
    ids = []
    for _ in range(5):
        e = table.begin("db", "connector", trace=("r1", "r2"))
        e.bytes_in, e.bytes_out = 10, 20
        table.end(e, "ok")
        ids.append(e.id)
    assert [r.id for r in table.records] == ids[-3:]
    assert table.records.dropped == 2
    assert [r.id for r in table.records.recent(2)] == [ids[4], ids[3]]
    rec = record_dict(table.records.recent(1)[0], {"r1": "a"})
    assert rec["sites"] == ["a", "r2"] and rec["outcome"] == "ok"  # an unknown id stays
    assert rec["bytes_c2s"] == 10 and rec["bytes_s2c"] == 20  # a connector's end
    assert rec["end"] is not None and rec["end"] >= rec["start"]
    assert "method" not in rec  # TCP


def test_ending_twice_records_once() -> None:
    table = FlowTable()
    e = table.begin("db", "listener")
    table.end(e, "ok")
    table.end(e, "reset")
    assert len(table.records) == 1 and e.outcome == "ok"
    assert table.stats.flows == {("db", "listener", "ok"): 1}


def test_http_fields_and_counters() -> None:
    table = FlowTable()
    e = request(table, "api", "GET", 200, retries=("north: connection refused",))
    request(table, "api", "GET", 200, site="north")
    request(table, "api", "POST", 503, site=None, by_router=True)
    request(table, "api", "PUT", 500)
    request(table, "api", "BREW", 418)  # a made-up method is one label, not a new one
    request(table, "api", "GET", None)  # the client got nothing
    request(table, "grpc", "POST", 200, grpc_status=14)
    request(table, "grpc", "POST", 200, grpc_status=0)
    assert e.method == "GET" and e.path == "/x" and e.status == 200
    assert e.attempts == 2 and e.retry_reasons == ("north: connection refused",)
    assert e.served_by_site == "west" and e.ttfb_s is not None and e.ttfb_s >= 0
    s = table.stats
    assert s.requests["api", "GET", "2xx", "west"] == 1
    assert s.requests["api", "GET", "2xx", "north"] == 1
    assert s.requests["api", "POST", "5xx", "none"] == 1
    assert s.requests["api", "OTHER", "4xx", "west"] == 1
    assert s.requests["api", "GET", "none", "none"] == 1
    assert s.requests["grpc", "POST", "grpc_14", "west"] == 1
    api = s.http["api"].as_dict()
    assert api["requests"] == 6 and api["errors"] == 3  # 503 (ours), 500, no response
    assert api["error_share"] == 0.5
    assert api["by_status_class"] == {"2xx": 2, "4xx": 1, "5xx": 2, "none": 1}
    assert s.http["grpc"].errors == 1
    assert s.http["api"].latency.count == 6
    assert s.flows["api", "listener", "ok"] == 5 and s.flows["api", "listener", "reset"] == 1


def test_request_line_as_bytes_and_the_path_without_its_query() -> None:
    table = FlowTable()
    e = table.begin("api", "listener")
    table.note_request(e, method=b"GET", path=b"/orders/7?token=secret")
    assert (e.method, e.path) == ("GET", "/orders/7")
    table.note_request(e, method="GET", path="/" + "a" * 10_000)
    assert e.path is not None and len(e.path) == 256


def test_a_tcp_flow_is_a_flow_not_a_request() -> None:
    table = FlowTable()
    table.end(table.begin("db", "listener"), "refused")
    assert table.stats.flows == {("db", "listener", "refused"): 1}
    assert not table.stats.requests and not table.stats.http


def test_serving_again_moves_the_outstanding_count() -> None:
    table = FlowTable()
    e = table.begin("api", "listener")
    table.serving(e, "r-west")
    table.serving(e, "r-north")  # the retry went elsewhere
    assert dict(table.outstanding) == {"r-north": 1}
    table.end(e, "ok")
    assert dict(table.outstanding) == {}


def test_histogram_buckets() -> None:
    h = Histogram()
    for v in (0.001, 0.005, 0.2, 11.0):
        h.observe(v)
    cum = dict(h.cumulative())
    assert cum["0.005"] == 2  # le: a value on the bound is in it
    assert cum["0.25"] == 3 and cum["10.0"] == 3 and cum["+Inf"] == 4
    assert len(cum) == len(LATENCY_BUCKETS) + 1
    assert abs(h.sum - 11.206) < 1e-9


class _PerKey(Collector):
    def __init__(self, table: FlowTable) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        return per_key_metrics(self.table)


class _View:
    def __init__(self, flows: FlowTable) -> None:
        self.flows = flows


def test_metrics_and_status_read_the_counters() -> None:
    table = FlowTable()
    request(table, "api", "GET", 200)
    request(table, "api", "GET", 502, by_router=True, site=None)
    table.end(table.begin("db", "connector"), "ok")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_PerKey(table))
    text = generate_latest(registry).decode()
    assert ('vanrouter_http_requests_total{code_class="2xx",method="GET",routing_key="api",'
            'site="west"} 1.0') in text
    assert ('vanrouter_http_requests_total{code_class="5xx",method="GET",routing_key="api",'
            'site="none"} 1.0') in text
    assert ('vanrouter_flows_closed_total{outcome="ok",role="connector",routing_key="db"} 1.0'
            in text)
    assert 'vanrouter_http_request_duration_seconds_count{routing_key="api"} 2.0' in text
    assert ('vanrouter_http_request_duration_seconds_bucket{le="+Inf",routing_key="api"} 2.0'
            in text)
    assert "vanrouter_flow_records_dropped_total 0.0" in text
    st = traffic(_View(table))  # type: ignore[arg-type]
    assert st["db"] == {"flows": {"connector": 1}}
    assert st["api"]["flows"] == {"listener": 2}
    assert st["api"]["http"]["requests"] == 2 and st["api"]["http"]["error_share"] == 0.5
    line = render_requests("api", st["api"]["http"])
    assert line.split() == ["api", "2", "requests", "(2xx", "1", "5xx", "1),", "errors",
                            "50.0%"]


def test_tcp_begin_end_cost() -> None:
    """Not a timing test: prints what 100k TCP begin/end pairs cost, with a record each."""
    table = FlowTable()
    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        e = table.begin("db", "listener", client="10.0.0.1:1", trace=("r1",))
        table.serving(e, "r2")
        e.bytes_in += 100
        table.end(e, "ok")
    took = time.perf_counter() - t0
    print(f"\n100k TCP begin/serving/end with records: {took * 1e6 / n:.2f} us each")
    assert len(table.records) == table.records.maxlen
    assert table.records.dropped == n - table.records.maxlen
    assert table.stats.flows["db", "listener", "ok"] == n
