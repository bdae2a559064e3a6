"""The link driver's back-pressure over a real socket pair, in process.

A link stops reading while too many control frames wait to be sent. If DATA counted
too, two routers each blocked on sending bulk data to the other would both stop
reading and wait forever: many flows opened from both ends, each carrying bulk data
both ways through the real SocketFlow pump, must arrive intact with neither reader
ever paused. And a peer that floods PINGs but does read gets every one answered.
"""

from __future__ import annotations

import hashlib
import random
import re

import trio

import certs
from router.adaptors.socketflow import SocketFlow
from router.flows.table import FlowTable
from router.net.handshake import start_link, tls_handshake
from router.net.link import Link, OpenCallback, exchange_hello
from router.net.side import FlowSide
from router.net.tls import TLSStream
from router.protocol import (
    PREFACE,
    FlowCode,
    FrameType,
    Hello,
    LinkConnection,
    LinkLimits,
    Open,
    Role,
)
from router.protocol.frames import HEADER, HEADER_SIZE
from router.site.config import Limits

FLOWS_EACH_WAY = 12
BYTES_EACH_WAY = 2 * 1024 * 1024
# Small windows and a small link buffer: many CREDITs, and writers that often block.
LIMITS = Limits(flow_window_bytes=64 * 1024, link_buffer_bytes=256 * 1024,
                max_flows_per_link=4 * FLOWS_EACH_WAY)
CHUNK = 64 * 1024

Key = tuple[str, int, str]  # (opening site, flow number, "opener" or "acceptor")


class Hashes:
    """(sent, received) digests per flow end; `done` once all `expect` are in."""

    def __init__(self, expect: int) -> None:
        self.by_end: dict[Key, tuple[str, str]] = {}
        self.expect = expect
        self.done = trio.Event()

    async def record(self, key: Key, sock: trio.SocketStream) -> None:
        self.by_end[key] = await endpoint(sock, repr(key))
        if len(self.by_end) == self.expect:
            self.done.set()


async def endpoint(sock: trio.SocketStream, seed: str) -> tuple[str, str]:
    """What an application does on one end of a flow: send a pattern, read to EOF."""
    sent, got = hashlib.sha256(), hashlib.sha256()

    async def send() -> None:
        rng = random.Random(seed)
        left = BYTES_EACH_WAY
        while left:
            chunk = rng.randbytes(min(CHUNK, left))
            await sock.send_all(chunk)
            sent.update(chunk)
            left -= len(chunk)
        await sock.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        received = 0
        while data := await sock.receive_some(CHUNK):
            got.update(data)
            received += len(data)
    await sock.aclose()
    assert received == BYTES_EACH_WAY
    return sent.hexdigest(), got.hexdigest()


def local_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def tls_streams() -> dict[str, TLSStream]:
    """West (server) and east (client) ends of an mTLS connection over a real socket:
    its kernel buffers fill, so writers really block."""
    ca = certs.CertificateAuthority.generate("west")
    west_kp, east_kp = ca.issue("west"), ca.issue("east", role=certs.Role.CLIENT)
    a, b = local_pair()
    streams = {
        "west": TLSStream(a, certs.server_context(
            cert_pem=west_kp.cert_pem, key_pem=west_kp.key_pem, ca_pem=ca.cert_pem,
            require_client_cert=True), server_side=True),
        "east": TLSStream(b, certs.client_context(
            cert_pem=east_kp.cert_pem, key_pem=east_kp.key_pem, ca_pem=ca.cert_pem),
            server_side=False, server_hostname="west"),
    }
    async with trio.open_nursery() as hs:
        for stream in streams.values():
            hs.start_soon(tls_handshake, stream)
    return streams


def hello(name: str, early_bytes: int = 0) -> Hello:
    return Hello(router_id=f"r{name}", site=name, max_frame_bytes=LIMITS.max_frame_bytes,
                 keepalive_interval=LIMITS.keepalive_interval_s, early_bytes=early_bytes)


def make_link(name: str, stream: TLSStream, conn: LinkConnection, peer: Hello,
              on_open: OpenCallback) -> Link:
    return Link(name=name, direction="x", stream=stream, conn=conn, peer=peer, cost=1,
                buffer_limit=LIMITS.link_buffer_bytes, on_open=on_open,
                on_routing=lambda link, payload: None)


async def link_pair(nursery: trio.Nursery, on_open: OpenCallback, *,
                    early_bytes: int = 0) -> dict[str, Link]:
    """West (acceptor) and east (dialer) links over one mTLS connection, running in
    `nursery`; both hand incoming OPENs to `on_open` and offer `early_bytes`."""
    streams = await tls_streams()
    links: dict[str, Link] = {}

    async def up(name: str, role: Role) -> None:
        conn, peer, early = await start_link(streams[name], role=role,
                                             hello=hello(name, early_bytes),
                                             limits=LIMITS, expect_site=None)
        links[name] = link = make_link(name, streams[name], conn, peer, on_open)
        nursery.start_soon(link.run, early)

    async with trio.open_nursery() as hs:
        hs.start_soon(up, "west", Role.ACCEPTOR)
        hs.start_soon(up, "east", Role.DIALER)
    return links


async def linked(nursery: trio.Nursery, hashes: Hashes) -> dict[str, Link]:
    table = FlowTable()

    def on_open(link: Link, flow_id: int, msg: Open) -> None:
        side = FlowSide(link, flow_id)
        flow = SocketFlow(side, table.begin(msg.routing_key, "connector"))
        side.attach(flow)
        side.accept(LIMITS.flow_window_bytes)
        inner, outer = local_pair()
        nursery.start_soon(flow.run, inner)
        nursery.start_soon(hashes.record, (msg.origin_site, int(msg.routing_key), "acceptor"),
                           outer)

    return await link_pair(nursery, on_open)


async def open_and_pump(link: Link, n: int, hashes: Hashes) -> None:
    me = link.conn.hello
    flow = SocketFlow(FlowSide(link), FlowTable().begin(str(n), "listener"))
    flow.side.open(Open(
        routing_key=str(n), origin_site=me.site, origin_router=me.router_id,
        dest_router=link.peer_id, client_addr="test", trace=(me.router_id,),
        window=LIMITS.flow_window_bytes), flow)
    await flow.wait_answer(10)
    inner, outer = local_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flow.run, inner)
        nursery.start_soon(hashes.record, (me.site, n, "opener"), outer)


async def test_bulk_both_ways_on_many_flows_completes_intact() -> None:
    hashes = Hashes(4 * FLOWS_EACH_WAY)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            links = await linked(nursery, hashes)
            async with trio.open_nursery() as flows:
                for link in links.values():
                    for n in range(FLOWS_EACH_WAY):
                        flows.start_soon(open_and_pump, link, n, hashes)
            with trio.fail_after(10):  # the accepting ends finish right after
                await hashes.done.wait()
            pauses = {name: link.read_pauses for name, link in links.items()}
            nursery.cancel_scope.cancel()
    for opener in ("west", "east"):
        for n in range(FLOWS_EACH_WAY):
            sent_o, got_o = hashes.by_end[(opener, n, "opener")]
            sent_a, got_a = hashes.by_end[(opener, n, "acceptor")]
            assert got_a == sent_o and got_o == sent_a, (opener, n)
    assert pauses == {"west": 0, "east": 0}


PINGS = 100_000


def refuse_all(link: Link, flow_id: int, msg: Open) -> None:
    link.conn.refuse_flow(flow_id, FlowCode.NO_TARGET, "no flows in this test")


async def count_pongs(stream: TLSStream, want: int) -> list[int]:
    """Read (a peer that does read) until `want` PONGs arrived; their sequence numbers."""
    buf = bytearray()
    seqs: list[int] = []
    preface = True
    while len(seqs) < want:
        data = await stream.receive_some()
        assert data, "link closed"
        buf += data
        if preface:
            if len(buf) < len(PREFACE):
                continue
            del buf[: len(PREFACE)]
            preface = False
        pos = 0
        while len(buf) - pos >= HEADER_SIZE:
            ftype, _, _, length = HEADER.unpack_from(buf, pos)
            end = pos + HEADER_SIZE + length
            if end > len(buf):
                break
            if ftype == FrameType.PONG:
                seqs.append(int.from_bytes(buf[pos + HEADER_SIZE : end], "big"))
            pos = end
        del buf[:pos]
    return seqs


async def test_ping_flood_from_a_peer_that_reads_is_all_answered() -> None:
    """With a tiny reply budget the reader pauses again and again, and still every
    PING gets its PONG, in order, and the link stays up."""
    streams = await tls_streams()
    west = LinkConnection(role=Role.ACCEPTOR, hello=hello("west"),
                          limits=LinkLimits(max_unsent_control_bytes=2048),
                          now=trio.current_time())
    east = LinkConnection(role=Role.DIALER, hello=hello("east"), limits=LinkLimits(),
                          now=trio.current_time())
    with trio.fail_after(60):
        await streams["east"].send_all(east.data_to_send())
        peer, early = await exchange_hello(streams["west"], west, 10)
        async with trio.open_nursery() as nursery:
            link = make_link("west", streams["west"], west, peer, refuse_all)
            nursery.start_soon(link.run, early)
            pings = b"".join(HEADER.pack(FrameType.PING, 0, 0, 8) + i.to_bytes(8, "big")
                             for i in range(PINGS))
            nursery.start_soon(streams["east"].send_all, pings)
            seqs = await count_pongs(streams["east"], PINGS)
            assert link.closed_reason is None
            nursery.cancel_scope.cancel()
    assert seqs == list(range(PINGS))
    assert link.read_pauses > 0


class ResetRecorder:
    """A FlowHandler that only notes its reset."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def on_accepted(self, window: int, trace: tuple[str, ...], server: str) -> None: ...
    def on_refused(self, code: FlowCode, reason: str) -> None: ...
    def on_data(self, data: bytes) -> None: ...
    def on_credit(self) -> None: ...
    def on_fin(self) -> None: ...

    def on_reset(self, code: FlowCode, reason: str) -> None:
        self.reason = reason


async def test_control_queued_past_the_hard_cap_ends_the_link_at_once() -> None:
    """Our own side keeps queueing control frames (routing updates here) toward a peer
    that reads nothing: past the cap the link ends, its flows reset with the reason,
    without waiting for keepalive."""
    streams = await tls_streams()
    budget = 4096
    west = LinkConnection(role=Role.ACCEPTOR, hello=hello("west"),
                          limits=LinkLimits(max_unsent_control_bytes=budget, dead_after=600),
                          now=trio.current_time())
    east = LinkConnection(role=Role.DIALER, hello=hello("east"), limits=LinkLimits(),
                          now=trio.current_time())
    await streams["east"].send_all(east.data_to_send())
    peer, early = await exchange_hello(streams["west"], west, 10)
    link = make_link("west", streams["west"], west, peer, refuse_all)
    flow = ResetRecorder()
    link.flows[west.open_flow(Open(routing_key="k", origin_site="west", origin_router="rwest",
                                   dest_router="reast", client_addr="", trace=(),
                                   window=1))] = flow
    update = bytes(60_000)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run, early)
            # East never reads: the socket buffers fill, then the queue grows.
            while link.closed_reason is None:
                assert west.unsent_control_bytes <= 4 * budget + len(update) + 10
                west.send_routing(update)
                link.kick()
                await trio.sleep(0)
    assert link.closed_reason is not None
    assert re.fullmatch(r"peer is not reading: \d+ bytes queued", link.closed_reason)
    assert flow.reason == f"link to east lost: {link.closed_reason}"
