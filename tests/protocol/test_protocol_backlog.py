"""Replies to the peer are bounded: past max_unsent_control_bytes, receive_data stops
parsing and keeps the rest, and goes on once data_to_send took the backlog."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.protocol import (
    DataReceived,
    Event,
    FlowCode,
    FlowOpened,
    FrameType,
    LinkConnection,
    LinkDead,
    LinkLimits,
    Refuse,
    Role,
)
from router.protocol.limits import CONTROL_BYTES_PER_FLOW, MIN_UNSENT_CONTROL_BYTES
from tests.protocol.test_protocol_errors import frame, hello, peer_start, request, sent_frames

T0 = 50.0
BUDGET = 1000
PING_SIZE = 10 + 8  # header + sequence


def ready(**limits: int) -> LinkConnection:
    conn = LinkConnection(role=Role.ACCEPTOR, hello=hello("me"),
                          limits=LinkLimits(max_unsent_control_bytes=BUDGET, **limits), now=T0)
    conn.receive_data(peer_start(), T0)
    conn.data_to_send()
    return conn


def pings(start: int, n: int) -> bytes:
    return b"".join(frame(FrameType.PING, 0, i.to_bytes(8, "big")) for i in range(start, n))


def drain_replies(conn: LinkConnection, ftype: FrameType) -> list[bytes]:
    """Bodies of the frames of `ftype` the connection queued; empties its queue."""
    return [body for t, _, body in sent_frames(bytes(conn.data_to_send())) if t == ftype]


def resume(conn: LinkConnection, ftype: FrameType, bound: int
           ) -> tuple[list[bytes], list[Event], int]:
    """What a driver does: drain, then go on with held input until none is left.
    Returns the bodies of `ftype` sent, the events, and how many rounds it took."""
    bodies = drain_replies(conn, ftype)
    events: list[Event] = []
    rounds = 0
    while conn.input_held:
        assert not conn.read_paused
        events += conn.receive_data(b"", T0)
        assert conn.unsent_control_bytes <= bound
        bodies += drain_replies(conn, ftype)
        rounds += 1
    return bodies, events, rounds


def test_ping_flood_in_one_buffer_queues_bounded_pongs() -> None:
    conn = ready()
    assert conn.receive_data(pings(0, 1000), T0) == []
    # Parsing stopped at the first frame whose reply crossed the budget.
    assert BUDGET < conn.unsent_control_bytes <= BUDGET + PING_SIZE
    assert conn.read_paused and conn.input_held
    answered, events, rounds = resume(conn, FrameType.PONG, BUDGET + PING_SIZE)
    assert events == []
    # A peer that reads gets every PING answered, once, in order.
    assert answered == [i.to_bytes(8, "big") for i in range(1000)]
    per_parse = BUDGET // PING_SIZE + 1  # up to the first PONG past the budget
    assert rounds + 1 == -(-1000 // per_parse)


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(1, 400), chunk=st.integers(1, 300), drain_every=st.integers(1, 5))
def test_any_chunking_and_budget_answers_every_ping_within_bound(
        budget: int, chunk: int, drain_every: int) -> None:
    conn = LinkConnection(role=Role.ACCEPTOR, hello=hello("me"),
                          limits=LinkLimits(max_unsent_control_bytes=budget), now=T0)
    conn.data_to_send()
    wire = peer_start() + pings(0, 60)
    answered: list[bytes] = []
    for n, pos in enumerate(range(0, len(wire), chunk)):
        conn.receive_data(wire[pos : pos + chunk], T0)
        assert conn.unsent_control_bytes <= budget + PING_SIZE
        if n % drain_every == 0:
            answered += drain_replies(conn, FrameType.PONG)
    answered += resume(conn, FrameType.PONG, budget + PING_SIZE)[0]
    assert answered == [i.to_bytes(8, "big") for i in range(60)]


def test_paused_connection_keeps_new_input_unparsed() -> None:
    conn = ready()
    conn.receive_data(pings(0, 100), T0)
    assert conn.read_paused
    queued = conn.unsent_control_bytes
    # More input while paused (a driver that did not stop reading) only waits.
    assert conn.receive_data(pings(100, 200), T0) == []
    assert conn.unsent_control_bytes == queued
    answered = resume(conn, FrameType.PONG, BUDGET + PING_SIZE)[0]
    assert answered == [i.to_bytes(8, "big") for i in range(200)]


def test_data_behind_a_paused_point_is_delivered_intact() -> None:
    conn = ready()
    conn.receive_data(frame(FrameType.OPEN, 1, request(window=10_000).to_wire()), T0)
    conn.accept_flow(1, 10_000)
    conn.data_to_send()
    payload = bytes(range(256)) * 20
    wire = pings(0, 200) + frame(FrameType.DATA, 1, payload[:3000]) + pings(200, 300)
    wire += frame(FrameType.DATA, 1, payload[3000:])
    events = conn.receive_data(wire, T0)
    pongs, more, _ = resume(conn, FrameType.PONG, BUDGET + PING_SIZE)
    events += more
    assert len(pongs) == 300
    got = b"".join(e.data for e in events if isinstance(e, DataReceived))
    assert got == payload


def test_open_flood_past_max_flows_queues_bounded_refusals() -> None:
    conn = ready(max_flows=2)
    wire = b"".join(frame(FrameType.OPEN, fid, request().to_wire()) for fid in range(1, 400, 2))
    events = conn.receive_data(wire, T0)
    assert events == [FlowOpened(flow_id=1, open=request()), FlowOpened(flow_id=3, open=request())]
    assert conn.read_paused
    refusal = len(frame(FrameType.REFUSE, 5, Refuse(code=FlowCode.CAPACITY,
                                                    reason="too many flows on this link")
                        .to_wire()))
    assert conn.unsent_control_bytes <= BUDGET + refusal
    bodies, more, _ = resume(conn, FrameType.REFUSE, BUDGET + refusal)
    assert more == []
    assert len(bodies) == 198
    assert {Refuse.from_wire(b).reason for b in bodies} == {"too many flows on this link"}
    assert sorted(conn.flow_ids()) == [1, 3]


def test_data_we_send_does_not_pause_reading() -> None:
    """DATA is bounded by credit; counting it would let two busy routers both stop
    reading and wait for each other."""
    conn = ready()
    conn.receive_data(frame(FrameType.OPEN, 1, request(window=1 << 20).to_wire()), T0)
    conn.accept_flow(1, 1 << 20)
    conn.data_to_send()
    conn.send_data(1, bytes(1 << 20))
    assert conn.outgoing_bytes > 1 << 20 and conn.unsent_control_bytes == 0
    assert not conn.read_paused
    conn.receive_data(pings(0, 10), T0)
    assert len(drain_replies(conn, FrameType.PONG)) == 10


def test_resuming_is_not_news_from_the_peer() -> None:
    """Parsing kept-back input is not traffic: a peer that went silent while we held
    its bytes is still found dead in time."""
    conn = ready()
    conn.receive_data(pings(0, 100), T0)
    later = T0 + conn.limits.dead_after
    conn.data_to_send()
    conn.receive_data(b"", later)
    assert conn.handle_timer(later) == [
        LinkDead(reason=f"no traffic from peer for {conn.limits.dead_after} s")]


def test_unsent_control_budget_is_derived_from_max_flows() -> None:
    assert LinkLimits(max_flows=10).max_unsent_control_bytes == MIN_UNSENT_CONTROL_BYTES
    assert LinkLimits().max_unsent_control_bytes == CONTROL_BYTES_PER_FLOW * 10_000
    assert LinkLimits(max_unsent_control_bytes=5).max_unsent_control_bytes == 5
    with pytest.raises(ValueError, match="max_unsent_control_bytes"):
        LinkLimits(max_unsent_control_bytes=-1)
