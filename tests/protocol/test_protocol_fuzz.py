"""Hypothesis: whatever bytes arrive, receive_data raises nothing but ProtocolError."""

from __future__ import annotations

import contextlib
import struct

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.protocol import (
    PREFACE,
    DataReceived,
    Event,
    FlowCode,
    FlowOpened,
    FrameType,
    Hello,
    LinkConnection,
    LinkLimits,
    Open,
    ProtocolError,
    Role,
)

T0 = 7.0
LIMITS = LinkLimits(max_frame_bytes=1024, max_control_bytes=1024, max_flows=8)
HEADER = struct.Struct(">BBII")


def connection(role: Role) -> LinkConnection:
    hello = Hello(router_id=role.value, site="s", max_frame_bytes=1024, keepalive_interval=1.0)
    return LinkConnection(role=role, hello=hello, limits=LIMITS, now=T0)


def react(conn: LinkConnection, events: list[Event]) -> None:
    """What a driver would do: accept flows, give credit back, answer with data."""
    for ev in events:
        if isinstance(ev, FlowOpened):
            conn.accept_flow(ev.flow_id, 2000)
        elif isinstance(ev, DataReceived) and ev.flow_id in conn.flow_ids():
            conn.grant_credit(ev.flow_id, len(ev.data))


def request(window: int) -> Open:
    return Open(
        routing_key="svc",
        origin_site="s",
        origin_router="dialer",
        dest_router="acceptor",
        client_addr="127.0.0.1:1",
        trace=("dialer",),
        window=window,
    )


def recorded_dialer_stream() -> bytes:
    """Everything a dialer sends in a short but complete conversation."""
    d = connection(Role.DIALER)
    a = connection(Role.ACCEPTOR)
    wire = bytearray()

    def exchange() -> None:
        while d.outgoing_bytes or a.outgoing_bytes:
            out = bytes(d.data_to_send())
            wire.extend(out)
            react(a, a.receive_data(out, T0))
            react(d, d.receive_data(a.data_to_send(), T0))

    f1 = d.open_flow(request(500))
    f3 = d.open_flow(request(500))
    exchange()
    d.send_data(f1, b"hello " * 100)
    d.send_data(f3, bytes(range(256)) * 5)
    d.send_routing(b"routes")
    d.ping(T0)
    exchange()
    d.send_fin(f1)
    d.reset_flow(f3, FlowCode.PEER_RESET, "done")
    d.close("bye")
    exchange()
    return bytes(wire)


STREAM = recorded_dialer_stream()


def feed(data: bytes, chunks: list[int]) -> None:
    conn = connection(Role.ACCEPTOR)
    pos = 0
    sizes = iter(chunks)
    try:
        while pos < len(data):
            size = next(sizes, len(data))
            react(conn, conn.receive_data(data[pos : pos + size], T0))
            pos += size
    except ProtocolError as err:
        assert str(err)
        assert conn.outgoing_bytes > 0  # GOAWAY (after our own preface) is queued


def test_recorded_stream_is_valid() -> None:
    conn = connection(Role.ACCEPTOR)
    events: list[Event] = []
    for i in range(len(STREAM)):
        batch = conn.receive_data(STREAM[i : i + 1], T0)
        react(conn, batch)
        events += batch
    received = b"".join(e.data for e in events if isinstance(e, DataReceived) and e.flow_id == 1)
    assert received == b"hello " * 100
    assert conn.flow_ids() == [1]  # we never sent our FIN on flow 1


chunk_sizes = st.lists(st.integers(min_value=1, max_value=64), max_size=50)
fuzz_settings = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@fuzz_settings
@given(data=st.binary(max_size=2000), chunks=chunk_sizes)
def test_arbitrary_bytes(data: bytes, chunks: list[int]) -> None:
    feed(data, chunks)


@fuzz_settings
@given(data=st.binary(max_size=2000), chunks=chunk_sizes)
def test_arbitrary_bytes_after_handshake(data: bytes, chunks: list[int]) -> None:
    feed(STREAM[: STREAM.index(bytes([FrameType.OPEN]))] + data, chunks)


frame_types = st.integers(min_value=0, max_value=14)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Well-framed but otherwise arbitrary frames: reaches deeper than random bytes."""
    ftype = draw(frame_types)
    flow_id = draw(st.sampled_from([0, 1, 2, 3, 5, 2**32 - 1]))
    body = draw(st.binary(max_size=40))
    flags = draw(st.sampled_from([0, 0, 0, 1]))
    return HEADER.pack(ftype, flags, flow_id, len(body)) + body


@fuzz_settings
@given(parts=st.lists(frames(), max_size=20), chunks=chunk_sizes)
def test_arbitrary_frames_after_handshake(parts: list[bytes], chunks: list[int]) -> None:
    hello = Hello(router_id="p", site="s", max_frame_bytes=1024, keepalive_interval=1.0)
    start = PREFACE + HEADER.pack(FrameType.HELLO, 0, 0, len(hello.to_wire())) + hello.to_wire()
    feed(start + b"".join(parts), chunks)


mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete"]),
    st.integers(min_value=0, max_value=len(STREAM) - 1),
    st.integers(min_value=0, max_value=255),
)


@fuzz_settings
@given(mutations=st.lists(mutation, min_size=1, max_size=4), chunks=chunk_sizes)
def test_mutated_valid_stream(mutations: list[tuple[str, int, int]], chunks: list[int]) -> None:
    data = bytearray(STREAM)
    for kind, pos, value in mutations:
        pos %= len(data)
        if kind == "flip":
            data[pos] ^= value or 1
        elif kind == "insert":
            data.insert(pos, value)
        else:
            del data[pos]
    feed(bytes(data), chunks)


# ---------------------------------------------------------------- HELLO decoding

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats() | st.text(max_size=80) | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10,
)
hello_maps = st.dictionaries(
    st.sampled_from(["router_id", "site", "max_frame_bytes", "keepalive_interval", "x"]),
    msgpack_values, max_size=5)


@settings(max_examples=300)
@given(data=st.binary(max_size=300))
def test_hello_from_arbitrary_bytes_only_raises_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        Hello.from_wire(data)


@settings(max_examples=300)
@given(doc=hello_maps)
def test_hello_from_arbitrary_maps_only_raises_protocol_error(doc: dict[str, object]) -> None:
    with contextlib.suppress(ProtocolError):
        Hello.from_wire(msgpack.packb(doc))
