"""The link table: accepting on the link port, dialling configured links with
backoff, the registry of live links, and telling a `NeighbourEvents` (the routing
agent) which neighbours are up and what routing messages they sent."""

from __future__ import annotations

import logging
import os
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import trio

from router.endpoint import Endpoint
from router.net.accept import FdReserve, serve_listeners
from router.net.admission import HandshakeRate, HandshakeSlots, WaitingRoom, source_key
from router.net.errors import connect_reason, guarded
from router.net.handshake import (
    FIRST_BYTE_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    FirstByte,
    HandshakeError,
    link_limits,
    serve_unauthenticated,
    start_link,
    tls_handshake,
    wait_first_byte,
)
from router.net.link import Direction, Link, OpenCallback
from router.net.linkstats import LinkSample, LinkTotals, link_samples
from router.net.logthrottle import KeyedLogThrottle
from router.net.proxy import ProxyError, open_via_proxy
from router.net.renewal import Renewals
from router.net.sockets import open_tcp, peer_name
from router.net.tls import TLSStream
from router.protocol import Event, Hello, LinkConnection, ProtocolError, Role
from router.site.config import Limits
from router.site.linkfiles import LinkSpec
from router.site.proxyconf import ProxySettingError, proxy_for

log = logging.getLogger(__name__)

MAX_PENDING_HANDSHAKES = 256  # unauthenticated connections in TLS/HELLO/claim at once
PENDING_PER_SOURCE = MAX_PENDING_HANDSHAKES // 16  # of those, from one address
# Handshakes one address may start: a burst (a NAT with many sites redialling a hub that
# restarted), then a rate that keeps its share of the router's CPU to about 1%.
HANDSHAKE_BURST_PER_SOURCE = 40
HANDSHAKES_PER_SOURCE_PER_S = 10.0
# Connections not yet past their first byte: a descriptor and a small task each.
MAX_WAITING_FOR_FIRST_BYTE = 1024
REFUSAL_LOG_INTERVAL_S = 10.0  # per kind of refusal
_DIGITS = re.compile(r"\d+")
DialPhase = Literal["connecting", "up", "down", "expired"]
Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]
ClaimHandler = Callable[[bytes], Awaitable[dict[str, object]]]


class LinkIdentity(Protocol):
    """Who we are on a link: the HELLO and the TLS contexts."""

    def hello(self) -> Hello: ...
    def server_context(self) -> ssl.SSLContext: ...
    def client_context(self, link_name: str) -> ssl.SSLContext: ...
    def credential_problem(self, link_name: str) -> str | None: ...


class LinkGate(Protocol):
    """Why a peer may not link (it was revoked), or None. `der` is its certificate;
    `site` and `router_id` what its HELLO said, once known."""

    def link_refusal(self, der: bytes | None, site: str | None = None,
                     router_id: str | None = None) -> str | None: ...


class NeighbourEvents(Protocol):
    """Told when a neighbour comes, goes or changes cost, and what it sends."""

    def neighbour_up(self, link: Link) -> None: ...
    def neighbour_down(self, link: Link) -> None: ...
    def neighbour_cost(self, link: Link) -> None: ...
    def on_routing(self, link: Link, payload: bytes) -> None: ...


@dataclass(slots=True)
class DialState:
    """What `status` shows for a configured (outgoing) link."""

    spec: LinkSpec
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    link: Link | None = None
    state: DialPhase = "connecting"
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    attempts: int = 0
    deleted: bool = False


class LinkTable:
    def __init__(self, *, identity: LinkIdentity, limits: Limits, events: NeighbourEvents,
                 on_open: OpenCallback, on_claim: ClaimHandler, reserve: FdReserve,
                 connect: Connect = open_tcp, environ: Mapping[str, str] = os.environ,
                 renewals: Renewals | None = None, gate: LinkGate | None = None) -> None:
        self._identity = identity
        self._limits = limits
        self._events = events
        self._on_open = on_open
        self._on_claim = on_claim
        self._reserve = reserve
        self._connect = connect
        self._environ = environ  # HTTPS_PROXY, NO_PROXY for links whose proxy is "env"
        self.renewals = renewals
        self._gate = gate
        self.dials: dict[str, DialState] = {}
        self.accepted: list[Link] = []
        self.by_peer: dict[str, list[Link]] = {}
        self._rng = random.Random()
        self._slots: HandshakeSlots[trio.CancelScope] = HandshakeSlots(
            MAX_PENDING_HANDSHAKES, PENDING_PER_SOURCE)
        self._rate = HandshakeRate(HANDSHAKES_PER_SOURCE_PER_S, HANDSHAKE_BURST_PER_SOURCE)
        self._waiting: WaitingRoom[trio.CancelScope] = WaitingRoom(MAX_WAITING_FOR_FIRST_BYTE)
        self._refusals = KeyedLogThrottle(REFUSAL_LOG_INTERVAL_S)
        self._changed = trio.Event()  # set when a link ends
        # (link name, peer site) -> its ended links' bytes and how often one came up
        self.totals: dict[tuple[str, str], LinkTotals] = {}

    # ---- neighbour bookkeeping
    def link_for(self, peer_id: str) -> Link | None:
        links = self.by_peer.get(peer_id)
        return links[0] if links else None

    def all_links(self) -> list[Link]:
        return [link for links in self.by_peer.values() for link in links]

    def send_routing(self, peer_id: str, payload: bytes) -> None:
        link = self.link_for(peer_id)
        if link is not None and link.closed_reason is None:
            link.conn.send_routing(payload)
            link.kick()

    def linked_sites(self) -> set[str]:
        """Sites we have a live link with (either direction) or are configured to dial."""
        live = {link.peer_site for link in self.all_links()}
        return live | {dial.spec.peer_site for dial in self.dials.values()}

    def close_all(self, reason: str) -> None:
        for link in self.all_links():
            link.close(reason)

    async def wait_all_closed(self) -> None:
        while self.by_peer:
            self._changed = trio.Event()
            await self._changed.wait()

    def samples(self) -> list[LinkSample]:
        """Per link name: up, RTT, bytes each way, reconnects (for metrics)."""
        return link_samples(self.totals, self.all_links(),
                            ((name, d.spec.peer_site) for name, d in self.dials.items()))

    async def _run_link(self, link: Link, early: list[Event]) -> None:
        totals = self.totals.setdefault((link.name, link.peer_site), LinkTotals())
        totals.ups += 1
        peers = self.by_peer.setdefault(link.peer_id, [])
        peers.append(link)
        if len(peers) == 1:
            self._events.neighbour_up(link)
        log.info("link %s up: %s site %s (%s)", link.name, link.direction, link.peer_site,
                 link.peer_id, extra={"link": link.name, "peer_site": link.peer_site})
        try:
            await link.run(early)
        finally:
            if self.renewals is not None:
                self.renewals.link_ended(link)
            totals.bytes_in += link.bytes_in
            totals.bytes_out += link.bytes_out
            peers.remove(link)
            if not peers:
                del self.by_peer[link.peer_id]
                self._events.neighbour_down(link)
            elif peers[0].cost != link.cost:
                self._events.neighbour_cost(peers[0])
            self._changed.set()

    def _make_link(self, name: str, direction: Direction, stream: TLSStream,
                   conn: LinkConnection, peer: Hello, cost: int) -> Link:
        return Link(name=name, direction=direction, stream=stream, conn=conn, peer=peer,
                    cost=cost, buffer_limit=self._limits.link_buffer_bytes,
                    on_open=self._on_open, on_routing=self._events.on_routing,
                    on_renew=None if self.renewals is None else self.renewals.on_message)

    # ---- accepting
    async def serve(self, listeners: list[trio.SocketListener],
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_listeners(self._handle_incoming, listeners, what="incoming link",
                              name="link port", reserve=self._reserve,
                              task_status=task_status)

    async def _first_byte(self, sock: trio.SocketStream) -> FirstByte:
        """Wait in the bounded waiting room for the connection's first byte."""
        with trio.CancelScope() as scope:
            evicted = self._waiting.enter(scope)
            if evicted is not None:
                evicted.cancel()
            try:
                return await wait_first_byte(sock)
            finally:
                self._waiting.leave(scope)
        return FirstByte.SILENT  # evicted: it waited longest and said nothing

    def _refuse(self, peer_addr: str, reason: str, what: str = "link attempt") -> None:
        # Reasons that differ only in numbers (sizes, counts) are one kind of line.
        self._refusals.log(f"{what}: {_DIGITS.sub('#', reason)}", log, logging.WARNING,
                           trio.current_time(), "refused %s from %s: %s",
                           what, peer_addr, reason)

    async def _handle_incoming(self, sock: trio.SocketStream) -> None:
        peer_addr = peer_name(sock)
        first = await self._first_byte(sock)
        if first is FirstByte.SILENT:
            self._refusals.log("silent", log, logging.INFO, trio.current_time(),
                               "closed connection from %s: nothing sent in %g s", peer_addr,
                               FIRST_BYTE_TIMEOUT_S)
        if first is FirstByte.ARRIVED:
            await self.accept_stream(sock, peer_addr)

    async def accept_stream(self, sock: trio.abc.Stream, peer_addr: str) -> None:
        """Serve one incoming connection that has sent its first byte: admission, TLS,
        then a link or a token claim, until it ends. Closes `sock`."""
        # Unauthenticated peers must not be able to hold unbounded sockets and memory,
        # nor one address all of them, nor take the router's CPU with handshakes.
        source = source_key(peer_addr.rpartition(":")[0])
        if not self._rate.allow(source, trio.current_time()):
            self._refuse(peer_addr, "this source starts handshakes faster than "
                                    f"{HANDSHAKES_PER_SOURCE_PER_S:g} a second "
                                    f"(after a burst of {HANDSHAKE_BURST_PER_SOURCE})")
            return
        refusal = self._slots.refusal(source)
        if refusal is not None:
            self._refuse(peer_addr, f"{refusal.value} ({self._slots.pending} pending)")
            return
        stream = TLSStream(sock, self._identity.server_context(), server_side=True)
        try:
            with trio.CancelScope() as slot:
                evicted = self._slots.acquire(source, slot)
                if evicted is not None:
                    evicted.cancel()  # its handler sees the cancel below and says so
                try:
                    with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                        await tls_handshake(stream)
                        if stream.peer_certificate_der() is None:
                            reply = await serve_unauthenticated(stream, self._on_claim)
                            if reply.get("ok") is not True:
                                self._refuse(peer_addr, str(reply.get("error")),
                                             what="token claim")
                            return
                        # A revoked peer is told why in place of a link (at the TLS
                        # stage, by its certificate; at HELLO, by what it says).
                        why = self._refusal(stream)
                        if why is not None:
                            await self._turn_away(stream, None, why)
                            self._refuse(peer_addr, why)
                            return
                        conn, peer, early = await start_link(
                            stream, role=Role.ACCEPTOR, hello=self._identity.hello(),
                            limits=self._limits, expect_site=None)
                        why = self._refusal(stream, peer)
                        if why is not None:
                            await self._turn_away(stream, conn, why)
                            self._refuse(peer_addr, why)
                            return
                except trio.TooSlowError:
                    self._refuse(peer_addr, f"handshake not done in {HANDSHAKE_TIMEOUT_S:g} s")
                    return
                except (HandshakeError, ProtocolError, trio.BrokenResourceError) as exc:
                    self._refuse(peer_addr, str(exc))
                    return
                finally:
                    self._slots.release(source, slot)
            if slot.cancelled_caught:
                self._refuse(peer_addr, "its handshake slot went to a source holding fewer")
                return
            link = self._make_link(f"in:{peer.site}", "in", stream, conn, peer, 1)
            self.accepted.append(link)
            try:
                await self._run_link(link, early)
            finally:
                self.accepted.remove(link)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    def _refusal(self, stream: TLSStream, peer: Hello | None = None) -> str | None:
        if self._gate is None:
            return None
        return self._gate.link_refusal(stream.peer_certificate_der(),
                                       None if peer is None else peer.site,
                                       None if peer is None else peer.router_id)

    async def _turn_away(self, stream: TLSStream, conn: LinkConnection | None,
                         reason: str) -> None:
        """Say GOAWAY with `reason` (after our HELLO, if not sent yet), then wait a moment
        for the peer to close first: closing on unread input would reset the connection
        and could take the GOAWAY with it."""
        if conn is None:
            conn = LinkConnection(role=Role.ACCEPTOR, hello=self._identity.hello(),
                                  limits=link_limits(self._limits), now=trio.current_time())
        conn.close(reason)
        with trio.move_on_after(1.0):
            try:
                await stream.send_all(conn.data_to_send())
                while await stream.receive_some():
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
                pass

    def close_links(self, site: str, router_ids: set[str], reason: str) -> int:
        """Close every live link with `site` (or one of `router_ids`), either direction;
        their flows are reset. How many were closed."""
        gone = [link for link in self.all_links()
                if link.peer_site == site or link.peer_id in router_ids]
        for link in gone:
            link.close(reason)
        return len(gone)

    # ---- dialling
    def add_dial(self, spec: LinkSpec, nursery: trio.Nursery) -> None:
        if spec.name in self.dials:
            raise ValueError(f"link {spec.name} already exists")
        state = DialState(spec=spec)
        self.dials[spec.name] = state
        nursery.start_soon(self._dial_loop, state)

    def remove_dial(self, name: str) -> None:
        state = self.dials.pop(name)
        state.deleted = True
        self.totals.pop((name, state.spec.peer_site), None)  # its series end with it
        if state.link is None:
            state.cancel.cancel()
            return
        # Let the link say GOAWAY ("link deleted") to its peer, then stop dialling; the
        # deadline bounds the wait if the peer does not read.
        state.link.close("link deleted")
        state.cancel.deadline = trio.current_time() + 2.0

    def set_cost(self, name: str, cost: int) -> None:
        state = self.dials[name]
        state.spec = replace(state.spec, cost=cost)  # keeps the pinned peer_router_id
        if state.link is not None:
            state.link.cost = cost
            self._events.neighbour_cost(state.link)

    async def _dial_loop(self, state: DialState) -> None:
        limits = self._limits
        delay = limits.redial_min_s
        with state.cancel:
            while not state.deleted:
                state.attempts += 1
                try:
                    up_for = await self._dial_once(state)
                except Exception as exc:  # a bug must not stop this link for good
                    log.exception("link %s: dial failed with an internal error", state.spec.name)
                    state.last_error, up_for = f"internal error: {exc}", None
                if up_for is not None and up_for > 10 * limits.redial_min_s:
                    delay = limits.redial_min_s  # it was healthy: retry quickly
                if state.deleted:
                    return
                if state.state != "expired":  # it stays so: no dial can help
                    state.state = "connecting"
                # Full jitter keeps many sites from redialling a restarted hub in lockstep.
                await trio.sleep(self._rng.uniform(delay / 2, delay))
                delay = min(delay * 2, limits.redial_max_s)

    async def _open(self, spec: LinkSpec, host: str, port: int) -> trio.abc.Stream:
        """TCP to the peer, directly or through the link's HTTP CONNECT proxy."""
        timeout = self._limits.connect_timeout_s
        proxy = proxy_for(spec.proxy, host, port, self._environ)
        if proxy is not None:
            return await open_via_proxy(self._connect, proxy, host, port, timeout=timeout)
        with trio.fail_after(timeout):
            return await self._connect(host, port)

    async def _run_dialled(self, link: Link, name: str, early: list[Event]) -> None:
        """Run an outgoing link, renewing its certificate meanwhile."""
        if self.renewals is None:
            await self._run_link(link, early)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded, f"certificate renewal of link {name}",
                               self.renewals.run_for, link, name)
            await self._run_link(link, early)
            nursery.cancel_scope.cancel()

    async def _dial_once(self, state: DialState) -> float | None:
        """One attempt over every endpoint; returns how long the link was up."""
        spec = state.spec
        problem = self._identity.credential_problem(spec.name)
        if problem is not None:
            # Dialling cannot help: the peer would refuse it without saying why.
            if state.last_error != problem:
                log.error("link %s: %s", spec.name, problem, extra={"link": spec.name})
            state.last_error, state.state = problem, "expired"
            return None
        for host, port in spec.endpoints:
            where = Endpoint(host, port)
            try:
                sock = await self._open(spec, host, port)
            except (OSError, trio.TooSlowError) as exc:
                state.last_error = f"cannot connect to {where}: {connect_reason(exc)}"
                continue
            except (ProxyError, ProxySettingError) as exc:
                state.last_error = f"{where}: {exc}"
                log.warning("link %s: %s", spec.name, state.last_error)
                continue
            stream = TLSStream(sock, self._identity.client_context(spec.name),
                               server_side=False, server_hostname=spec.peer_site)
            try:
                try:
                    await tls_handshake(stream)
                    conn, peer, early = await start_link(
                        stream, role=Role.DIALER, hello=self._identity.hello(),
                        limits=self._limits, expect_site=spec.peer_site,
                        expect_router_id=spec.peer_router_id)
                except (HandshakeError, ProtocolError) as exc:
                    state.last_error = f"{where}: {exc}"
                    log.warning("link %s: %s", spec.name, state.last_error)
                    continue
                why = self._refusal(stream, peer)
                if why is not None:
                    await self._turn_away(stream, conn, why)
                    state.last_error = f"{where}: refused: {why}"
                    log.warning("link %s: %s", spec.name, state.last_error)
                    continue
                link = self._make_link(spec.name, "out", stream, conn, peer, spec.cost)
                state.link, state.state, state.since = link, "up", time.time()
                state.last_error = None
                started = trio.current_time()
                try:
                    await self._run_dialled(link, spec.name, early)
                finally:
                    state.link, state.since = None, time.time()
                    state.last_error = link.closed_reason
                return trio.current_time() - started
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.aclose()
        state.state = "down"
        return None
