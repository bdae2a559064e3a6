"""Changes to a listener's HTTP options and routes, as pure edits of a SiteConfig.

The running router (SiteAdmin) and sitectl's offline edit make the same change the
same way: each listener of the key goes to its table, is edited, and comes back
through the reader site.toml uses, so the result is checked whole and an error reads
as it would in the file. Raises ValueError (or ConfigError) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from router.routing.rules import MAX_RULES, RouteRule
from router.site.config import ListenerConfig, SiteConfig, listener_from, listener_table
from router.site.fields import FieldReader
from router.site.http_fields import describe_route, route_table

SETTABLE = ("strategy", "retries", "timeout_s", "affinity")  # not the port, key or protocol
Edit = Callable[[dict[str, Any]], dict[str, Any]]


def edit_listeners(config: SiteConfig, key: str, edit: Edit, source: Path = Path("request")
                   ) -> tuple[SiteConfig, list[ListenerConfig]]:
    """The config with every listener of `key` edited, and those listeners."""
    if not any(lst.key == key for lst in config.listeners):
        raise ValueError(f"no listener for {key!r}")
    new: list[ListenerConfig] = []
    changed: list[ListenerConfig] = []
    for lst in config.listeners:
        if lst.key == key:
            lst = listener_from(FieldReader(source, "", "listener", edit(listener_table(lst))))
            changed.append(lst)
        new.append(lst)
    return replace(config, listeners=tuple(new)), changed


def set_options(changes: dict[str, Any]) -> Edit:
    unknown = sorted(set(changes) - set(SETTABLE))
    if unknown:
        raise ValueError(f"[listener] {unknown[0]}: cannot be changed on an existing "
                         f"listener (only {', '.join(SETTABLE)})")
    return lambda table: {**table, **changes}


def _require_http(table: dict[str, Any]) -> None:
    if table.get("protocol", "tcp") != "http":
        raise ValueError(f"listener {table['key']!r} is a tcp listener: routes need one "
                         "created with --protocol http")


def add_route(rule: RouteRule) -> Edit:
    def add(table: dict[str, Any]) -> dict[str, Any]:
        _require_http(table)
        routes = table.get("route", [])
        if len(routes) >= MAX_RULES:
            raise ValueError(f"listener {table['key']!r} has {MAX_RULES} routes, "
                             "the most it takes")
        return {**table, "route": [*routes, route_table(rule)]}
    return add


def delete_route(number: int) -> Edit:
    """Route `number`, counted from 1 as `sitectl route list` shows them."""
    def delete(table: dict[str, Any]) -> dict[str, Any]:
        _require_http(table)
        routes = list(table.get("route", []))
        if not 1 <= number <= len(routes):
            raise ValueError(f"listener {table['key']!r} has no route {number} "
                             f"(it has {len(routes)})")
        del routes[number - 1]
        return {**table, "route": routes}
    return delete


def route_at(config: SiteConfig, key: str, number: int) -> RouteRule | None:
    for lst in config.listeners:
        if lst.key == key and 1 <= number <= len(lst.routes):
            return lst.routes[number - 1]
    return None


def listener_status(lst: ListenerConfig) -> dict[str, Any]:
    """Its config; an HTTP listener's options with their values (defaults too) and
    its routes numbered as `route delete` takes them, first match wins."""
    out = {"key": lst.key, "host": lst.host, "port": lst.port, "strategy": lst.strategy,
           "protocol": lst.protocol}
    if lst.protocol == "http":
        out |= {"retries": lst.retries, "timeout_s": lst.timeout_s, "affinity": lst.affinity,
                "routes": [{"number": i, **route_table(rule), "text": describe_route(rule)}
                           for i, rule in enumerate(lst.routes, start=1)]}
    return out
