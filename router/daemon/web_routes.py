"""The pages of the router's admin port: /metrics, /healthz, /readyz.

`admin_routes` builds the table the router serves (`Router.web`); the console adds
its own routes to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from router.daemon.view import RouterView
from router.daemon.web import Routes, WebRequest, WebResponse

if TYPE_CHECKING:  # imported at the first scrape (see _Metrics)
    from prometheus_client import CollectorRegistry

NotReady = Callable[[], str | None]  # why the router is not ready, None once it is


def admin_routes(view: RouterView, not_ready: NotReady) -> Routes:
    routes = Routes()
    routes.add("/healthz", _healthz)
    routes.add("/readyz", _Readyz(not_ready))
    routes.add("/metrics", _Metrics(view))
    return routes


async def _healthz(request: WebRequest) -> WebResponse:
    """Answered while the router's event loop runs: that is all it says."""
    return WebResponse.text(200, "ok", headers=(("cache-control", "no-store"),))


class _Readyz:
    """200 once the listeners and the link acceptor run, 503 with the reason before
    (starting) and after (draining)."""

    def __init__(self, not_ready: NotReady) -> None:
        self._not_ready = not_ready

    async def __call__(self, request: WebRequest) -> WebResponse:
        why = self._not_ready()
        nocache = (("cache-control", "no-store"),)
        if why is None:
            return WebResponse.text(200, "ready", headers=nocache)
        return WebResponse.text(503, f"not ready: {why}", headers=nocache)


class _Metrics:
    """The Prometheus text format from the router's own registry, made at the first
    scrape (prometheus_client's exposition is 80 ms and 3 MiB: not for a router that is
    never scraped)."""

    def __init__(self, view: RouterView) -> None:
        self._view = view
        self._registry: CollectorRegistry | None = None

    async def __call__(self, request: WebRequest) -> WebResponse:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        from router.daemon.metrics import make_registry

        if self._registry is None:
            self._registry = make_registry(self._view)
        return WebResponse(200, generate_latest(self._registry),
                           content_type=CONTENT_TYPE_LATEST)
