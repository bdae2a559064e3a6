"""What the HTTP frontend tests share: a frontend on a real port whose only serving site
is this one, served by an in-test backend over memory channels."""

from __future__ import annotations

import hashlib
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import trio

from router.adaptors.http.flowmsg import FlowLost
from router.adaptors.http.frontend import HttpFrontend
from router.adaptors.http.hop import ROUTER_ERROR_HEADER
from router.adaptors.http.limits import HttpLimits
from router.adaptors.http.message import (
    Body,
    End,
    Part,
    Raw,
    RequestHead,
    ResponseHead,
    Trailers,
)
from router.flows.forwarder import Forwarder, NoTarget
from router.flows.table import FlowTable
from router.protocol import FlowCode
from router.routing import KeyAdvert, NullSigner, RoutingCore, null_verify
from router.site.config import ListenerConfig

KEY = "api"
CHUNK = 64 * 1024


def pattern(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MemPeer:
    """The frontend's end of an in-test exchange (a MessagePeer)."""

    def __init__(self) -> None:
        self.to_backend, self.backend_in = trio.open_memory_channel[Part | None](4)
        self.backend_out, self.from_backend = trio.open_memory_channel[Part | None](4)
        self.aborted: str | None = None

    async def send(self, part: Part, *, more: bool = False) -> None:
        if self.aborted:
            raise FlowLost(self.aborted)
        try:
            await self.to_backend.send(part)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise FlowLost("backend went away") from None

    async def receive(self) -> Part | None:
        if self.aborted:
            raise FlowLost(self.aborted)
        try:
            return await self.from_backend.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            raise FlowLost("backend went away") from None

    def ready(self) -> bool:
        return self.from_backend.statistics().current_buffer_used > 0

    def finish(self) -> None:
        self.to_backend.close()

    def abort(self, code: FlowCode, reason: str) -> None:
        self.aborted = reason
        self.to_backend.close()
        self.from_backend.close()


@dataclass
class Backend:
    """Answers by path: /echo streams the body back, /sha answers its sha256 (and
    its trailers as response trailers), /big?n= sends n bytes, /slow never
    answers, /status/N answers N, /lost drops the flow; anything else a short 200.
    Tunnels (a CONNECT, or /upgrade...): switch (2xx, 101), then echo the bytes until
    the client's half-close and half-close after it; /upgrade/refuse answers 426,
    /upgrade/hangup sends "bye" and half-closes first; the bytes "reset" drop it."""

    nursery: trio.Nursery
    heads: list[RequestHead] = field(default_factory=list)
    refuse: int = 0  # refuse this many exchanges first (NoTarget)
    fail_first: int = 0  # answer 503 (from the application) to this many first
    router_fail_first: int = 0  # answer 503 as a router would (x-van-error) to these
    peers: list[MemPeer] = field(default_factory=list)
    tunnels: int = 0  # switched
    tunnelled: bytearray = field(default_factory=bytearray)  # what came through them

    @property
    def aborted(self) -> int:
        """Exchanges the frontend aborted (their flow would have been reset)."""
        return sum(1 for p in self.peers if p.aborted)

    async def exchange(self, key: str) -> MemPeer:
        if self.refuse > 0:
            self.refuse -= 1
            raise NoTarget(f"site here cannot reach {key!r} target 127.0.0.1:9: refused")
        peer = MemPeer()
        self.peers.append(peer)
        self.nursery.start_soon(self._serve, peer)
        return peer

    async def _serve(self, peer: MemPeer) -> None:
        try:
            with trio.CancelScope() as scope:
                self.nursery.start_soon(self._watch, peer, scope)
                try:
                    await self._answer(peer)
                finally:
                    scope.cancel()  # the watcher's cue: answered, stop polling
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            pass
        finally:
            peer.backend_out.close()

    async def _watch(self, peer: MemPeer, scope: trio.CancelScope) -> None:
        while not peer.aborted and not scope.cancel_called:
            await trio.sleep(0.01)
        if peer.aborted:
            scope.cancel()

    async def _answer(self, peer: MemPeer) -> None:
        head = await peer.backend_in.receive()
        assert isinstance(head, RequestHead)
        self.heads.append(head)
        out = peer.backend_out
        if self.router_fail_first > 0:
            self.router_fail_first -= 1
            await _drain(peer)
            await out.send(ResponseHead(status=503, headers=((ROUTER_ERROR_HEADER, b"1"),)))
            await out.send(End())
            return
        path = head.target.decode()
        if head.method == b"CONNECT" or path.startswith("/upgrade"):
            await self._tunnel(peer, head, path)
            return
        if path.startswith("/echo"):
            await out.send(ResponseHead(status=200, headers=((b"x-echo", b"1"),)))
            while not isinstance(part := await peer.backend_in.receive(), End):
                if isinstance(part, Body):
                    await out.send(part)
                elif isinstance(part, Trailers):
                    await out.send(Trailers(((b"x-got-trailers", b"1"), *part.headers)))
            await out.send(End())
            return
        if path.startswith("/sha"):
            digest, size, trailers = hashlib.sha256(), 0, ()
            while not isinstance(part := await peer.backend_in.receive(), End):
                if isinstance(part, Body):
                    digest.update(part.data)
                    size += len(part.data)
                elif isinstance(part, Trailers):
                    trailers = part.headers
            await out.send(ResponseHead(status=200, headers=((b"x-size", b"%d" % size),)))
            await out.send(Body(digest.hexdigest().encode()))
            if trailers:
                await out.send(Trailers(((b"x-got-trailers", b"1"), *trailers)))
            await out.send(End())
            return
        await _drain(peer)
        if path.startswith("/big"):
            n = int(path.split("n=")[1])
            data = pattern(n)
            await out.send(ResponseHead(status=200, headers=(
                (b"content-length", str(n).encode()), (b"x-sha", sha(data).encode()))))
            for i in range(0, n, CHUNK):
                await out.send(Body(data[i:i + CHUNK]))
            await out.send(End())
        elif path.startswith("/slow"):
            await trio.sleep_forever()
        elif path.startswith("/lost"):
            raise trio.BrokenResourceError("lost")
        elif path.startswith("/cut"):  # lost after the response started
            await out.send(ResponseHead(status=200, headers=((b"content-length", b"1000"),)))
            await out.send(Body(b"x" * 100))
            await trio.sleep(0.05)
            raise trio.BrokenResourceError("cut")
        elif path.startswith("/status/") or self.fail_first > 0:
            status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 503
            self.fail_first -= 1
            await out.send(ResponseHead(status=status))
            await out.send(Body(b"app says %d\n" % status))
            await out.send(End())
        elif path.startswith("/grpc"):
            await out.send(ResponseHead(status=200, headers=(
                (b"content-type", b"application/grpc"),)))
            await out.send(Body(b"\0\0\0\0\x02hi"))
            await out.send(Trailers(((b"grpc-status", b"0"),)))
            await out.send(End())
        else:
            await out.send(ResponseHead(status=200, headers=((b"content-length", b"3"),)))
            await out.send(Body(b"ok\n"))
            await out.send(End())


    async def _tunnel(self, peer: MemPeer, head: RequestHead, path: str) -> None:
        await _drain(peer)
        out = peer.backend_out
        if path.endswith("/refuse"):
            await out.send(ResponseHead(status=426, headers=(
                (b"content-length", b"16"), (b"upgrade", b"websocket"))))
            await out.send(Body(b"no upgrade here\n"))
            await out.send(End())
            return
        token = dict(head.headers).get(b"upgrade")
        await out.send(ResponseHead(status=200 if head.method == b"CONNECT" else 101,
                                    headers=((b"upgrade", token),) if token else ()))
        await out.send(End())
        self.tunnels += 1
        hangup = path.endswith("/hangup")
        if hangup:
            await out.send(Raw(b"bye"))
            await out.send(None)  # our half-close: the client may still send
        while True:
            try:
                part = await peer.backend_in.receive()
            except trio.EndOfChannel:
                break
            assert isinstance(part, Raw), part
            self.tunnelled += part.data
            if part.data == b"reset":
                raise trio.BrokenResourceError("reset")  # closed without a half-close
            if not hangup:
                await out.send(part)
        if not hangup:
            await out.send(None)


async def _drain(peer: MemPeer) -> None:
    while not isinstance(await peer.backend_in.receive(), End):
        pass


@dataclass
class Front:
    port: int
    backend: Backend
    table: FlowTable
    routing: RoutingCore
    config: dict[str, ListenerConfig]
    connections: int = 0

    async def wait(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not cond():
                await trio.sleep(0.01)

    async def wait_idle(self) -> None:
        """Every request's flow entry ended."""
        assert await self.table.wait_idle(10.0), "requests still active"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, **changes: object) -> None:
        self.config[KEY] = replace(self.config[KEY], **changes)  # type: ignore[arg-type]


@asynccontextmanager
async def running_front(*, advertise: bool = True, limits: HttpLimits | None = None,
                        rcvbuf: int = 0, **listener: object) -> AsyncIterator[Front]:
    """`rcvbuf`: the receive buffer of accepted sockets (0: the system's)."""
    table = FlowTable()
    routing = RoutingCore(site="here", signer=NullSigner(), verify=null_verify,
                          now=trio.current_time())
    if advertise:
        routing.set_keys({KEY: KeyAdvert()}, trio.current_time())
    forwarder = Forwarder(site="here", routing=routing, link_for=lambda _: None, table=table,
                          window=1 << 20, open_timeout=5.0, serve_local=lambda s, o: None)
    lst = ListenerConfig(key=KEY, port=0, protocol="http", **listener)  # type: ignore[arg-type]
    config = {KEY: lst}
    async with trio.open_nursery() as nursery:
        await nursery.start(table.run)
        backend = Backend(nursery)
        front = HttpFrontend(forwarder=forwarder, table=table, local=backend,
                             config=config.get, limits=limits)
        holder: list[Front] = []

        async def serve(stream: trio.SocketStream) -> None:
            holder[0].connections += 1
            if rcvbuf:
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            await front.serve_connection(lst, stream)

        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        holder.append(Front(listeners[0].socket.getsockname()[1], backend, table, routing,
                            config))
        yield holder[0]
        nursery.cancel_scope.cancel()


async def curl(*args: str) -> trio.CompletedProcess[bytes]:
    return await trio.run_process(["curl", "-sS", "--max-time", "30", *args],
                                  capture_stdout=True, capture_stderr=True, check=False)
