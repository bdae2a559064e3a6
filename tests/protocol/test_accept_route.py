"""ACCEPT's optional trace and server (where a flow went, for the opener's record):
round trip, absent (an older peer), and everything a peer may get wrong."""

from __future__ import annotations

import msgpack
import pytest

from router.protocol import Accept, ErrorCode, FlowAccepted, ProtocolError
from router.protocol.messages import MAX_NAME_CHARS, MAX_TRACE_HOPS
from tests.protocol.test_protocol_link import handshake, pump, request

TRACE = ("r0000000000000001", "r0000000000000002", "r0000000000000003")


def test_round_trip() -> None:
    accept = Accept(window=7, trace=TRACE, server="db.internal:5432")
    assert Accept.from_wire(accept.to_wire()) == accept


def test_absent_fields_are_empty_and_empty_ones_are_not_sent() -> None:
    older = msgpack.packb({"window": 9})
    assert Accept.from_wire(older) == Accept(window=9, trace=(), server="")
    assert Accept(window=9).to_wire() == older  # an older peer reads the same bytes
    newer = msgpack.packb({"window": 9, "trace": list(TRACE), "later": {"x": 1}})
    assert Accept.from_wire(newer).trace == TRACE  # unknown fields ignored


@pytest.mark.parametrize(("body", "why"), [
    ({"trace": ["r1"] * (MAX_TRACE_HOPS + 2)}, "hops, more than"),
    ({"trace": ["r" * (MAX_NAME_CHARS + 1)]}, "more than"),
    ({"trace": ["r1\x1b[2J"]}, "control"),
    ({"trace": ["r 1"]}, "space"),
    ({"trace": "r1"}, "must be a list"),
    ({"trace": {"r1": 1}}, "must be a list"),
    ({"trace": [1, 2]}, "must be a string"),
    ({"server": "x" * (MAX_NAME_CHARS + 1)}, "more than"),
    ({"server": "db\n:5432"}, "control"),
    ({"server": 5432}, "must be a string"),
    ({"server": None}, "must be a string"),
])
def test_a_bad_field_is_a_bad_message(body: dict[str, object], why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Accept.from_wire(msgpack.packb({"window": 1, **body}))
    assert info.value.code is ErrorCode.BAD_MESSAGE
    assert why in str(info.value)


def test_the_longest_trace_fits() -> None:
    longest = tuple(f"r{i:016x}" for i in range(MAX_TRACE_HOPS + 1))  # the OPEN's, and us
    assert Accept.from_wire(Accept(window=1, trace=longest).to_wire()).trace == longest


def test_local_mistakes_raise_value_error_before_anything_is_queued() -> None:
    d, a = handshake()
    d.open_flow(request())
    pump(d, a)
    with pytest.raises(ValueError):
        a.accept_flow(1, 10, trace=("bad hop",))
    assert not a.outgoing_bytes
    a.accept_flow(1, 10, trace=TRACE, server="127.0.0.1:5432")
    at_d, _ = pump(d, a)
    assert at_d == [FlowAccepted(flow_id=1, window=10, trace=TRACE, server="127.0.0.1:5432")]


def test_an_accept_without_them_still_opens_the_flow() -> None:
    d, a = handshake()
    d.open_flow(request())
    pump(d, a)
    a.accept_flow(1, 10)
    at_d, _ = pump(d, a)
    assert at_d == [FlowAccepted(flow_id=1, window=10)]
    assert d.credit(1) == 10
