"""What status, metrics and the control socket read of a running router."""

from __future__ import annotations

from typing import Protocol

from router.adaptors.listeners import Listeners
from router.flows.table import FlowTable
from router.net.links import LinkTable
from router.routing import RoutingCore
from router.routing.summaries import SummaryTable
from router.site.config import SiteConfig


class RouterView(Protocol):
    @property
    def config(self) -> SiteConfig: ...
    @property
    def router_id(self) -> str: ...
    @property
    def started(self) -> float: ...
    @property
    def routing(self) -> RoutingCore: ...
    @property
    def summaries(self) -> SummaryTable: ...
    @property
    def links(self) -> LinkTable: ...
    @property
    def flows(self) -> FlowTable: ...
    @property
    def listeners(self) -> Listeners: ...
    def endpoints(self) -> tuple[tuple[str, int], ...]: ...
