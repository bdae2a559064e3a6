"""Site administration: listener, connector and link changes, live and persisted.

Each change is checked whole, then made live and saved, so that a failure of either
leaves both as they were: what runs is what site.toml says. The control socket
calls these; the current config lives here. Without a site directory (a router in
memory, in tests) changes are live only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

import trio

from router.adaptors.listeners import Listeners
from router.daemon.identity import Identity
from router.daemon.routing_agent import RoutingAgent
from router.net.links import LinkTable
from router.routing.rules import RouteRule
from router.site import listener_edit as edit
from router.site.config import (
    ConnectorConfig,
    ListenerConfig,
    SiteConfig,
    load_config,
    port_clash,
    services_problem,
)
from router.site.directory import Site
from router.site.errors import ConfigError, SiteError


class Targets(Protocol):
    """An adaptor's connectors: it takes the targets of its own protocol."""

    def set_targets(self, connectors: Sequence[ConnectorConfig]) -> None: ...


class SiteAdmin:
    def __init__(self, *, site: Site | None, config: SiteConfig, identity: Identity,
                 links: LinkTable, listeners: Listeners, connectors: Sequence[Targets],
                 agent: RoutingAgent) -> None:
        self.site = site
        self.config = config
        self._identity = identity
        self._links = links
        self._listeners = listeners
        self._connectors = connectors
        self._agent = agent
        self.nursery: trio.Nursery | None = None  # where listeners and dialers run

    def _nursery(self) -> trio.Nursery:
        assert self.nursery is not None, "router not running"
        return self.nursery

    def apply(self) -> None:
        """Make the services of the current config live: targets and adverts."""
        for connectors in self._connectors:  # each adaptor takes the targets of its protocol
            connectors.set_targets(self.config.connectors)
        self._agent.advertise(self.config.connectors, self.config.listeners)

    # ---- listeners and connectors
    async def add_listener(self, lst: ListenerConfig) -> None:
        self._check_listener(lst)
        self._check_services(replace(self.config, listeners=(*self.config.listeners, lst)))
        await self._listeners.start(lst, self._nursery())
        try:
            self._check_listener(lst)  # another request may have changed the config
            self._save(replace(self.config, listeners=(*self.config.listeners, lst)))
        except BaseException:
            self._listeners.stop(lst)
            raise
        self.apply()

    def _check_listener(self, lst: ListenerConfig) -> None:
        clash = port_clash(self.config, lst, self.config.listeners)
        if clash is not None:  # the rule and the words that site.toml's check uses
            field, why = clash
            raise ValueError(f"[listener] {field}: {why}")

    @staticmethod
    def _check_services(config: SiteConfig) -> None:
        problem = services_problem(config)
        if problem is not None:
            kind, _, field, why = problem
            raise ValueError(f"[{kind}] {field}: {why}")

    def delete_listener(self, key: str) -> list[ListenerConfig]:
        gone = [lst for lst in self.config.listeners if lst.key == key]
        if not gone:
            raise ValueError(f"no listener for {key!r}")
        self._save(replace(self.config, listeners=tuple(
            lst for lst in self.config.listeners if lst.key != key)))
        for lst in gone:  # saved: now stop them
            self._listeners.stop(lst)
        self.apply()
        return gone

    # ---- HTTP listener options and routes
    def set_listener(self, key: str, changes: dict[str, Any]) -> list[ListenerConfig]:
        """Change options of every listener of `key`; checked whole as site.toml is."""
        return self._change_listeners(key, edit.set_options(changes))

    def add_route(self, key: str, rule: RouteRule) -> list[ListenerConfig]:
        return self._change_listeners(key, edit.add_route(rule))

    def delete_route(self, key: str, number: int) -> tuple[RouteRule, list[ListenerConfig]]:
        """Delete route `number` (1-based, as `route list` shows them)."""
        rule = edit.route_at(self.config, key, number)
        changed = self._change_listeners(key, edit.delete_route(number))
        assert rule is not None  # delete_route refused a number out of range
        return rule, changed

    def _change_listeners(self, key: str, how: edit.Edit) -> list[ListenerConfig]:
        """Checked whole and saved; nothing changes on an error."""
        new, changed = edit.edit_listeners(self.config, key, how)
        self._save(new)  # listeners read their current config per client or request
        return changed

    def add_connector(self, con: ConnectorConfig) -> None:
        new = replace(self.config, connectors=(*self.config.connectors, con))
        self._check_services(new)
        self._save(new)
        self.apply()

    def delete_connector(self, key: str) -> list[ConnectorConfig]:
        gone = [c for c in self.config.connectors if c.key == key]
        if not gone:
            raise ValueError(f"no connector for {key!r}")
        self._save(replace(self.config, connectors=tuple(
            c for c in self.config.connectors if c.key != key)))
        self.apply()
        return gone

    def _save(self, config: SiteConfig) -> None:
        if self.site is None:
            self.config = config
            return
        # site.toml is human-editable: if it no longer says what this router runs, a
        # hand edit since the start would be lost under this save. Refuse instead.
        try:
            on_disk = load_config(self.site.config_path)
        except ConfigError as exc:
            raise SiteError(f"site.toml was edited since the router started and is not "
                            f"valid now ({exc}); fix it, then restart the router") from None
        if on_disk != self.config:
            raise SiteError(f"{self.site.config_path} was edited since the router started; "
                            "restart the router to apply the edit (nothing was changed)")
        self.site.save_config(config)  # raises (and changes nothing) if it cannot
        self.config = config

    # ---- links
    def _site(self) -> Site:
        if self.site is None:
            raise SiteError("this router has no site directory")
        return self.site

    def add_link(self, name: str) -> None:
        self._identity.forget_link(name)
        self._links.add_dial(self._site().load_link(name), self._nursery())

    def delete_link(self, name: str) -> None:
        if name not in self._links.dials:
            raise ValueError(f"no link named {name!r}")
        self._links.remove_dial(name)
        self._site().delete_link(name)
        self._identity.forget_link(name)

    def set_link_cost(self, name: str, cost: int) -> None:
        if name not in self._links.dials:
            inbound = [lk for lk in self._links.accepted if lk.name == name]
            if inbound:
                raise ValueError(f"link {name} was dialled by site {inbound[0].peer_site}, "
                                 f"which owns its cost: run `sitectl link cost` there")
            raise ValueError(f"no link named {name!r}")
        self._links.set_cost(name, cost)
        site = self._site()
        # From the file: the router saves renewals there (the dial's copy may be older).
        spec = site.load_link(name)
        ca_pem, cert_pem, key_pem = site.link_credentials(name)
        site.save_link(replace(spec, cost=cost), ca_pem=ca_pem, cert_pem=cert_pem,
                       key_pem=key_pem)
