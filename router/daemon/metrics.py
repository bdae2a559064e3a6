"""Prometheus metrics on an optional HTTP port (`metrics_port` in the config).

A collector reads the router's state at scrape time, so the hot path carries no
instrumentation; the registry is per router (never the global one), and the HTTP
endpoint is a small trio server (prometheus_client's own server would start a thread).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from functools import partial

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from router.daemon.view import RouterView
from router.flows.table import FlowTable
from router.net.accept import FdReserve, serve_listeners
from router.net.errors import guarded

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 8192


class RouterCollector(Collector):
    def __init__(self, router: RouterView) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        r = self.router
        c = r.flows
        yield GaugeMetricFamily("vanrouter_flows_active", "Flows open now", value=c.active)
        yield CounterMetricFamily("vanrouter_flows_opened", "Flows started here", value=c.opened)
        yield CounterMetricFamily("vanrouter_flows_refused",
                                  "Client connections closed for want of a serving site",
                                  value=c.refused)
        moved = CounterMetricFamily("vanrouter_flow_bytes", "Bytes moved by local flows",
                                    labels=["direction"])
        moved.add_metric(["to_link"], c.bytes_out)
        moved.add_metric(["to_socket"], c.bytes_in)
        yield moved
        yield from per_key_metrics(c)
        up = GaugeMetricFamily("vanrouter_link_up", "1 if the link is up",
                               labels=["link", "peer_site", "direction"])
        rtt = GaugeMetricFamily("vanrouter_link_rtt_seconds", "Last keepalive round trip",
                                labels=["link", "peer_site"])
        link_bytes = CounterMetricFamily("vanrouter_link_bytes", "TLS bytes on the link",
                                         labels=["link", "peer_site", "direction"])
        for name, dial in r.links.dials.items():
            up.add_metric([name, dial.spec.peer_site, "out"], 1 if dial.link else 0)
        for link in r.links.all_links():
            if link.direction == "in":
                up.add_metric([link.name, link.peer_site, "in"], 1)
            if link.rtt is not None:
                rtt.add_metric([link.name, link.peer_site], link.rtt)
            link_bytes.add_metric([link.name, link.peer_site, "in"], link.bytes_in)
            link_bytes.add_metric([link.name, link.peer_site, "out"], link.bytes_out)
        yield up
        yield rtt
        yield link_bytes
        yield GaugeMetricFamily("vanrouter_routers_known", "Routers in the link-state database",
                                value=len(r.routing.records()))



def per_key_metrics(c: FlowTable) -> Iterator[Metric]:
    """Counters per routing key, kept by the flow table as flows and requests end."""
    flows = CounterMetricFamily("vanrouter_flows", "Flows ended, by routing key",
                                labels=["key", "role", "outcome"])
    for (key, role, outcome), n in sorted(c.stats.flows.items()):
        flows.add_metric([key, role, outcome], n)
    yield flows
    requests = CounterMetricFamily(
        "vanrouter_http_requests", "HTTP requests answered by an http listener here",
        labels=["key", "method", "status_class", "site"])
    for labels, n in sorted(c.stats.requests.items()):
        requests.add_metric(list(labels), n)
    yield requests
    duration = HistogramMetricFamily(
        "vanrouter_http_request_duration_seconds",
        "HTTP request duration, from its head to the end of the response",
        labels=["key"])
    for key, st in sorted(c.stats.http.items()):
        duration.add_metric([key], st.latency.cumulative(), sum_value=st.latency.sum)
    yield duration
    yield CounterMetricFamily("vanrouter_flow_records_dropped",
                              "Flow records dropped from the full ring (oldest first)",
                              value=c.records.dropped)


def make_registry(router: RouterView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(router))
    return registry


async def serve_metrics(registry: CollectorRegistry, host: str, port: int,
                        reserve: FdReserve | None = None,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve /metrics; at the fd limit a scraper is turned away at once on `reserve`."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started()
    log.info("metrics on http://%s:%d/metrics", host, port)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST_BYTES:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
            parts = request.split(b" ", 2)
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1] in (b"/metrics", b"/"):
                body = generate_latest(registry)
                head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
            else:
                body = b"not found\n"
                head = (b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n"
                        b"Connection: close\r\n\r\n" % len(body))
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(head + body)

    await serve_listeners(partial(guarded, "metrics request", handle), listeners,
                          name="metrics", reserve=reserve)
