"""The router: assembles the parts and runs their task tree. No job of its own.

    run (root nursery)
    +- admin port (web.py: /metrics, /healthz, /readyz), control socket (site mode)
    +- flow table: every flow's tasks   +- link port acceptor, dialers (link table)
    +- TCP listeners' accept loops      +- routing agent timer, signals

A flow: client socket -> Listeners -> Forwarder.open -> link -> (Transit on
other routers) -> Forwarder.on_open -> TcpConnectors -> target socket.

Built from a site directory (`from_site`: control socket, pid file, persistence),
or from an in-memory Identity and config with injected connect functions, for
tests that run several routers in one trio.run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from functools import partial
from typing import Any

import trio

from router.adaptors.http.connector import HttpConnectors
from router.adaptors.http.frontend import HttpFrontend
from router.adaptors.http.limits import http_limits
from router.adaptors.listeners import Listeners
from router.adaptors.tcp import Connect, TcpClients, TcpConnectors
from router.daemon.admin import SiteAdmin
from router.daemon.certsigner import CertSigner
from router.daemon.console import Console, new_token
from router.daemon.control import ControlServer
from router.daemon.identity import Identity
from router.daemon.issuer import TokenIssuer
from router.daemon.notify import sd_notify
from router.daemon.routing_agent import RoutingAgent
from router.daemon.servercert import ServerCertState, check_at_start, keep_renewed
from router.daemon.traffic import TrafficMeter
from router.daemon.web import serve_web
from router.daemon.web_routes import admin_routes
from router.endpoint import Endpoint
from router.flows.forwarder import Forwarder
from router.flows.netrecords import RecordsServer, site_names
from router.flows.recordwire import RECORDS_KEY
from router.flows.table import FlowTable
from router.net.accept import FdReserve
from router.net.link import Link
from router.net.links import LinkTable
from router.net.renewal import Renewals
from router.net.side import FlowSide
from router.net.sockets import open_tcp
from router.protocol import Open
from router.routing import RoutingCore, ed25519_verify
from router.routing.summaries import SummaryTable
from router.site.certrecords import IssuedCerts, Revocations
from router.site.config import ListenerConfig, SiteConfig, admin_url
from router.site.directory import Site
from router.site.tokens import GrantStore

log = logging.getLogger(__name__)


class Router:
    def __init__(self, identity: Identity, config: SiteConfig, *, site: Site | None = None,
                 connect_link: Connect = open_tcp, connect_target: Connect = open_tcp
                 ) -> None:
        limits = config.limits
        self.identity = identity
        self.site = site
        self.started = time.time()
        self.fd_reserve = FdReserve()  # shared by every accept loop
        self.routing = RoutingCore(site=config.name, signer=identity.signer,
                                   verify=ed25519_verify, now=trio.current_time(),
                                   refresh_interval=limits.routing_refresh_s,
                                   max_age=limits.routing_max_age_s)
        self.router_id = self.routing.router_id
        self.flows = FlowTable(limits.flow_records_max, limits.flow_records_ttl_s,
                               site=config.name, router_id=self.router_id)
        self.summaries = SummaryTable(core=self.routing, signer=identity.signer,
                                      verify=ed25519_verify, now=trio.current_time(),
                                      interval_s=limits.traffic_summary_s)
        self.agent = RoutingAgent(self.routing, send=self._send_routing,
                                  summaries=self.summaries)
        self.records_server = RecordsServer(table=self.flows, site=config.name,
                                            names=lambda: site_names(self.routing))
        self.connectors = TcpConnectors(site=config.name, table=self.flows,
                                        window=limits.flow_window_bytes,
                                        connect_timeout=limits.connect_timeout_s,
                                        connect=connect_target)
        self.http_connectors = HttpConnectors(site=config.name, table=self.flows,
                                              window=limits.flow_window_bytes,
                                              connect_timeout=limits.connect_timeout_s,
                                              connect=connect_target)
        self.forwarder = Forwarder(site=config.name, routing=self.routing,
                                   link_for=self._link_for, table=self.flows,
                                   window=limits.flow_window_bytes,
                                   open_timeout=limits.open_timeout_s,
                                   serve_local=self._serve_local)
        # Link certificates: signed short-lived, recorded, renewed over the links, and
        # refused to revoked sites; the server certificate renews itself.
        self.cert_signer = CertSigner(
            site=config.name, ca=identity.ca, lifetime_s=self._cert_lifetime,
            issued=IssuedCerts(None if site is None else site.issued_path),
            revocations=Revocations(None if site is None else site.revoked_path))
        self.renewals = Renewals(holder=identity, signer=self.cert_signer)
        self.server_cert = ServerCertState()
        self.issuer = None if site is None else TokenIssuer(
            site=config.name, router_id=self.router_id, ca=identity.ca,
            grants=GrantStore(site.grants_path), signer=self.cert_signer,
            endpoints=self.endpoints,
            linked_sites=self._linked_sites,
            known_routers=lambda: ((r.router_id, r.site) for r in self.routing.records()))
        self.links = LinkTable(identity=identity, limits=limits, events=self.agent,
                               on_open=self.forwarder.on_open, on_claim=self._on_claim,
                               reserve=self.fd_reserve, connect=connect_link,
                               renewals=self.renewals, gate=self.cert_signer)
        self.agent.measure = TrafficMeter(self.links, self.flows, trio.current_time()).measure
        self.tcp_clients = TcpClients(forwarder=self.forwarder, connectors=self.connectors,
                                      table=self.flows)
        self.http_frontend = HttpFrontend(forwarder=self.forwarder, table=self.flows,
                                          local=self.http_connectors,
                                          config=self._listener_config,
                                          limits=http_limits(limits))
        self.listeners = Listeners(serve={"tcp": self.tcp_clients.serve_client,
                                          "http": self.http_frontend.serve_connection},
                                   table=self.flows, reserve=self.fd_reserve,
                                   config=lambda: self.config)
        self.admin = SiteAdmin(site=site, config=config, identity=identity, links=self.links,
                               listeners=self.listeners,
                               connectors=(self.connectors, self.http_connectors),
                               agent=self.agent)
        self._shutdown = trio.Event()
        self._not_ready: str | None = "starting"  # None while serving
        # The admin port's route table: the console adds its pages here.
        self.web = admin_routes(self, lambda: self._not_ready)
        self.console = Console(self, new_token())  # its token is new at every start
        self.console.add_routes(self.web)
        self.admin_url: str | None = None  # once its server listens
        self.admin_error: str | None = None  # why it does not

    @classmethod
    def from_site(cls, site: Site, config: SiteConfig) -> Router:
        return cls(Identity.from_site(site, config.name, config.limits), config, site=site)

    # ---- what status, metrics and the control socket read
    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def config(self) -> SiteConfig:
        return self.admin.config

    @property
    def console_token(self) -> str:
        return self.console.token

    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """Where other sites dial us: `advertise`, else host:link_port."""
        if not self.config.advertise:
            return ((self.config.host, self.config.link_port),)
        return tuple(Endpoint.parse(a, stored=True).pair() for a in self.config.advertise)

    def _serve_local(self, side: FlowSide, open_msg: Open) -> None:
        """An OPEN for this router: the adaptor of the key's connectors serves it (or
        the records server, a question about our flows)."""
        if open_msg.routing_key == RECORDS_KEY:
            self.records_server.serve_open(side, open_msg)
        elif self.http_connectors.serves(open_msg.routing_key):
            self.http_connectors.serve_open(side, open_msg)
        else:
            self.connectors.serve_open(side, open_msg)

    def _listener_config(self, key: str) -> ListenerConfig | None:
        """A listener's current config (its rules and options change live)."""
        return next((lst for lst in self.config.listeners if lst.key == key), None)

    def _cert_lifetime(self) -> float:
        return self.config.limits.link_cert_lifetime_s

    def _link_for(self, peer_id: str) -> Link | None:
        return self.links.link_for(peer_id)

    def _send_routing(self, peer_id: str, payload: bytes) -> None:
        self.links.send_routing(peer_id, payload)

    def _linked_sites(self) -> set[str]:
        return self.links.linked_sites()

    async def _on_claim(self, body: bytes) -> dict[str, Any]:
        if self.issuer is None:
            return {"ok": False, "error": f"site {self.name} issues no tokens"}
        return await self.issuer.on_claim(body)

    # ---- running
    def stop(self) -> None:
        """Drain and stop (what SIGINT and SIGTERM do)."""
        self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg, site = self.config, self.site
        if cfg.limits.link_cert_lifetime_s < 3600:
            log.warning("link_cert_lifetime_s = %g: a site whose router is stopped for longer "
                        "cannot renew its link certificates and needs a new token",
                        cfg.limits.link_cert_lifetime_s)
        check_at_start(self.identity, cfg.limits.link_cert_lifetime_s, self.server_cert)
        link_listeners: list[trio.SocketListener] = []
        if site is not None:
            try:
                link_listeners = await trio.open_tcp_listeners(cfg.link_port, host=cfg.bind)
            except OSError as exc:
                raise RuntimeError(f"cannot listen for links on {cfg.bind}:{cfg.link_port}: "
                                   f"{exc.strerror}") from exc
        async with trio.open_nursery() as root:
            self.admin.nursery = root
            await self._start_admin_port(root)
            if site is not None:
                await self._start_site_services(site, root)
            await root.start(self.flows.run)
            if link_listeners:
                await root.start(self.links.serve, link_listeners)
            for lst in cfg.listeners:
                try:
                    await self.listeners.start(lst, root)
                except ValueError as exc:
                    # One busy port must not keep the whole site down; status shows it.
                    self.listeners.errors[(lst.host, lst.port)] = str(exc)
                    log.error("listener %s: %s", lst.key, exc, extra={"routing_key": lst.key})
            self.admin.apply()
            if site is not None:
                for name in site.link_names():
                    self.links.add_dial(site.load_link(name), root)
                self._write_pid(site)
            root.start_soon(self.agent.run)
            root.start_soon(keep_renewed, self.identity, self._cert_lifetime, self.server_cert)
            log.info("site %s (router %s) ready: links on %s:%d", self.name,
                     self.router_id, cfg.bind, cfg.link_port)
            self._not_ready = None
            task_status.started()
            if site is not None:  # a service manager waiting on Type=notify
                sd_notify(f"READY=1\nSTATUS=serving: links on {cfg.bind}:{cfg.link_port}")
            await self._shutdown.wait()
            self._not_ready = "draining"
            if site is not None:
                sd_notify(f"STOPPING=1\nSTATUS=draining flows (up to "
                          f"{self.config.limits.drain_timeout_s:g} s)")
            await self._drain()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.http_connectors.aclose()
            root.cancel_scope.cancel()
        if site is not None:
            with contextlib.suppress(FileNotFoundError):
                site.pid_path.unlink()
        self.fd_reserve.close()
        log.info("site %s stopped", self.name)

    async def _start_admin_port(self, root: trio.Nursery) -> None:
        """Serve `self.web` on admin_bind:admin_port. A port that is taken must not keep
        the site down (the data path matters more): status shows why it is missing."""
        cfg = self.config
        for old in cfg.renamed:
            log.warning("site.toml: %s is the old name of admin_port; read as admin_port "
                        "(the next change sitectl saves renames it)", old)
        if not cfg.admin_port:
            return
        where = Endpoint(cfg.admin_bind, cfg.admin_port)
        try:
            await root.start(partial(serve_web, self.web, cfg.admin_bind, cfg.admin_port,
                                     reserve=self.fd_reserve))
        except OSError as exc:
            self.admin_error = f"cannot listen on {where}: {exc.strerror or exc}"
            log.error("admin port: %s", self.admin_error)
            return
        self.admin_url = admin_url(cfg)
        log.info("admin port on %s (/metrics, /healthz, /readyz)", self.admin_url)

    async def _start_site_services(self, site: Site, root: trio.Nursery) -> None:
        assert self.issuer is not None
        await root.start(ControlServer(self, self.admin, self.issuer, site).serve)
        root.start_soon(self._watch_signals)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s: draining", signal.Signals(signum).name)
                self.stop()
                return

    async def _drain(self) -> None:
        """Stop accepting, let open flows finish for up to drain_timeout_s, say GOAWAY."""
        self.listeners.stop_all()
        await self.flows.wait_idle(self.config.limits.drain_timeout_s)
        self.links.close_all("router shutting down")
        with trio.move_on_after(1):
            await self.links.wait_all_closed()
        self.flows.cancel()

    @staticmethod
    def _write_pid(site: Site) -> None:
        # Information for people and tools only; the site lock (router.daemon.main) is
        # what keeps a second router out.
        site.run_dir.mkdir(mode=0o700, exist_ok=True)
        site.pid_path.write_text(f"{os.getpid()}\n")
