"""Two LinkConnections back to back: the conversation a driver would have, with exact events."""

from __future__ import annotations

from collections import defaultdict

import pytest

from router.protocol import (
    PREFACE,
    CreditGranted,
    DataReceived,
    Event,
    FlowAccepted,
    FlowCode,
    FlowError,
    FlowFinished,
    FlowOpened,
    FlowRefused,
    FlowReset,
    FrameType,
    Hello,
    HelloReceived,
    LinkClosedByPeer,
    LinkConnection,
    LinkDead,
    LinkLimits,
    Open,
    PongReceived,
    Role,
    RoutingReceived,
)

T0 = 1000.0


def make(role: Role, name: str, limits: LinkLimits | None = None) -> LinkConnection:
    limits = limits or LinkLimits()
    hello = Hello(
        router_id=name,
        site=f"site-{name}",
        max_frame_bytes=limits.max_frame_bytes,
        keepalive_interval=limits.keepalive_interval,
    )
    return LinkConnection(role=role, hello=hello, limits=limits, now=T0)


def request(key: str = "db", window: int = 1000) -> Open:
    return Open(
        routing_key=key,
        origin_site="site-d",
        origin_router="d",
        dest_router="a",
        client_addr="10.0.0.1:5555",
        trace=("d",),
        window=window,
    )


def pump(x: LinkConnection, y: LinkConnection, now: float = T0) -> tuple[list[Event], list[Event]]:
    """Move bytes both ways until quiet; return (events at x, events at y)."""
    at_x: list[Event] = []
    at_y: list[Event] = []
    while x.outgoing_bytes or y.outgoing_bytes:
        if x.outgoing_bytes:
            at_y += y.receive_data(x.data_to_send(), now)
        if y.outgoing_bytes:
            at_x += x.receive_data(y.data_to_send(), now)
    return at_x, at_y


def handshake(limits: LinkLimits | None = None) -> tuple[LinkConnection, LinkConnection]:
    d = make(Role.DIALER, "d", limits)
    a = make(Role.ACCEPTOR, "a", limits)
    at_d, at_a = pump(d, a)
    assert at_d == [HelloReceived(hello=a.hello)]
    assert at_a == [HelloReceived(hello=d.hello)]
    return d, a


def test_preface_and_hello_are_queued_at_construction() -> None:
    d = make(Role.DIALER, "d")
    out = bytes(d.data_to_send())
    assert out.startswith(PREFACE)
    assert out[len(PREFACE)] == FrameType.HELLO
    assert d.outgoing_bytes == 0
    assert d.data_to_send() == b""
    assert d.peer_hello is None


def test_handshake_sets_peer_hello() -> None:
    d, a = handshake()
    assert d.peer_hello == a.hello
    assert a.peer_hello == d.hello
    assert d.flow_ids() == a.flow_ids() == []


def test_full_flow_lifecycle_exact_events() -> None:
    d, a = handshake()
    fid = d.open_flow(request(window=100))
    assert fid == 1
    assert d.credit(fid) == 0  # nothing may be sent before ACCEPT
    at_d, at_a = pump(d, a)
    assert at_d == []
    assert at_a == [FlowOpened(flow_id=1, open=request(window=100))]
    assert a.credit(1) == 0  # not accepted yet

    a.accept_flow(1, window=50)
    assert a.credit(1) == 100
    at_d, at_a = pump(d, a)
    assert at_d == [FlowAccepted(flow_id=1, window=50)]
    assert d.credit(1) == 50

    d.send_data(1, b"x" * 30)
    d.send_data(1, b"y" * 20)
    assert d.credit(1) == 0
    with pytest.raises(FlowError):
        d.send_data(1, b"z")
    at_d, at_a = pump(d, a)
    assert at_a == [DataReceived(flow_id=1, data=b"x" * 30 + b"y" * 20)]

    a.grant_credit(1, 50)
    a.send_data(1, b"reply")
    at_d, at_a = pump(d, a)
    assert at_d == [CreditGranted(flow_id=1, amount=50), DataReceived(flow_id=1, data=b"reply")]
    assert d.credit(1) == 50
    assert a.credit(1) == 95

    d.send_fin(1)
    with pytest.raises(FlowError):
        d.send_data(1, b"late")
    with pytest.raises(FlowError):
        d.send_fin(1)
    at_d, at_a = pump(d, a)
    assert at_a == [FlowFinished(flow_id=1)]
    a.send_data(1, b"still going")  # half-closed: the other direction still works
    d.grant_credit(1, 5)
    a.send_fin(1)
    at_d, at_a = pump(d, a)
    assert at_d == [DataReceived(flow_id=1, data=b"still going"), FlowFinished(flow_id=1)]
    # The acceptor forgot the flow when it sent the second FIN, so the CREDIT that crossed
    # it on the wire is dropped silently.
    assert at_a == []
    assert d.flow_ids() == a.flow_ids() == []
    assert d.credit(1) == a.credit(1) == 0


def test_acceptor_opens_even_ids() -> None:
    d, a = handshake()
    assert a.open_flow(request()) == 2
    assert a.open_flow(request()) == 4
    assert d.open_flow(request()) == 1
    at_d, at_a = pump(d, a)
    assert [e.flow_id for e in at_d if isinstance(e, FlowOpened)] == [2, 4]
    assert [e.flow_id for e in at_a if isinstance(e, FlowOpened)] == [1]
    assert sorted(d.flow_ids()) == [1, 2, 4]


def test_refuse() -> None:
    d, a = handshake()
    d.open_flow(request("nothing-here"))
    pump(d, a)
    a.refuse_flow(1, FlowCode.NO_TARGET, "no service nothing-here")
    assert a.flow_ids() == []
    at_d, _ = pump(d, a)
    assert at_d == [FlowRefused(flow_id=1, code=FlowCode.NO_TARGET,
                                reason="no service nothing-here")]
    assert d.flow_ids() == []


def test_reset_by_either_side() -> None:
    d, a = handshake()
    d.open_flow(request())
    d.open_flow(request())
    pump(d, a)
    a.accept_flow(1, 10)
    a.accept_flow(3, 10)
    pump(d, a)
    d.reset_flow(1, FlowCode.PEER_RESET, "client went away")
    a.reset_flow(3, FlowCode.PEER_RESET, "backend refused connection")
    d.reset_flow(99, FlowCode.PEER_RESET, "unknown ids are ignored")
    at_d, at_a = pump(d, a)
    assert at_a == [FlowReset(flow_id=1, code=FlowCode.PEER_RESET, reason="client went away")]
    assert at_d == [FlowReset(flow_id=3, code=FlowCode.PEER_RESET,
                              reason="backend refused connection")]
    assert d.flow_ids() == a.flow_ids() == []


def test_data_after_our_reset_is_ignored() -> None:
    d, a = handshake()
    d.open_flow(request())
    pump(d, a)
    a.accept_flow(1, 100)
    pump(d, a)
    # The acceptor gives up while the dialer, not yet told, keeps sending.
    a.reset_flow(1, FlowCode.PEER_RESET, "gone")
    reset_bytes = a.data_to_send()
    d.send_data(1, b"in flight")
    d.grant_credit(1, 0)
    d.send_fin(1)
    assert a.receive_data(d.data_to_send(), T0) == []
    assert d.receive_data(reset_bytes, T0) == [FlowReset(flow_id=1, code=FlowCode.PEER_RESET,
                                                         reason="gone")]
    # ... and the same for a flow opened by the peer and closed by us.
    a.open_flow(request())
    pump(d, a)
    d.accept_flow(2, 10)
    pump(d, a)
    d.reset_flow(2, FlowCode.PEER_RESET, "bye")
    a.send_data(2, b"late")
    assert d.receive_data(a.data_to_send(), T0) == []


def test_grant_credit_on_gone_flow_is_noop() -> None:
    d, _ = handshake()
    d.grant_credit(7, 10)
    assert d.outgoing_bytes == 0
    with pytest.raises(ValueError):
        d.grant_credit(1, -1)


def test_large_send_is_split_and_coalesced() -> None:
    limits = LinkLimits(max_frame_bytes=4096)
    d, a = handshake(limits)
    d.open_flow(request())
    pump(d, a)
    a.accept_flow(1, 1 << 20)
    pump(d, a)
    payload = bytes(range(256)) * 64 + b"tail"  # 16388 bytes -> 5 frames
    d.send_data(1, payload)
    wire = bytes(d.data_to_send())
    assert wire.count(bytes([FrameType.DATA, 0, 0, 0, 0, 1])) == 5
    assert a.receive_data(wire, T0) == [DataReceived(flow_id=1, data=payload)]


def test_interleaved_flows_are_not_merged() -> None:
    d, a = handshake()
    d.open_flow(request())
    d.open_flow(request())
    pump(d, a)
    a.accept_flow(1, 100)
    a.accept_flow(3, 100)
    pump(d, a)
    d.send_data(1, b"a")
    d.send_data(1, b"b")
    d.send_data(3, b"c")
    d.send_data(1, b"d")
    _, at_a = pump(d, a)
    assert at_a == [
        DataReceived(flow_id=1, data=b"ab"),
        DataReceived(flow_id=3, data=b"c"),
        DataReceived(flow_id=1, data=b"d"),
    ]


def test_routing_and_goaway() -> None:
    d, a = handshake()
    d.send_routing(b"\x00routes")
    d.close("shutting down")
    d.close("second close is a no-op")
    with pytest.raises(FlowError):
        d.open_flow(request())
    _, at_a = pump(d, a)
    assert at_a == [
        RoutingReceived(payload=b"\x00routes"),
        LinkClosedByPeer(reason="shutting down"),
    ]
    assert a.closing
    with pytest.raises(FlowError):
        a.open_flow(request())


def test_open_while_closing_is_refused() -> None:
    d, a = handshake()
    a.close("draining")
    d.open_flow(request())  # races the GOAWAY
    at_d, at_a = pump(d, a)
    assert at_a == []
    assert at_d == [
        LinkClosedByPeer(reason="draining"),
        FlowRefused(flow_id=1, code=FlowCode.CAPACITY, reason="link is closing"),
    ]


def test_max_flows() -> None:
    limits = LinkLimits(max_flows=2)
    d, a = handshake(limits)
    d.open_flow(request())
    d.open_flow(request())
    with pytest.raises(FlowError, match="2 flows"):
        d.open_flow(request())
    pump(d, a)
    # The limit counts flows in both directions: the acceptor is full as well.
    with pytest.raises(FlowError):
        a.open_flow(request())
    d.reset_flow(1, FlowCode.PEER_RESET, "done")
    assert d.open_flow(request()) == 5


def test_peer_over_max_flows_gets_refusal() -> None:
    d = make(Role.DIALER, "d", LinkLimits())
    a = make(Role.ACCEPTOR, "a", LinkLimits(max_flows=1))
    pump(d, a)
    d.open_flow(request())
    d.open_flow(request())
    at_d, at_a = pump(d, a)
    assert at_a == [FlowOpened(flow_id=1, open=request())]
    assert at_d == [FlowRefused(flow_id=3, code=FlowCode.CAPACITY,
                                reason="too many flows on this link")]


# ---------------------------------------------------------------- keepalive


def test_keepalive_ping_after_send_idleness() -> None:
    d = make(Role.DIALER, "d")
    d.data_to_send()
    assert d.next_deadline() == T0 + 1.0
    assert d.handle_timer(T0 + 0.5) == []
    assert d.outgoing_bytes == 0
    assert d.handle_timer(T0 + 1.0) == []
    ping = bytes(d.data_to_send())
    assert ping[0] == FrameType.PING
    assert len(ping) == 10 + 8
    assert d.next_deadline() == T0 + 2.0


def test_commands_postpone_keepalive() -> None:
    d, _ = handshake()
    d.send_routing(b"r")
    assert d.handle_timer(T0 + 1.0) == []  # the routing frame counts as traffic
    assert d.outgoing_bytes == len(b"r") + 10
    d.data_to_send()
    d.handle_timer(T0 + 2.0)
    assert bytes(d.data_to_send())[0] == FrameType.PING


def test_pong_reports_rtt() -> None:
    d, a = handshake()
    d.handle_timer(T0 + 1.0)
    assert a.receive_data(d.data_to_send(), T0 + 1.1) == []
    events = d.receive_data(a.data_to_send(), T0 + 1.25)
    assert len(events) == 1
    assert isinstance(events[0], PongReceived)
    assert events[0].rtt == pytest.approx(0.25)
    # An unsolicited PONG (or a duplicate) yields nothing.
    pong = bytes([FrameType.PONG, 0, 0, 0, 0, 0, 0, 0, 0, 8]) + b"\xff" * 8
    assert d.receive_data(pong, T0 + 1.3) == []


def test_link_dead_after_silence() -> None:
    d, a = handshake()
    assert d.next_deadline() == T0 + 1.0
    d.handle_timer(T0 + 1.0)
    d.handle_timer(T0 + 2.0)
    # Any bytes count as liveness.
    d.receive_data(bytes(a.data_to_send()) or b"", T0 + 2.0)
    a.handle_timer(T0 + 2.5)
    d.receive_data(a.data_to_send(), T0 + 2.5)
    assert d.handle_timer(T0 + 3.0) == []
    assert d.next_deadline() <= T0 + 5.5
    assert d.handle_timer(T0 + 5.4) == []
    assert d.handle_timer(T0 + 5.5) == [LinkDead(reason="no traffic from peer for 3.0 s")]
    assert d.handle_timer(T0 + 9.0) == []
    assert d.next_deadline() == float("inf")


def test_never_hears_from_peer() -> None:
    d = make(Role.DIALER, "d")
    deadline = d.next_deadline()
    events: list[Event] = []
    while not events:
        events = d.handle_timer(deadline)
        deadline = d.next_deadline()
    assert events == [LinkDead(reason="no traffic from peer for 3.0 s")]


# ---------------------------------------------------------------- chunking


class Peer:
    """A tiny deterministic application: accepts everything, answers each flow, closes."""

    def __init__(self, conn: LinkConnection) -> None:
        self.conn = conn
        self.log: dict[int, list[Event]] = defaultdict(list)
        self.inbox: dict[int, bytearray] = defaultdict(bytearray)
        self.outbox: dict[int, bytearray] = {}

    def plan(self, flow_id: int, payload: bytes) -> None:
        self.outbox[flow_id] = bytearray(payload)

    def pump_out(self, flow_id: int) -> None:
        buf = self.outbox.get(flow_id)
        if buf is None:
            return
        if flow_id not in self.conn.flow_ids():  # reset later in the same batch
            del self.outbox[flow_id]
            return
        n = min(len(buf), self.conn.credit(flow_id))
        if n:
            self.conn.send_data(flow_id, bytes(buf[:n]))
            del buf[:n]
        if not buf:
            self.conn.send_fin(flow_id)
            del self.outbox[flow_id]

    def handle(self, events: list[Event]) -> None:
        for ev in events:
            match ev:
                case DataReceived(flow_id=fid, data=data):
                    self.inbox[fid] += data
                    self.conn.grant_credit(fid, len(data))
                case CreditGranted(flow_id=fid):
                    self.pump_out(fid)
                case FlowOpened(flow_id=fid, open=req):
                    self.log[fid].append(ev)
                    if req.routing_key == "refuse-me":
                        self.conn.refuse_flow(fid, FlowCode.NO_TARGET, "refused")
                        continue
                    self.conn.accept_flow(fid, 700)
                    if req.routing_key == "reset-me":
                        self.conn.reset_flow(fid, FlowCode.PEER_RESET, "reset")
                        continue
                    self.plan(fid, req.routing_key.encode() * 500)
                    self.pump_out(fid)
                case FlowAccepted(flow_id=fid):
                    self.log[fid].append(ev)
                    self.pump_out(fid)
                case FlowFinished(flow_id=fid) | FlowReset(flow_id=fid) | FlowRefused(flow_id=fid):
                    self.log[fid].append(ev)
                    if not isinstance(ev, FlowFinished):
                        self.outbox.pop(fid, None)
                case _:
                    self.log[0].append(ev)


def converse(chunk: int) -> tuple[Peer, Peer]:
    d = Peer(make(Role.DIALER, "d", LinkLimits(max_frame_bytes=1024)))
    a = Peer(make(Role.ACCEPTOR, "a", LinkLimits(max_frame_bytes=1024)))
    for key in ("alpha", "beta", "refuse-me", "reset-me"):
        fid = d.conn.open_flow(request(key, window=900))
        d.plan(fid, key.encode() * 700)
    a.plan(a.conn.open_flow(request("gamma", window=333)), b"g" * 3000)
    for _ in range(10_000):
        if not (d.conn.outgoing_bytes or a.conn.outgoing_bytes):
            break
        for src, dst in ((d, a), (a, d)):
            wire = bytes(src.conn.data_to_send())
            for i in range(0, len(wire), chunk):
                dst.handle(dst.conn.receive_data(wire[i : i + chunk], T0))
    return d, a


@pytest.mark.parametrize("chunk", [1, 7, 1 << 30])
def test_conversation_is_independent_of_chunking(chunk: int) -> None:
    d, a = converse(chunk)
    assert d.conn.flow_ids() == a.conn.flow_ids() == []
    assert d.outbox == a.outbox == {}
    assert {fid: bytes(b) for fid, b in a.inbox.items()} == {
        1: b"alpha" * 700,
        3: b"beta" * 700,
        2: b"gamma" * 500,
    }
    assert {fid: bytes(b) for fid, b in d.inbox.items()} == {
        1: b"alpha" * 500,
        3: b"beta" * 500,
        2: b"g" * 3000,
    }
    reference_d, reference_a = converse(1 << 30)
    assert d.log == reference_d.log
    assert a.log == reference_a.log
    assert d.log[7] == [FlowAccepted(flow_id=7, window=700),
                        FlowReset(flow_id=7, code=FlowCode.PEER_RESET, reason="reset")]
    assert d.log[5] == [FlowRefused(flow_id=5, code=FlowCode.NO_TARGET, reason="refused")]
    assert a.log[2] == [FlowAccepted(flow_id=2, window=700), FlowFinished(flow_id=2)]


def test_credit_is_coalesced_to_a_quarter_window() -> None:
    """Small deliveries cost no CREDIT frame until a quarter of the window is consumed,
    and a sender that used its whole window always gets credit back."""
    d, a = handshake()
    fid = d.open_flow(request(window=1000))
    pump(d, a)
    a.accept_flow(fid, window=400)
    pump(d, a)
    for _ in range(9):
        d.send_data(fid, b"x" * 10)
        pump(d, a)
        a.grant_credit(fid, 10)
    at_d, _ = pump(d, a)
    assert at_d == []  # 90 bytes consumed < 100: nothing sent yet
    assert d.credit(fid) == 310
    d.send_data(fid, b"x" * 10)
    pump(d, a)
    a.grant_credit(fid, 10)
    at_d, _ = pump(d, a)
    assert at_d == [CreditGranted(flow_id=fid, amount=100)]
    assert d.credit(fid) == 400
    d.send_data(fid, b"y" * 400)  # the whole window in flight
    pump(d, a)
    a.grant_credit(fid, 400)
    at_d, _ = pump(d, a)
    assert at_d == [CreditGranted(flow_id=fid, amount=400)]
