"""An in-memory network for routers that run in one trio.run.

`MemNet` maps (host, port) endpoints to handlers: a router's link port (its
`LinkTable.accept_stream`) or a target service (echo, hash). `connect` is what a
Router gets as `connect_link` and `connect_target`: it makes a memory stream pair,
serves one end in a nursery the net owns and returns the other. Every connection
is a `Conn` of two `Wire`s, which a test can cut (both ends fail), hold (one end
stops reading, bytes wait intact) or silence (a black hole: nothing is read,
writes vanish). Real TLS 1.3 runs over it, with certificates made in memory.

`Net` (the `mem_net` context manager) adds routers: `add_router` builds one from
`Identity.generate` and starts it, `link` makes a dialled link as redeeming a
token would, `client` hands a flow's client end to a router's TCP listener code.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import trio
import trio.testing

from router.daemon.identity import Identity
from router.daemon.router import Router
from router.flows.table import FlowTable
from router.site.config import ConnectorConfig, Limits, ListenerConfig, SiteConfig
from router.site.linkfiles import LinkSpec

Endpoint = tuple[str, int]
Handler = Callable[[trio.abc.Stream], Awaitable[None]]
WireState = Literal["open", "held", "silent", "cut"]
LINK_PORT = 7000


class Wire(trio.abc.HalfCloseableStream):
    """One end of an in-memory connection, with faults a test can switch on."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self._inner = inner
        self.state: WireState = "open"
        self._changed = trio.Event()
        self._receiving: trio.CancelScope | None = None

    def set_state(self, state: WireState) -> None:
        self.state = state
        self._changed.set()
        self._changed = trio.Event()
        if self._receiving is not None:
            self._receiving.cancel()  # a receive in progress looks at the new state

    def _check(self) -> None:
        if self.state == "cut":
            raise trio.BrokenResourceError("connection cut")

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        while True:
            self._check()
            if self.state != "open":
                await self._changed.wait()
                continue
            with trio.CancelScope() as scope:
                self._receiving = scope
                try:
                    return await self._inner.receive_some(max_bytes)
                finally:
                    self._receiving = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check()
        if self.state == "silent":
            await trio.lowlevel.checkpoint()
            return  # into the black hole
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        self._check()
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass(eq=False)
class Conn:
    """One connection: `client` is the dialler's end, `server` the accepting one."""

    source: str
    endpoint: Endpoint
    client: Wire
    server: Wire

    def cut(self) -> None:
        """Both ends fail at once, as when a cable is pulled and both see an error."""
        self.client.set_state("cut")
        self.server.set_state("cut")

    def silence(self) -> None:
        """The path becomes a black hole both ways: nothing arrives, writes vanish."""
        self.client.set_state("silent")
        self.server.set_state("silent")


@dataclass(eq=False)
class MemNet:
    nursery: trio.Nursery
    handlers: dict[Endpoint, Handler] = field(default_factory=dict)
    refusing: set[Endpoint] = field(default_factory=set)
    conns: list[Conn] = field(default_factory=list)
    attempts: dict[Endpoint, list[float]] = field(default_factory=dict)  # connect times
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def listen(self, endpoint: Endpoint, handler: Handler) -> None:
        self.handlers[endpoint] = handler

    def refuse(self, endpoint: Endpoint, refusing: bool = True) -> None:
        """While refusing, connecting to `endpoint` fails with ECONNREFUSED."""
        if refusing:
            self.refusing.add(endpoint)
        else:
            self.refusing.discard(endpoint)

    def connector(self, source: str) -> Callable[[str, int], Awaitable[trio.abc.Stream]]:
        async def connect(host: str, port: int) -> trio.abc.Stream:
            return await self.connect(host, port, source=source)
        return connect

    async def connect(self, host: str, port: int, *, source: str = "?") -> trio.abc.Stream:
        endpoint = (host, port)
        self.attempts.setdefault(endpoint, []).append(trio.current_time())
        await trio.lowlevel.checkpoint()
        handler = self.handlers.get(endpoint)
        if handler is None or endpoint in self.refusing:
            raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
        a, b = trio.testing.memory_stream_pair()
        conn = Conn(source, endpoint, Wire(a), Wire(b))
        self.conns.append(conn)
        self.nursery.start_soon(handler, conn.server)
        return conn.client

    def live(self, endpoint: Endpoint, source: str | None = None) -> list[Conn]:
        return [c for c in self.conns if c.endpoint == endpoint and c.client.state != "cut"
                and source in (None, c.source)]


# ---- target services: each gets the server end of one connection
async def echo(stream: trio.abc.Stream) -> None:
    """Send back what arrives; half-close after the client did."""
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            assert isinstance(stream, trio.abc.HalfCloseableStream)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def blob(size: int, seed: bytes) -> bytes:
    """`size` reproducible bytes that do not repeat within a TLS record."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


async def send_and_hash(stream: trio.abc.Stream, data: bytes) -> str:
    """Send `data` then EOF while reading until EOF; the sha256 of what arrived."""
    digest = hashlib.sha256()

    async def send() -> None:
        view = memoryview(data)
        for i in range(0, len(data), 100_000):
            await stream.send_all(view[i:i + 100_000])
        assert isinstance(stream, trio.abc.HalfCloseableStream)
        await stream.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while chunk := await stream.receive_some(65536):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(eq=False)
class HashService:
    """A target that sends `reply` while hashing what it receives (one per flow)."""

    reply: bytes
    received: list[str] = field(default_factory=list)  # sha256 per finished flow

    async def __call__(self, stream: trio.abc.Stream) -> None:
        async with stream:
            self.received.append(await send_and_hash(stream, self.reply))


# ---- routers on the net
@dataclass(eq=False)
class Node:
    router: Router
    endpoint: Endpoint
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def name(self) -> str:
        return self.router.name

    @property
    def id(self) -> str:
        return self.router.router_id

    @property
    def flows(self) -> FlowTable:
        return self.router.flows

    def neighbours(self) -> set[str]:
        return set(self.router.routing.neighbours())


class Net:
    def __init__(self, mem: MemNet, nursery: trio.Nursery, limits: Limits) -> None:
        self.mem = mem
        self.nursery = nursery  # the routers run here
        self.limits = limits
        self.nodes: dict[str, Node] = {}

    async def add_router(self, name: str, *, connectors: tuple[ConnectorConfig, ...] = (),
                         limits: Limits | None = None) -> Node:
        limits = limits or self.limits
        config = SiteConfig(name=name, host=name, link_port=LINK_PORT, limits=limits,
                            connectors=connectors)
        router = Router(Identity.generate(name, limits), config,
                        connect_link=self.mem.connector(name),
                        connect_target=self.mem.connector(name))
        node = Node(router, (name, LINK_PORT))
        ids = itertools.count(1)

        async def accept(stream: trio.abc.Stream) -> None:
            await router.links.accept_stream(stream, f"mem:{name}:{next(ids)}")

        self.mem.listen(node.endpoint, accept)
        self.nodes[name] = node
        await self.nursery.start(self._run, node)
        return node

    async def _run(self, node: Node, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await node.router.run(task_status=task_status)
        finally:
            self.mem.refuse(node.endpoint)  # a stopped router's port is closed
            node.stopped.set()

    def link(self, dialer: Node, acceptor: Node, *, cost: int = 1) -> LinkSpec:
        """`dialer` dials `acceptor`, with a certificate from the acceptor's CA."""
        name = f"{dialer.name}-{acceptor.name}"
        dialer.router.identity.add_link(name, acceptor.router.identity)
        spec = LinkSpec(name=name, peer_site=acceptor.name, endpoints=(acceptor.endpoint,),
                        cost=cost, peer_router_id=acceptor.id)
        nursery = dialer.router.admin.nursery
        assert nursery is not None, "router not running"
        dialer.router.links.add_dial(spec, nursery)
        return spec

    def client(self, node: Node, key: str, strategy: str = "balanced") -> trio.abc.Stream:
        """A client of a listener for `key` on `node`: the client's end of the stream.
        The router serves the other end as its TCP listener serves an accepted socket."""
        ours, theirs = trio.testing.memory_stream_pair()
        lst = ListenerConfig(key=key, port=1, strategy=strategy)
        node.router.flows.spawn(node.router.tcp_clients.serve_client, lst, theirs)
        return ours


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `cond` in virtual time (every 10 ms) until true; fail after `timeout` s."""
    try:
        with trio.fail_after(timeout):
            while not cond():
                await trio.sleep(0.01)
    except trio.TooSlowError:
        raise AssertionError(f"not true within {timeout} s: {what}") from None


def converged(*nodes: Node) -> bool:
    """Every node reaches every other one."""
    ids = {n.id for n in nodes}
    return all(ids <= set(n.router.routing.reachable()) for n in nodes)


def serves(node: Node, key: str, *sites: str) -> bool:
    """`node` sees `key` served by exactly these sites."""
    return {c.site for c in node.router.routing.candidates(key)} == set(sites)


@asynccontextmanager
async def mem_net(limits: Limits | None = None) -> AsyncIterator[Net]:
    """Routers on one in-memory net. On exit every router still running is stopped
    and must drain cleanly, after which no flow, connection task or router task may
    be left: the nurseries then exit on their own (nothing is cancelled)."""
    async with trio.open_nursery() as net_nursery:
        mem = MemNet(net_nursery)
        async with trio.open_nursery() as routers:
            net = Net(mem, routers, limits or Limits())
            yield net
            for node in net.nodes.values():
                node.router.stop()
            with trio.fail_after(net.limits.drain_timeout_s + 5):
                for node in net.nodes.values():
                    await node.stopped.wait()
            for node in net.nodes.values():
                assert node.flows.active == 0, f"{node.name}: {list(node.flows.entries())}"
        with trio.fail_after(5):
            while net_nursery.child_tasks:  # connections and services still ending
                await trio.sleep(0.01)
