"""Early data: DATA and FIN sent with the OPEN, before the ACCEPT, within the
acceptor's HELLO early_bytes; credit counts them from the OPEN on both ends."""

from __future__ import annotations

import msgpack
import pytest

from router.protocol import (
    CreditGranted,
    DataReceived,
    ErrorCode,
    FlowAccepted,
    FlowCode,
    FlowError,
    FlowFinished,
    FlowOpened,
    FlowRefused,
    FrameType,
    Hello,
    LinkConnection,
    LinkLimits,
    Open,
    ProtocolError,
    Role,
)
from router.protocol.frames import HEADER
from tests.protocol.test_protocol_link import pump

T0 = 10.0
EARLY = 1000


def make(role: Role, name: str, early: int) -> LinkConnection:
    hello = Hello(router_id=name, site=f"site-{name}", max_frame_bytes=4096,
                  keepalive_interval=1.0, early_bytes=early)
    return LinkConnection(role=role, hello=hello,
                          limits=LinkLimits(max_frame_bytes=4096), now=T0)


def linked(early_d: int = EARLY, early_a: int = EARLY) -> tuple[LinkConnection, LinkConnection]:
    d, a = make(Role.DIALER, "d", early_d), make(Role.ACCEPTOR, "a", early_a)
    pump(d, a)
    return d, a


def request(window: int = 5000) -> Open:
    return Open(routing_key="k", origin_site="s", origin_router="d", dest_router="a",
                client_addr="", trace=("d",), window=window)


def test_hello_without_early_bytes_means_none() -> None:
    """An older router's HELLO has no early_bytes: it is offered none."""
    body = msgpack.packb({"router_id": "r", "site": "s", "max_frame_bytes": 4096,
                          "keepalive_interval": 1.0})
    assert Hello.from_wire(body).early_bytes == 0
    with pytest.raises(ValueError):
        Hello(router_id="r", site="s", max_frame_bytes=4096, keepalive_interval=1.0,
              early_bytes=-1)


def test_request_with_its_fin_travels_with_the_open() -> None:
    d, a = linked()
    fid = d.open_flow(request())
    assert d.credit(fid) == EARLY  # a's offer
    d.send_data(fid, b"q" * 600)
    d.send_fin(fid)
    _, at_a = pump(d, a)
    assert at_a == [FlowOpened(flow_id=fid, open=request()),
                    DataReceived(flow_id=fid, data=b"q" * 600), FlowFinished(flow_id=fid)]
    a.grant_credit(fid, 600)  # consumed before the answer: granted with the ACCEPT's window
    a.accept_flow(fid, 2000)
    a.send_data(fid, b"r" * 10)
    a.send_fin(fid)
    at_d, _ = pump(d, a)
    assert at_d == [FlowAccepted(flow_id=fid, window=2000),
                    DataReceived(flow_id=fid, data=b"r" * 10), FlowFinished(flow_id=fid)]
    assert d.flow_ids() == a.flow_ids() == []  # both closed


def test_credit_counts_the_early_bytes_on_both_ends() -> None:
    d, a = linked()
    fid = d.open_flow(request())
    d.send_data(fid, b"x" * 700)
    assert d.credit(fid) == EARLY - 700
    with pytest.raises(FlowError):
        d.send_data(fid, b"x" * 301)  # past the early offer
    pump(d, a)
    a.accept_flow(fid, 4000)
    pump(d, a)
    assert d.credit(fid) == 4000 - 700  # the window counts from the OPEN
    d.send_data(fid, b"y" * 3300)  # exactly the rest of the window
    _, at_a = pump(d, a)
    assert at_a[-1] == DataReceived(flow_id=fid, data=b"y" * 3300)
    # Granting all 4000 (the 700 early ones included) gives the sender 4000 again.
    a.grant_credit(fid, 4000)
    at_d, _ = pump(d, a)
    assert at_d == [CreditGranted(flow_id=fid, amount=4000)]
    assert d.credit(fid) == 4000


def test_accept_window_never_below_the_early_offer() -> None:
    d, a = linked()
    fid = d.open_flow(request())
    d.send_data(fid, b"x" * EARLY)
    pump(d, a)
    a.accept_flow(fid, 10)  # raised to the offer: the opener's credit cannot go negative
    at_d, _ = pump(d, a)
    assert at_d == [FlowAccepted(flow_id=fid, window=EARLY)]
    assert d.credit(fid) == 0


def test_early_data_is_dropped_with_a_refusal() -> None:
    d, a = linked()
    fid = d.open_flow(request())
    d.send_data(fid, b"x" * 10)
    d.send_fin(fid)
    pump(d, a)
    a.refuse_flow(fid, FlowCode.NO_TARGET, "none")
    at_d, _ = pump(d, a)
    assert isinstance(at_d[0], FlowRefused)
    assert d.flow_ids() == a.flow_ids() == []


def test_no_early_data_or_fin_toward_a_peer_that_offers_none() -> None:
    d, _ = linked(early_a=0)
    fid = d.open_flow(request())
    assert d.credit(fid) == 0
    assert not d.can_fin(fid)
    with pytest.raises(FlowError, match="early"):
        d.send_fin(fid)
    with pytest.raises(FlowError):
        d.send_data(fid, b"x")


def test_peer_past_our_early_offer_is_a_flow_control_error() -> None:
    d, a = linked(early_a=100)
    fid = d.open_flow(request())
    data = HEADER.pack(FrameType.DATA, 0, fid, 101) + b"x" * 101
    a.receive_data(d.data_to_send(), T0)
    with pytest.raises(ProtocolError) as info:
        a.receive_data(data, T0)
    assert info.value.code is ErrorCode.FLOW_CONTROL


def test_credit_frame_before_our_accept_is_a_state_error() -> None:
    """Early data goes one way only: the acceptor grants nothing before it answers."""
    d, a = linked()
    fid = d.open_flow(request())
    pump(d, a)
    a.grant_credit(fid, 50)  # accrues, no CREDIT frame
    assert a.outgoing_bytes == 0
