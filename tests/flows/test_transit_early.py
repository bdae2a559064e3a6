"""Early data through a transit router whose next hop offers none (an older router):
the transit holds the DATA and the FIN until that hop accepts, then forwards them; the
far end never sees a byte before its ACCEPT (it would end the link as a flow-control
violation)."""

from __future__ import annotations

from dataclasses import replace

import trio

from router.flows.transit import TransitHalf
from router.net.handshake import start_link
from router.net.link import Link
from router.net.side import FlowSide
from router.protocol import Hello, Open, Role
from tests.net.test_link_backpressure import LIMITS, make_link, tls_streams
from tests.net.test_net_link import Recorder

WINDOW = LIMITS.flow_window_bytes


def hello(router_id: str, site: str, early: int) -> Hello:
    """`site` is the name in the test certificate of that end of the connection."""
    return Hello(router_id=router_id, site=site, max_frame_bytes=LIMITS.max_frame_bytes,
                 keepalive_interval=LIMITS.keepalive_interval_s, early_bytes=early)


async def test_transit_holds_early_data_and_fin_for_a_hop_that_takes_none() -> None:
    a, b = await tls_streams(), await tls_streams()  # east-transit, transit-west
    links: dict[str, Link] = {}
    at_west = Recorder()
    west_saw_open = trio.Event()

    def west_open(link: Link, flow_id: int, msg: Open) -> None:
        side = FlowSide(link, flow_id)
        side.attach(at_west)
        west_saw_open.set()
        at_west.side = side  # type: ignore[attr-defined]

    def transit_open(link: Link, flow_id: int, msg: Open) -> None:
        up, down = TransitHalf(FlowSide(link, flow_id)), TransitHalf(FlowSide(links["t-w"]))
        up.peer, down.peer = down, up
        down.side.open(replace(msg, trace=(*msg.trace, "rtransit"), window=WINDOW), down)
        up.side.attach(up)

    async with trio.open_nursery() as nursery:
        async def up(key: str, stream_pair: dict[str, object], end: str, role: Role,
                     me: Hello, on_open: object) -> None:
            stream = stream_pair[end]
            conn, peer, early = await start_link(stream, role=role, hello=me,  # type: ignore[arg-type]
                                                 limits=LIMITS, expect_site=None)
            links[key] = link = make_link(key, stream, conn, peer, on_open)  # type: ignore[arg-type]
            nursery.start_soon(link.run, early)

        async with trio.open_nursery() as hs:
            hs.start_soon(up, "e-t", a, "east", Role.DIALER, hello("reast", "east", 0),
                          transit_open)
            hs.start_soon(up, "t-e", a, "west", Role.ACCEPTOR,
                          hello("rtransit", "west", 4096), transit_open)
            hs.start_soon(up, "t-w", b, "east", Role.DIALER, hello("rtransit", "east", 4096),
                          transit_open)
            hs.start_soon(up, "w-t", b, "west", Role.ACCEPTOR, hello("rwest", "west", 0),
                          west_open)

        with trio.fail_after(10):
            at_east = Recorder()
            side = FlowSide(links["e-t"])
            request = b"GET / early data " * 100
            with side.batch():  # the OPEN, the request and its FIN: one write
                side.open(Open(routing_key="k", origin_site="east", origin_router="reast",
                               dest_router="rwest", client_addr="x", trace=("reast",),
                               window=WINDOW), at_east)
                assert side.credit() == 4096  # the transit's offer
                side.send(request)
                assert side.can_fin()
                side.fin()
            await west_saw_open.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert at_west.data == b"" and not at_west.finished.is_set()  # held at the transit
            west_side: FlowSide = at_west.side  # type: ignore[attr-defined]
            assert west_side.accept(WINDOW)
            await at_west.finished.wait()  # forwarded once accepted, the FIN after the data
            assert at_west.data == request
            west_side.send(b"pong")
            west_side.fin()
            await at_east.finished.wait()
            assert at_east.accepted.is_set() and at_east.data == b"pong"
            assert at_east.reset is None and at_west.reset is None
        nursery.cancel_scope.cancel()
