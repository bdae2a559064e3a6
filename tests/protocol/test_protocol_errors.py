"""Protocol violations: each raises ProtocolError with the right code and a reason."""

from __future__ import annotations

import struct

import msgpack
import pytest

from router.protocol import (
    PREFACE,
    VERSION,
    Accept,
    ErrorCode,
    FlowCode,
    FlowError,
    FrameType,
    GoAway,
    Hello,
    LinkConnection,
    LinkLimits,
    Open,
    ProtocolError,
    Reset,
    Role,
)

T0 = 50.0
HEADER = struct.Struct(">BBII")
LIMITS = LinkLimits(max_frame_bytes=4096, max_control_bytes=2048)


def hello(name: str) -> Hello:
    return Hello(router_id=name, site="s", max_frame_bytes=4096, keepalive_interval=1.0)


def frame(ftype: int, flow_id: int, body: bytes = b"", flags: int = 0) -> bytes:
    return HEADER.pack(ftype, flags, flow_id, len(body)) + body


def peer_start(name: str = "peer") -> bytes:
    return PREFACE + frame(FrameType.HELLO, 0, hello(name).to_wire())


def request(window: int = 100) -> Open:
    return Open(
        routing_key="k",
        origin_site="s",
        origin_router="r",
        dest_router="",
        client_addr="",
        trace=(),
        window=window,
    )


def fresh(role: Role = Role.ACCEPTOR) -> LinkConnection:
    conn = LinkConnection(role=role, hello=hello("me"), limits=LIMITS, now=T0)
    conn.data_to_send()
    return conn


def ready(role: Role = Role.ACCEPTOR) -> LinkConnection:
    conn = fresh(role)
    conn.receive_data(peer_start(), T0)
    return conn


def raises(conn: LinkConnection, data: bytes, code: ErrorCode) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(data, T0)
    assert info.value.code is code
    assert str(info.value)
    return info.value


def sent_frames(wire: bytes) -> list[tuple[int, int, bytes]]:
    """Split our own output into (type, flow, body), skipping a preface if present."""
    pos = len(PREFACE) if wire.startswith(PREFACE) else 0
    frames = []
    while pos < len(wire):
        ftype, _, flow_id, length = HEADER.unpack_from(wire, pos)
        frames.append((ftype, flow_id, wire[pos + 10 : pos + 10 + length]))
        pos += 10 + length
    return frames


def goaway_reason(conn: LinkConnection) -> str:
    frames = sent_frames(bytes(conn.data_to_send()))
    assert frames[-1][0] == FrameType.GOAWAY
    return GoAway.from_wire(frames[-1][2]).reason


def test_bad_preface_detected_on_first_byte() -> None:
    conn = fresh()
    err = raises(conn, b"G", ErrorCode.BAD_PREFACE)
    assert str(err) == "not a vanrouter link (bad preface)"
    assert goaway_reason(conn) == "not a vanrouter link (bad preface)"
    # The link stays broken.
    with pytest.raises(ProtocolError):
        conn.receive_data(b"VANL", T0)


def test_bad_preface_http() -> None:
    raises(fresh(), b"GET / HTTP/1.1\r\n\r\n", ErrorCode.BAD_PREFACE)


def test_wrong_version_queues_goaway() -> None:
    conn = fresh()
    assert conn.receive_data(b"VANL", T0) == []
    err = raises(conn, bytes([VERSION + 1]), ErrorCode.VERSION)
    expected = f"unsupported protocol version {VERSION + 1}; this router speaks {VERSION}"
    assert str(err) == expected
    assert goaway_reason(conn) == expected


@pytest.mark.parametrize(
    "first",
    [
        frame(FrameType.PING, 0, b"\0" * 8),
        frame(FrameType.DATA, 1, b"x"),
        frame(FrameType.OPEN, 1, request().to_wire()),
    ],
)
def test_first_frame_must_be_hello(first: bytes) -> None:
    raises(fresh(), PREFACE + first, ErrorCode.HELLO_EXPECTED)


def test_second_hello() -> None:
    raises(ready(), frame(FrameType.HELLO, 0, hello("x").to_wire()), ErrorCode.BAD_FRAME)


def test_oversized_data_refused_from_header_alone() -> None:
    conn = ready()
    err = raises(conn, HEADER.pack(FrameType.DATA, 0, 1, 4097), ErrorCode.FRAME_TOO_LARGE)
    assert str(err) == "frame of 4097 bytes exceeds limit of 4096"


def test_oversized_control_refused_from_header_alone() -> None:
    conn = ready()
    header = HEADER.pack(FrameType.ROUTING, 0, 0, 2**32 - 1)
    assert conn.receive_data(header[:9], T0) == []
    err = raises(conn, header[9:], ErrorCode.FRAME_TOO_LARGE)
    assert str(err) == f"frame of {2**32 - 1} bytes exceeds limit of 2048"


def test_limits_apply_before_hello_too() -> None:
    raises(fresh(), PREFACE + HEADER.pack(FrameType.HELLO, 0, 0, 2049), ErrorCode.FRAME_TOO_LARGE)


@pytest.mark.parametrize("ftype", [0, 14, 255])
def test_unknown_frame_type(ftype: int) -> None:
    raises(ready(), HEADER.pack(ftype, 0, 0, 0), ErrorCode.UNKNOWN_FRAME)


def test_nonzero_flags() -> None:
    raises(ready(), frame(FrameType.PING, 0, b"\0" * 8, flags=1), ErrorCode.BAD_FRAME)
    conn = ready()
    conn.receive_data(frame(FrameType.OPEN, 1, request().to_wire()), T0)
    conn.accept_flow(1, 10)
    raises(conn, frame(FrameType.DATA, 1, b"x", flags=4), ErrorCode.BAD_FRAME)


@pytest.mark.parametrize("ftype", [FrameType.PING, FrameType.ROUTING, FrameType.GOAWAY])
def test_link_frames_need_flow_zero(ftype: FrameType) -> None:
    body = b"\0" * 8 if ftype is FrameType.PING else GoAway(reason="x").to_wire()
    raises(ready(), frame(ftype, 3, body), ErrorCode.BAD_FLOW_ID)


@pytest.mark.parametrize(
    ("role", "flow_id"),
    [(Role.ACCEPTOR, 2), (Role.DIALER, 1), (Role.ACCEPTOR, 0)],
)
def test_open_with_bad_flow_id(role: Role, flow_id: int) -> None:
    raises(ready(role), frame(FrameType.OPEN, flow_id, request().to_wire()), ErrorCode.BAD_FLOW_ID)


def test_open_reusing_flow_id() -> None:
    conn = ready()
    conn.receive_data(frame(FrameType.OPEN, 5, request().to_wire()), T0)
    raises(conn, frame(FrameType.OPEN, 5, request().to_wire()), ErrorCode.BAD_FLOW_ID)
    conn = ready()
    conn.receive_data(frame(FrameType.OPEN, 5, request().to_wire()), T0)
    conn.reset_flow(5, FlowCode.PEER_RESET, "x")
    raises(conn, frame(FrameType.OPEN, 3, request().to_wire()), ErrorCode.BAD_FLOW_ID)


def test_frames_for_never_opened_flows() -> None:
    for body_frame in (
        frame(FrameType.DATA, 9, b"x"),
        frame(FrameType.FIN, 9),
        frame(FrameType.CREDIT, 9, b"\0\0\0\1"),
        frame(FrameType.ACCEPT, 2, Accept(window=1).to_wire()),
        frame(FrameType.RESET, 9, Reset(code=FlowCode.PEER_RESET, reason="r").to_wire()),
    ):
        raises(ready(), body_frame, ErrorCode.BAD_FLOW_ID)


def test_flow_frames_on_flow_zero() -> None:
    raises(ready(), frame(FrameType.DATA, 0, b"x"), ErrorCode.BAD_FLOW_ID)
    raises(ready(), frame(FrameType.FIN, 0), ErrorCode.BAD_FLOW_ID)


def opened(window: int = 10) -> LinkConnection:
    """An acceptor with flow 1 opened by the peer and accepted with ``window``."""
    conn = ready()
    conn.receive_data(frame(FrameType.OPEN, 1, request(window=100).to_wire()), T0)
    conn.accept_flow(1, window)
    conn.data_to_send()
    return conn


def test_data_beyond_window() -> None:
    conn = opened(window=10)
    assert conn.receive_data(frame(FrameType.DATA, 1, b"x" * 6), T0)
    err = raises(conn, frame(FrameType.DATA, 1, b"x" * 5), ErrorCode.FLOW_CONTROL)
    assert "window of 4" in str(err)


def test_credit_restores_window() -> None:
    conn = opened(window=10)
    conn.receive_data(frame(FrameType.DATA, 1, b"x" * 10), T0)
    conn.grant_credit(1, 10)
    assert conn.receive_data(frame(FrameType.DATA, 1, b"y" * 10), T0)


def test_data_before_accept_past_the_early_offer_is_flow_control_error() -> None:
    conn = ready()  # our HELLO offers no early data
    conn.receive_data(frame(FrameType.OPEN, 1, request().to_wire()), T0)
    raises(conn, frame(FrameType.DATA, 1, b"x"), ErrorCode.FLOW_CONTROL)


def test_data_after_fin_is_state_error() -> None:
    conn = opened()
    conn.receive_data(frame(FrameType.FIN, 1), T0)
    raises(conn, frame(FrameType.DATA, 1, b"x"), ErrorCode.FLOW_STATE)
    conn = opened()
    raises(conn, frame(FrameType.FIN, 1) + frame(FrameType.FIN, 1), ErrorCode.FLOW_STATE)


def test_accept_for_peer_opened_flow_is_state_error() -> None:
    conn = ready()
    conn.receive_data(frame(FrameType.OPEN, 1, request().to_wire()), T0)
    raises(conn, frame(FrameType.ACCEPT, 1, Accept(window=5).to_wire()), ErrorCode.FLOW_STATE)


@pytest.mark.parametrize("amount", [0, 2**31])
def test_bad_credit(amount: int) -> None:
    conn = opened()
    raises(conn, frame(FrameType.CREDIT, 1, struct.pack(">I", amount)), ErrorCode.FLOW_CONTROL)


def test_credit_overflow_accumulated() -> None:
    conn = opened()  # the peer granted us 100
    raises(conn, frame(FrameType.CREDIT, 1, struct.pack(">I", 2**31 - 100)), ErrorCode.FLOW_CONTROL)


@pytest.mark.parametrize("body", [b"", b"\0\0\1", b"\0\0\0\1\0"], ids=["empty", "short", "long"])
def test_credit_body_size(body: bytes) -> None:
    raises(opened(), frame(FrameType.CREDIT, 1, body), ErrorCode.BAD_FRAME)


def test_fixed_size_bodies() -> None:
    raises(ready(), frame(FrameType.PING, 0, b"1234567"), ErrorCode.BAD_FRAME)
    raises(ready(), frame(FrameType.PONG, 0, b"123456789"), ErrorCode.BAD_FRAME)
    raises(opened(), frame(FrameType.FIN, 1, b"x"), ErrorCode.BAD_FRAME)


def test_open_after_peer_goaway() -> None:
    conn = ready()
    conn.receive_data(frame(FrameType.GOAWAY, 0, GoAway(reason="bye").to_wire()), T0)
    raises(conn, frame(FrameType.OPEN, 1, request().to_wire()), ErrorCode.LINK_CLOSED)


def test_error_goaway_carries_reason() -> None:
    conn = opened(window=1)
    err = raises(conn, frame(FrameType.DATA, 1, b"xx"), ErrorCode.FLOW_CONTROL)
    assert goaway_reason(conn) == str(err)


# ---------------------------------------------------------------- local misuse


def test_local_misuse_raises_flow_error() -> None:
    conn = opened(window=10)  # peer granted 100
    with pytest.raises(FlowError, match="credit is 100"):
        conn.send_data(1, b"x" * 101)
    with pytest.raises(FlowError):
        conn.send_data(3, b"x")
    with pytest.raises(FlowError):
        conn.accept_flow(1, 5)  # already accepted
    with pytest.raises(FlowError):
        conn.refuse_flow(1, FlowCode.NO_TARGET, "too late")
    with pytest.raises(FlowError):
        conn.send_fin(77)
    with pytest.raises(FlowError):
        conn.grant_credit(1, 2**31)
    conn.send_data(1, b"x" * 100)
    assert conn.credit(1) == 0
    with pytest.raises(ValueError):
        conn.accept_flow(1, -1)


def test_opener_cannot_send_before_accept_without_an_early_offer() -> None:
    conn = ready(Role.DIALER)  # the peer's HELLO offers no early data
    fid = conn.open_flow(request())
    with pytest.raises(FlowError):
        conn.send_data(fid, b"x")
    with pytest.raises(FlowError):
        conn.send_fin(fid)
    conn.reset_flow(fid, FlowCode.PEER_RESET, "abandoned")
    assert conn.flow_ids() == []


def test_hello_larger_than_limits() -> None:
    big = Hello(router_id="me", site="s", max_frame_bytes=8192, keepalive_interval=1.0)
    with pytest.raises(ValueError, match="max_frame_bytes"):
        LinkConnection(role=Role.DIALER, hello=big, limits=LIMITS, now=T0)


def test_routing_payload_limit() -> None:
    conn = ready()
    conn.send_routing(b"x" * 2048)
    with pytest.raises(ValueError):
        conn.send_routing(b"x" * 2049)


# ---------------------------------------------------------------- message bodies


OPEN_FIELDS = {
    "routing_key": "k",
    "origin_site": "s",
    "origin_router": "r",
    "dest_router": "",
    "client_addr": "",
    "trace": ["a", "b"],
    "window": 5,
}


def packed(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"\xc1", "not valid msgpack"),
        (b"\x93\x01", "not valid msgpack"),  # truncated array
        (packed(OPEN_FIELDS) + b"\x00", "not valid msgpack"),  # trailing bytes
        (packed([1, 2, 3]), "must be a map"),
        (packed({**OPEN_FIELDS, "window": -1}), "window"),
        (packed({**OPEN_FIELDS, "window": 2**31}), "window"),
        (packed({**OPEN_FIELDS, "window": True}), "window"),
        (packed({**OPEN_FIELDS, "window": "5"}), "window"),
        (packed({**OPEN_FIELDS, "routing_key": b"k"}), "routing_key"),
        (packed({**OPEN_FIELDS, "routing_key": ""}), "routing_key"),
        (packed({**OPEN_FIELDS, "client_addr": "x" * 257}), "client_addr"),
        (packed({**OPEN_FIELDS, "trace": "ab"}), "trace"),
        (packed({**OPEN_FIELDS, "trace": [1]}), "trace"),
        (packed({**OPEN_FIELDS, "trace": ["r"] * 65}), "trace"),
        (packed({k: v for k, v in OPEN_FIELDS.items() if k != "origin_site"}), "origin_site"),
        (packed({1: 2}), "not valid msgpack"),  # non-string keys
    ],
)
def test_malformed_open(body: bytes, needle: str) -> None:
    err = raises(ready(), frame(FrameType.OPEN, 1, body), ErrorCode.BAD_MESSAGE)
    assert needle in str(err)


def test_unknown_fields_are_ignored() -> None:
    conn = ready()
    events = conn.receive_data(
        frame(FrameType.OPEN, 1, packed({**OPEN_FIELDS, "future": {"x": [1]}})), T0
    )
    assert len(events) == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"router_id": "", "site": "s", "max_frame_bytes": 4096, "keepalive_interval": 1.0},
        {"router_id": "r", "site": "s", "max_frame_bytes": 10, "keepalive_interval": 1.0},
        {"router_id": "r", "site": "s", "max_frame_bytes": 4096, "keepalive_interval": 0},
        {"router_id": "r", "site": "s", "max_frame_bytes": 4096, "keepalive_interval": "1"},
        {
            "router_id": "r",
            "site": "s",
            "max_frame_bytes": 4096,
            "keepalive_interval": float("nan"),
        },
        {"router_id": "r", "site": "s", "max_frame_bytes": 4096},
    ],
)
def test_malformed_hello(fields: dict[str, object]) -> None:
    raises(fresh(), PREFACE + frame(FrameType.HELLO, 0, packed(fields)), ErrorCode.BAD_MESSAGE)


def test_hello_integer_interval_accepted() -> None:
    fields = {"router_id": "r", "site": "s", "max_frame_bytes": 4096, "keepalive_interval": 2}
    parsed = Hello.from_wire(packed(fields))
    assert parsed.keepalive_interval == 2.0
    assert isinstance(parsed.keepalive_interval, float)


@pytest.mark.parametrize("ftype", [FrameType.REFUSE, FrameType.RESET, FrameType.ACCEPT])
def test_malformed_flow_messages(ftype: FrameType) -> None:
    conn = ready(Role.DIALER)
    conn.open_flow(request())
    raises(conn, frame(ftype, 1, packed({"reason": 5, "window": "w"})), ErrorCode.BAD_MESSAGE)


def test_messages_round_trip() -> None:
    msgs: list[Hello | Open | Accept | Reset | GoAway] = [
        hello("r"),
        request(),
        Accept(window=0),
        Reset(code=FlowCode.PEER_RESET, reason="x" * 1024),
        GoAway(reason=""),
    ]
    for msg in msgs:
        assert type(msg).from_wire(msg.to_wire()) == msg


def test_local_construction_validates() -> None:
    with pytest.raises(ValueError):
        Accept(window=-5)
    with pytest.raises(ValueError):
        Reset(code=FlowCode.PEER_RESET, reason="x" * 1025)
