"""REFUSE and RESET carry a FlowCode: a program decides by code, people read the reason."""

from __future__ import annotations

import msgpack
import pytest

from router.protocol import FlowCode, ProtocolError, Refuse, Reset


@pytest.mark.parametrize("kind", [Refuse, Reset])
@pytest.mark.parametrize("code", list(FlowCode))
def test_code_and_reason_survive_the_wire(kind: type[Refuse | Reset], code: FlowCode) -> None:
    message = kind.from_wire(kind(code=code, reason="why").to_wire())
    assert message.code is code and message.reason == "why"


@pytest.mark.parametrize("kind", [Refuse, Reset])
def test_a_code_from_a_newer_peer_reads_as_unknown(kind: type[Refuse | Reset]) -> None:
    message = kind.from_wire(msgpack.packb({"code": 999, "reason": "new"}))
    assert message.code is FlowCode.UNKNOWN and not message.code.path_failed


@pytest.mark.parametrize("kind", [Refuse, Reset])
@pytest.mark.parametrize("bad", [True, -1, 1 << 16, 1.0, "1", None])
def test_a_malformed_code_is_a_protocol_error(kind: type[Refuse | Reset], bad: object) -> None:
    with pytest.raises(ProtocolError, match="code must be an integer"):
        kind.from_wire(msgpack.packb({"code": bad, "reason": "x"}))


@pytest.mark.parametrize("kind", [Refuse, Reset])
def test_a_message_without_a_code_is_refused_by_name(kind: type[Refuse | Reset]) -> None:
    with pytest.raises(ProtocolError, match="lacks field 'code'"):
        kind.from_wire(msgpack.packb({"reason": "from a version 1 peer"}))


def test_only_path_codes_mean_the_same_site_may_work_again() -> None:
    assert {c for c in FlowCode if c.path_failed} == {FlowCode.ROUTE, FlowCode.LINK_LOST}
