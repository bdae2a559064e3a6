"""The router's Prometheus metrics: a collector that reads its counters at scrape time.

Counters are plain ints kept where the work happens (the flow table's per-key
`Counters`, the link table's `LinkTotals`, the routing core); nothing on the data path
calls into prometheus_client. The registry is the router's own (never the global one),
served on the admin port (web_routes.py). Every metric is listed in docs/metrics.md, and
a test compares that list with a live scrape: change both together. Labels never carry
an address, a port or a flow id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from router.daemon.view import RouterView
from router.flows.table import FlowTable


class RouterCollector(Collector):
    def __init__(self, router: RouterView) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        r = self.router
        info = GaugeMetricFamily("vanrouter_site_info", "The site this router serves",
                                 labels=["site"])
        info.add_metric([r.config.name], 1)
        yield info
        yield GaugeMetricFamily("vanrouter_start_time_seconds",
                                "When the router started, Unix time", value=r.started)
        yield from per_key_metrics(r.flows)
        yield from link_metrics(r)
        yield from routing_metrics(r)


def per_key_metrics(table: FlowTable) -> Iterator[Metric]:
    """Flows per routing key and role, HTTP requests per key, and the record ring."""
    labels = ["routing_key", "role"]
    opened = CounterMetricFamily("vanrouter_flows_opened", "Flows started", labels=labels)
    closed = CounterMetricFamily("vanrouter_flows_closed", "Flows ended, by outcome",
                                 labels=[*labels, "outcome"])
    active = GaugeMetricFamily("vanrouter_flows_active", "Flows open now", labels=labels)
    moved = CounterMetricFamily(
        "vanrouter_flow_bytes", "Bytes of flows (c2s: client to server, s2c: back)",
        labels=[*labels, "direction"], unit="bytes")
    ttfb = HistogramMetricFamily(
        "vanrouter_flow_ttfb_seconds",
        "Time from a flow's start to the first byte from the serving side",
        labels=labels)
    for (key, role), t in sorted(table.stats.totals(table.entries()).items()):
        opened.add_metric([key, role], t.opened)
        for outcome, n in t.closed.items():
            closed.add_metric([key, role, outcome], n)
        active.add_metric([key, role], t.active)
        moved.add_metric([key, role, "c2s"], t.bytes_c2s)
        moved.add_metric([key, role, "s2c"], t.bytes_s2c)
        if t.ttfb.count:  # 15 series each: none for an end that never sees a first byte
            ttfb.add_metric([key, role], t.ttfb.cumulative(), sum_value=t.ttfb.sum)
    yield from (opened, closed, active, moved, ttfb)
    requests = CounterMetricFamily(
        "vanrouter_http_requests", "HTTP requests answered by an http listener here",
        labels=["routing_key", "method", "code_class", "site"])
    for label_values, n in sorted(table.stats.requests.items()):
        requests.add_metric(list(label_values), n)
    yield requests
    duration = HistogramMetricFamily(
        "vanrouter_http_request_duration_seconds",
        "HTTP request duration, from its head to the end of the response",
        labels=["routing_key"])
    for key, st in sorted(table.stats.http.items()):
        duration.add_metric([key], st.latency.cumulative(), sum_value=st.latency.sum)
    yield duration
    yield CounterMetricFamily("vanrouter_flow_records_dropped",
                              "Flow records dropped from the full ring (oldest first)",
                              value=table.records.dropped)
    yield GaugeMetricFamily("vanrouter_flow_records", "Flow records held",
                            value=len(table.records))


def link_metrics(r: RouterView) -> Iterator[Metric]:
    labels = ["link", "peer_site"]
    up = GaugeMetricFamily("vanrouter_link_up", "1 if the link is up", labels=labels)
    rtt = GaugeMetricFamily("vanrouter_link_rtt_seconds", "Last keepalive round trip",
                            labels=labels)
    moved = CounterMetricFamily(
        "vanrouter_link_bytes", "TLS bytes on the link (in: received, out: sent)",
        labels=[*labels, "direction"], unit="bytes")
    reconnects = CounterMetricFamily(
        "vanrouter_link_reconnects", "Times the link came up again after the first",
        labels=labels)
    for s in r.links.samples():
        if s.up is not None:
            up.add_metric([s.link, s.peer_site], 1 if s.up else 0)
        if s.rtt is not None:
            rtt.add_metric([s.link, s.peer_site], s.rtt)
        moved.add_metric([s.link, s.peer_site, "in"], s.bytes_in)
        moved.add_metric([s.link, s.peer_site, "out"], s.bytes_out)
        reconnects.add_metric([s.link, s.peer_site], s.reconnects)
    yield from (up, rtt, moved, reconnects)


def routing_metrics(r: RouterView) -> Iterator[Metric]:
    core = r.routing
    yield GaugeMetricFamily("vanrouter_routers_known",
                            "Routers in the link-state database (this one included)",
                            value=len(core.records()))
    yield GaugeMetricFamily("vanrouter_routers_reachable",
                            "Routers with a path from this one (this one included)",
                            value=len(core.reachable()))
    yield CounterMetricFamily("vanrouter_routing_changes",
                              "Changes to the network: a router, link, cost or key came, "
                              "went or changed", value=core.changes)
    ago = max(0.0, trio.current_time() - core.changed_at)
    yield GaugeMetricFamily("vanrouter_routing_last_change_timestamp_seconds",
                            "When the network last changed, Unix time",
                            value=time.time() - ago)


def make_registry(router: RouterView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(router))
    return registry
