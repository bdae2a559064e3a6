"""The link driver over in-memory streams: real TLS 1.3 with client certificates,
HELLO exchange, a flow with data both ways, and a clean end with a reason."""

from __future__ import annotations

import trio
import trio.testing

import certs
from router.net.handshake import HandshakeError, start_link, tls_handshake
from router.net.link import Link
from router.net.tls import TLSStream
from router.protocol import FlowCode, Hello, Open, Role
from router.site.config import Limits


class Recorder:
    """A FlowHandler that keeps what happened."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.accepted = trio.Event()
        self.finished = trio.Event()
        self.reset: str | None = None
        self.got_reset = trio.Event()

    def on_accepted(self, window: int, trace: tuple[str, ...], server: str) -> None:
        self.accepted.set()

    def on_refused(self, code: FlowCode, reason: str) -> None:
        self.reset = reason

    def on_data(self, data: bytes) -> None:
        self.data += data

    def on_credit(self) -> None:
        pass

    def on_fin(self) -> None:
        self.finished.set()

    def on_reset(self, code: FlowCode, reason: str) -> None:
        self.reset = reason
        self.got_reset.set()


def hello(site: str, rid: str) -> Hello:
    return Hello(router_id=rid, site=site, max_frame_bytes=256 * 1024, keepalive_interval=1.0)


async def tls_pair(client_ca: certs.CertificateAuthority | None = None
                   ) -> tuple[TLSStream, TLSStream]:
    west_ca = certs.CertificateAuthority.generate("west")
    server_kp = west_ca.issue("west")
    client_kp = (client_ca or west_ca).issue("east", role=certs.Role.CLIENT)
    left, right = trio.testing.memory_stream_pair()
    server = TLSStream(left, certs.server_context(
        cert_pem=server_kp.cert_pem, key_pem=server_kp.key_pem, ca_pem=west_ca.cert_pem,
        require_client_cert=False), server_side=True)
    client = TLSStream(right, certs.client_context(
        cert_pem=client_kp.cert_pem, key_pem=client_kp.key_pem, ca_pem=west_ca.cert_pem),
        server_side=False, server_hostname="west")
    return server, client


async def test_flow_over_tls_links() -> None:
    server, client = await tls_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tls_handshake, server)
        await tls_handshake(client)
    opened: list[int] = []
    sink = Recorder()
    links: dict[str, Link] = {}

    def on_open(link: Link, flow_id: int, msg: Open) -> None:
        opened.append(flow_id)
        link.flows[flow_id] = sink
        link.conn.accept_flow(flow_id, 1 << 20)
        link.kick()

    results: dict[str, tuple[object, Hello, list[object]]] = {}

    async def setup(name: str, stream: TLSStream, role: Role, me: Hello) -> None:
        results[name] = await start_link(stream, role=role, hello=me, limits=Limits(),
                                          expect_site=None)  # type: ignore[assignment]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(setup, "west", server, Role.ACCEPTOR, hello("west", "rwest"))
        nursery.start_soon(setup, "east", client, Role.DIALER, hello("east", "reast"))
    for name, stream in (("west", server), ("east", client)):
        conn, peer, _ = results[name]
        links[name] = Link(name=name, direction="x", stream=stream, conn=conn,  # type: ignore[arg-type]
                           peer=peer, cost=1, buffer_limit=1 << 22, on_open=on_open,
                           on_routing=lambda link, payload: None)
    assert links["east"].peer.site == "west" and links["west"].peer.site == "east"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(links["west"].run, [])
        nursery.start_soon(links["east"].run, [])
        source = Recorder()
        east = links["east"]
        fid = east.open_flow(Open(routing_key="db", origin_site="east", origin_router="reast",
                                  dest_router="rwest", client_addr="x", trace=("reast",),
                                  window=1 << 20), source)
        await source.accepted.wait()
        payload = bytes(range(256)) * 1024
        east.conn.send_data(fid, payload)
        east.conn.send_fin(fid)
        east.kick()
        with trio.fail_after(10):
            await sink.finished.wait()
        assert bytes(sink.data) == payload
        links["west"].close("test over")
        with trio.fail_after(10):
            await source.got_reset.wait()
    assert source.reset is not None and "test over" in source.reset
    assert opened == [fid]


async def test_foreign_client_certificate_is_refused() -> None:
    server, client = await tls_pair(client_ca=certs.CertificateAuthority.generate("mallory"))
    errors: list[str] = []

    async def side(stream: TLSStream, role: Role, me: Hello) -> None:
        try:
            await tls_handshake(stream)
            await start_link(stream, role=role, hello=me, limits=Limits(), expect_site=None)
        except HandshakeError as exc:
            errors.append(str(exc))
            await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, server, Role.ACCEPTOR, hello("west", "rwest"))
            nursery.start_soon(side, client, Role.DIALER, hello("east", "reast"))
    assert any("peer certificate rejected" in e for e in errors), errors
    assert any("rejected our certificate" in e or "link setup failed" in e for e in errors), errors
