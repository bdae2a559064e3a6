"""The router daemon: builds the task tree from the site config and owns the state.

Nursery tree:
    run
    +- link port acceptor (LinkManager.serve)   +- dialers (one per configured link)
    +- TCP listeners (one accept loop each)      +- flows (one nursery for all flows)
    +- control socket                            +- routing timer
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import signal
import ssl
import time
from collections import Counter
from dataclasses import replace
from functools import partial
from typing import Any

import trio

import certs
from router.adaptors.tcp import FlowCounters, FlowRefusedError, SocketFlow, abort_socket, peer_name
from router.daemon.control import ControlServer
from router.flows.transit import open_transit, splice_sockets
from router.net.accept import FdReserve, serve_listeners
from router.net.errors import connect_reason, guarded
from router.net.link import Link
from router.net.links import LinkManager
from router.net.logthrottle import KeyedLogThrottle
from router.protocol import FlowError, Hello, Open
from router.protocol.claim import ClaimError, decode_claim_body, refusal_for
from router.routing import (
    Candidate,
    Ed25519Signer,
    KeyAdvert,
    RoutingCore,
    RoutingError,
    choose,
    ed25519_verify,
)
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
from router.site.tokens import GrantStore, Token, TokenError

log = logging.getLogger(__name__)

ROUTE_ATTEMPTS = 3  # tries per serving site when the path (not the site) failed
ROUTE_SETTLE_S = 0.05  # wait before retrying, times the attempt number
# Turned-away clients and refused OPENs come in floods when a backend or the fd table is
# exhausted: one line per routing key per interval, with a count of the rest.
REFUSAL_LOG_INTERVAL_S = 10.0


class Outcome(enum.Enum):
    SERVED = "served"
    REFUSED = "refused"  # the serving site said no: try the next candidate
    PATH_FAILED = "path failed"  # routes are changing: the same site may work again


def _abandon(link: Link, flow_id: int, reason: str) -> None:
    """Reset a flow we can no longer serve, if it still exists."""
    link.release(flow_id)
    with contextlib.suppress(FlowError):
        link.conn.reset_flow(flow_id, reason)
    link.kick()


class Router:
    def __init__(self, site: Site, config: SiteConfig) -> None:
        self.site = site
        self.config = config
        self.ca = site.ca()
        self.keypair = site.router_keypair()
        self.signer = Ed25519Signer(site.identity_key())
        self.routing = RoutingCore(site=config.name, signer=self.signer,
                                   verify=ed25519_verify, now=trio.current_time(),
                                   refresh_interval=config.limits.routing_refresh_s,
                                   max_age=config.limits.routing_max_age_s)
        self.router_id = self.routing.router_id
        self.links = LinkManager(self)
        self.grants = GrantStore(site.grants_path)
        self.counters = FlowCounters()
        self.outstanding: Counter[str] = Counter()
        self.started = time.time()
        self._rng = random.Random()
        self._listeners: dict[tuple[str, int], trio.CancelScope] = {}
        self.listener_errors: dict[tuple[str, int], str] = {}
        self._connector_turn: Counter[str] = Counter()
        self._refusal_log = KeyedLogThrottle(REFUSAL_LOG_INTERVAL_S)
        self._server_ctx: ssl.SSLContext | None = None
        self._client_ctx: dict[str, ssl.SSLContext] = {}
        self._routing_wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._flows: trio.Nursery | None = None
        self._shutdown = trio.Event()
        self.fd_reserve = FdReserve()  # shared by every accept loop

    # ---- identity and TLS
    @property
    def name(self) -> str:
        return self.config.name

    def hello(self) -> Hello:
        return Hello(router_id=self.router_id, site=self.name,
                     max_frame_bytes=self.config.limits.max_frame_bytes,
                     keepalive_interval=self.config.limits.keepalive_interval_s)

    def server_ssl_context(self) -> ssl.SSLContext:
        if self._server_ctx is None:
            self._server_ctx = certs.server_context(
                cert_pem=self.keypair.cert_pem, key_pem=self.keypair.key_pem,
                ca_pem=self.ca.cert_pem, require_client_cert=False)
        return self._server_ctx

    def client_ssl_context(self, link_name: str) -> ssl.SSLContext:
        ctx = self._client_ctx.get(link_name)
        if ctx is None:
            ca_pem, cert_pem, key_pem = self.site.link_credentials(link_name)
            ctx = certs.client_context(cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca_pem)
            self._client_ctx[link_name] = ctx
        return ctx

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "router not running"
        return self._nursery

    # ---- running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        try:
            link_listeners = await trio.open_tcp_listeners(cfg.link_port, host=cfg.bind)
        except OSError as exc:
            raise RuntimeError(
                f"cannot listen for links on {cfg.bind}:{cfg.link_port}: {exc.strerror}"
            ) from exc
        control = ControlServer(self, self.site.control_path)
        async with trio.open_nursery() as root:
            self._nursery = root
            await root.start(control.serve)
            if cfg.metrics_port:
                # Imported only when wanted: prometheus_client adds ~10 MiB of RSS.
                from router.daemon.metrics import make_registry, serve_metrics

                await root.start(serve_metrics, make_registry(self), "127.0.0.1",
                                 cfg.metrics_port, self.fd_reserve)
            async with trio.open_nursery() as flows:
                self._flows = flows
                await root.start(self.links.serve, link_listeners)
                for lst in cfg.listeners:
                    try:
                        await self._start_listener(lst)
                    except ValueError as exc:
                        # One busy port must not keep the whole site down; status shows it.
                        self.listener_errors[(lst.host, lst.port)] = str(exc)
                        log.error("listener %s: %s", lst.key, exc)
                self._advertise_keys()
                for name in self.site.link_names():
                    self.links.add_dial(self.site.load_link(name), root)
                root.start_soon(self._routing_timer)
                root.start_soon(self._watch_signals)
                self._write_pid()
                log.info("site %s (router %s) ready: links on %s:%d", self.name,
                         self.router_id, cfg.bind, cfg.link_port)
                task_status.started()
                await self._shutdown.wait()
                await self._drain()
                flows.cancel_scope.cancel()
            root.cancel_scope.cancel()
        self._remove_pid()
        self.fd_reserve.close()
        log.info("site %s stopped", self.name)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s: draining", signal.Signals(signum).name)
                self._shutdown.set()
                return

    async def _drain(self) -> None:
        """Stop accepting, let open flows finish for up to drain_timeout_s, say GOAWAY."""
        for scope in self._listeners.values():
            scope.cancel()
        with trio.move_on_after(self.config.limits.drain_timeout_s):
            while self.counters.active:
                await trio.sleep(0.05)
        for link in self.links.all_links():
            link.close("router shutting down")
        with trio.move_on_after(1):
            while self.links.all_links():
                await trio.sleep(0.02)

    def _write_pid(self) -> None:
        # Information for people and tools only; the site lock (router.daemon.main) is what
        # keeps a second router out.
        self.site.run_dir.mkdir(mode=0o700, exist_ok=True)
        self.site.pid_path.write_text(f"{os.getpid()}\n")

    def _remove_pid(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.site.pid_path.unlink()

    # ---- routing
    def neighbour_up(self, link: Link) -> None:
        self.routing.neighbour_up(link.peer_id, link.cost, trio.current_time())
        self._flush_routing()

    def neighbour_down(self, link: Link) -> None:
        self.routing.neighbour_down(link.peer_id, trio.current_time())
        self._flush_routing()

    def neighbour_cost(self, link: Link) -> None:
        self.routing.set_cost(link.peer_id, link.cost, trio.current_time())
        self._flush_routing()

    def on_routing(self, link: Link, payload: bytes) -> None:
        try:
            self.routing.receive(link.peer_id, payload, trio.current_time())
        except RoutingError as exc:
            # A hostile neighbour can send thousands a second: one line per peer per interval.
            self._refusal_log.log(f"routing:{link.peer_id}", log, logging.WARNING,
                                  trio.current_time(), "routing message from %s dropped: %s",
                                  link.peer_site, exc)
        if link.direction == "in":
            self._adopt_cost(link)
        self._flush_routing()

    def _adopt_cost(self, link: Link) -> None:
        """The dialling side owns a link's cost (`link create --cost`, `link cost`); the
        accepting side takes it from the dialler's record, so both directions agree."""
        record = self.routing.record(link.peer_id)
        if record is None:
            return
        cost = dict(record.links).get(self.router_id)
        if cost is not None and cost != link.cost:
            link.cost = cost
            self.routing.set_cost(link.peer_id, cost, trio.current_time())

    def _flush_routing(self) -> None:
        """Send what the routing core queued; its next deadline may have moved."""
        self._send_routing()
        self._routing_wake.set()

    def _send_routing(self) -> None:
        for peer_id, payload in self.routing.outgoing():
            link = self.links.link_for(peer_id)
            if link is not None and link.closed_reason is None:
                link.conn.send_routing(payload)
                link.kick()

    async def _routing_timer(self) -> None:
        while True:
            with trio.move_on_at(self.routing.next_deadline()):
                await self._routing_wake.wait()
            self._routing_wake = trio.Event()
            self.routing.handle_timer(trio.current_time())
            self._send_routing()

    def _advertise_keys(self) -> None:
        keys: dict[str, KeyAdvert] = {}
        for con in self.config.connectors:
            prev = keys.get(con.key)
            # Several local targets for one key: advertise the best priority, summed weight.
            if prev is None:
                keys[con.key] = KeyAdvert(priority=con.priority, weight=con.weight)
            else:
                keys[con.key] = KeyAdvert(priority=min(prev.priority, con.priority),
                                          weight=prev.weight + con.weight)
        self.routing.set_keys(keys, trio.current_time())
        self.routing.set_listens([lst.key for lst in self.config.listeners],
                                 trio.current_time())
        self._flush_routing()

    # ---- listeners: clients connect here
    async def _start_listener(self, lst: ListenerConfig) -> None:
        try:
            sockets = await trio.open_tcp_listeners(lst.port, host=lst.host)
        except OSError as exc:
            raise ValueError(f"cannot listen on {lst.host}:{lst.port}: {exc.strerror}") from exc
        scope = trio.CancelScope()
        self._listeners[(lst.host, lst.port)] = scope
        self.nursery.start_soon(self._accept_clients, lst, sockets, scope)

    async def _accept_clients(self, lst: ListenerConfig, sockets: list[trio.SocketListener],
                              scope: trio.CancelScope) -> None:
        assert self._flows is not None
        with scope:
            await serve_listeners(partial(guarded, f"client of {lst.key}", self._serve_client,
                                          lst),
                                  sockets, name=f"listener {lst.key}",
                                  handler_nursery=self._flows, reserve=self.fd_reserve)

    async def _serve_client(self, lst: ListenerConfig, client: trio.SocketStream) -> None:
        """Try candidates in strategy order until one accepts; then pump. Whatever
        else ends this (no candidate, an internal error, shutdown) resets and closes
        the client: it must neither mistake it for a clean end nor leak the fd.
        An error is logged once, by `guarded` around us."""
        self.counters.active += 1
        self.counters.opened += 1
        reasons: list[str] = []
        served = False
        try:
            candidates = self.routing.candidates(lst.key)
            order = choose(candidates, lst.strategy, self.outstanding, self._rng)
            for cand in order:
                for attempt in range(1, ROUTE_ATTEMPTS + 1):
                    outcome = await self._try_candidate(lst, client, cand, reasons)
                    if outcome is Outcome.SERVED:
                        served = True  # the pump closed the client
                        return
                    if outcome is Outcome.REFUSED or attempt == ROUTE_ATTEMPTS:
                        break
                    # The path failed (a link died under the OPEN, or it met a microloop
                    # while routes change): let routing settle, then try this site again.
                    await trio.sleep(ROUTE_SETTLE_S * attempt)
                    hop = self.routing.next_hop(cand.router_id)
                    if hop is None:
                        break
                    cand = replace(cand, next_hop=hop)
            if not order:
                reasons.append("no reachable site has a connector for it")
            self.counters.refused += 1
            self._refusal_log.log(lst.key, log, logging.WARNING, trio.current_time(),
                                  "listener %s: closing client: %s", lst.key,
                                  "; ".join(reasons))
        finally:
            self.counters.active -= 1
            if not served:
                abort_socket(client)
                with trio.CancelScope(shield=True):
                    await client.aclose()

    async def _try_candidate(self, lst: ListenerConfig, client: trio.SocketStream,
                             cand: Candidate, reasons: list[str]) -> Outcome:
        if cand.next_hop is None:
            target = await self._connect_local(lst.key)
            if isinstance(target, str):
                reasons.append(target)
                return Outcome.REFUSED
            self.outstanding[cand.router_id] += 1
            try:
                await splice_sockets(client, target)
            finally:
                self.outstanding[cand.router_id] -= 1
            return Outcome.SERVED
        link = self.links.link_for(cand.next_hop)
        if link is None:
            reasons.append(f"{cand.site}: no link to next hop")
            return Outcome.PATH_FAILED
        flow = SocketFlow(link, counters=self.counters)
        open_msg = Open(routing_key=lst.key, origin_site=self.name, origin_router=self.router_id,
                        dest_router=cand.router_id, client_addr=peer_name(client),
                        trace=(self.router_id,), window=self.config.limits.flow_window_bytes)
        try:
            flow.flow_id = link.open_flow(open_msg, flow)
        except FlowError as exc:  # the link is closing
            reasons.append(f"{cand.site}: {exc}")
            return Outcome.PATH_FAILED
        try:
            await flow.wait_answer(self.config.limits.open_timeout_s)
        except FlowError as exc:
            reasons.append(f"{cand.site}: {exc}")
            return Outcome.PATH_FAILED
        except FlowRefusedError as exc:
            reasons.append(f"{cand.site}: {exc}")
            return Outcome.PATH_FAILED if exc.path_failed else Outcome.REFUSED
        except BaseException:
            _abandon(link, flow.flow_id, "opening router failed")  # the far end would wait
            raise
        self.outstanding[cand.router_id] += 1
        try:
            await flow.run(client)
        finally:
            self.outstanding[cand.router_id] -= 1
        return Outcome.SERVED

    # ---- connectors: flows arrive here
    async def _connect_local(self, key: str) -> trio.SocketStream | str:
        """Connect to a local target for `key`, rotating over several; or a reason."""
        targets = [c for c in self.config.connectors if c.key == key]
        if not targets:
            return f"site {self.name} has no connector for {key!r}"
        start = self._connector_turn[key]
        self._connector_turn[key] += 1
        errors = []
        for i in range(len(targets)):
            con = targets[(start + i) % len(targets)]
            try:
                with trio.fail_after(self.config.limits.connect_timeout_s):
                    return await trio.open_tcp_stream(con.host, con.port)
            except (OSError, trio.TooSlowError) as exc:
                errors.append(f"{con.host}:{con.port}: {connect_reason(exc)}")
        return f"site {self.name} cannot reach {key!r} target {'; '.join(errors)}"

    def on_flow_open(self, link: Link, flow_id: int, open_msg: Open) -> None:
        """Called from the link reader: must not block."""
        if open_msg.dest_router != self.router_id:
            open_transit(self, link, flow_id, open_msg)
            return
        flow = SocketFlow(link, counters=self.counters)
        flow.flow_id = flow_id
        link.flows[flow_id] = flow
        assert self._flows is not None
        self._flows.start_soon(guarded, f"flow for {open_msg.routing_key}", self._serve_open,
                               link, flow, open_msg)

    async def _serve_open(self, link: Link, flow: SocketFlow, open_msg: Open) -> None:
        self.counters.active += 1
        target: trio.SocketStream | str | None = None
        pumped = False
        try:
            target = await self._connect_local(open_msg.routing_key)
            if flow.reset_reason is not None:  # the opener gave up meanwhile
                return
            if isinstance(target, str):
                self._refusal_log.log(open_msg.routing_key, log, logging.INFO,
                                      trio.current_time(), "refused flow for %s from %s: %s",
                                      open_msg.routing_key, open_msg.origin_site, target)
                link.release(flow.flow_id)
                with contextlib.suppress(FlowError):
                    link.conn.refuse_flow(flow.flow_id, target)
                link.kick()
                return
            try:
                link.conn.accept_flow(flow.flow_id, self.config.limits.flow_window_bytes)
            except FlowError:
                return  # the flow ended meanwhile
            link.kick()
            pumped = True
            await flow.run(target)  # closes target
        except BaseException:
            if not pumped:  # an internal error: the opener must not wait for an answer
                _abandon(link, flow.flow_id, "serving router failed")
            raise
        finally:
            self.counters.active -= 1
            if isinstance(target, trio.SocketStream) and not pumped:
                abort_socket(target)
                with trio.CancelScope(shield=True):
                    await target.aclose()

    # ---- changes from the control socket
    # Each change is checked whole, then made live and saved so that a failure of
    # either leaves both as they were: what runs is what site.toml says.
    async def add_listener(self, lst: ListenerConfig) -> None:
        self._check_listener(lst)
        self._check_services(replace(self.config, listeners=(*self.config.listeners, lst)))
        await self._start_listener(lst)
        try:
            self._check_listener(lst)  # another request may have changed the config
            self._save(replace(self.config, listeners=(*self.config.listeners, lst)))
        except BaseException:
            scope = self._listeners.pop((lst.host, lst.port), None)
            if scope is not None:
                scope.cancel()  # its accept loop closes the sockets
            raise
        self._advertise_keys()

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
            self.listener_errors.pop((lst.host, lst.port), None)
            scope = self._listeners.pop((lst.host, lst.port), None)
            if scope is not None:
                scope.cancel()
        self._advertise_keys()
        return gone

    def add_connector(self, con: ConnectorConfig) -> None:
        new = replace(self.config, connectors=(*self.config.connectors, con))
        self._check_services(new)
        self._save(new)
        self._advertise_keys()

    def delete_connector(self, key: str) -> list[ConnectorConfig]:
        gone = [c for c in self.config.connectors if c.key == key]
        if not gone:
            raise ValueError(f"no connector for {key!r}")
        self._save(replace(self.config, connectors=tuple(
            c for c in self.config.connectors if c.key != key)))
        self._advertise_keys()
        return gone

    def _save(self, config: SiteConfig) -> None:
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

    def add_link(self, name: str) -> None:
        self._client_ctx.pop(name, None)
        self.links.add_dial(self.site.load_link(name), self.nursery)

    def delete_link(self, name: str) -> None:
        if name not in self.links.dials:
            raise ValueError(f"no link named {name!r}")
        self.links.remove_dial(name)
        self.site.delete_link(name)
        self._client_ctx.pop(name, None)

    def set_link_cost(self, name: str, cost: int) -> None:
        if name not in self.links.dials:
            inbound = [lk for lk in self.links.accepted if lk.name == name]
            if inbound:
                raise ValueError(f"link {name} was dialled by site {inbound[0].peer_site}, "
                                 f"which owns its cost: run `sitectl link cost` there")
            raise ValueError(f"no link named {name!r}")
        spec = self.links.dials[name].spec
        self.links.set_cost(name, cost)
        ca_pem, cert_pem, key_pem = self.site.link_credentials(name)
        self.site.save_link(replace(spec, cost=cost), ca_pem=ca_pem, cert_pem=cert_pem,
                            key_pem=key_pem)

    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """Where other sites dial us: `advertise`, else host:link_port."""
        if not self.config.advertise:
            return ((self.config.host, self.config.link_port),)
        pairs = (a.rpartition(":") for a in self.config.advertise)
        return tuple((host, int(port)) for host, _, port in pairs)

    def issue_token(self, *, expires_s: float, uses: int) -> bytes:
        now = time.time()
        code, grant = self.grants.new_grant(expires_in=expires_s, uses=uses, now=now)
        token = Token(site=self.name, endpoints=self.endpoints(),
                      ca_pem=self.ca.cert_pem, code=code, expires=grant.expires, uses=uses)
        data = token.dump(self.ca.sign_bytes(token.signed_bytes()))
        self.grants.add(grant, now=now)  # stored only once the token exists
        return data

    async def on_claim(self, body: bytes) -> dict[str, Any]:
        """A redeemer presents a code, a CSR, its name and router id: sign it if the
        grant allows and the name is free. The grant is checked first, so only a token
        holder learns which names are taken; a refused claim does not use the token.
        The reply says why a claim was refused; the caller logs it."""
        try:
            claim = decode_claim_body(body)
            grant = self.grants.check(claim.code, now=time.time())
            refusal = refusal_for(claim, own_site=self.name, own_router_id=self.router_id,
                                  linked_sites=self._linked_sites(),
                                  known=((r.router_id, r.site) for r in self.routing.records()))
            if refusal is not None:
                raise ClaimError(refusal)
            cert_pem = self.ca.sign_csr(claim.csr_pem, expected_name=claim.site,
                                        router_id=claim.router_id)
            self.grants.consume(grant)  # counted only once the certificate exists
        except (ClaimError, TokenError, certs.CertError) as exc:
            # Not logged here: anyone can send wrong claims as fast as TLS allows, so the
            # link port logs refusals with the peer's address, throttled per kind.
            return {"ok": False, "error": str(exc)}
        log.info("token redeemed by site %s (router %s)", claim.site, claim.router_id)
        return {"ok": True, "cert": cert_pem, "site": self.name, "router_id": self.router_id}

    def _linked_sites(self) -> set[str]:
        """Sites we have a live link with (either direction) or are configured to dial."""
        live = {link.peer_site for link in self.links.all_links()}
        return live | {dial.spec.peer_site for dial in self.links.dials.values()}
