"""Bad input from users and peers gets the module's own clear error, never a crash."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from certs import CertificateAuthority, make_csr
from router.protocol.claim import ClaimError, decode_claim_body, decode_reply
from router.routing import RoutingError
from router.routing.records import RouterRecord, decode_message
from router.site.config import parse_config
from router.site.errors import ConfigError
from router.site.tokens import Token, TokenError
from sitectl.redeem import check_reply

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200)
@given(st.binary(max_size=512) | json_values.map(lambda v: json.dumps(v).encode()))
def test_token_load_only_raises_token_error(data: bytes) -> None:
    with contextlib.suppress(TokenError):
        Token.load(data, now=0.0)


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(
    ["type", "version", "site", "endpoints", "ca", "code", "expires", "uses", "signature"]),
    json_values, max_size=9))
def test_token_with_wrong_fields_only_raises_token_error(doc: dict[str, object]) -> None:
    doc.setdefault("type", "vanrouter-link-token")
    doc.setdefault("version", 1)
    with contextlib.suppress(TokenError):
        Token.load(json.dumps(doc).encode(), now=0.0)


toml_lines = st.lists(st.sampled_from([
    "[site]", "[limits]", "[[listener]]", "[[connector]]", "name = 'w'", "name = 3",
    "link_port = 55671", "link_port = -1", "link_port = 'x'", "host = '10.0.0.1'",
    "host = 'bad host'", "key = 'db'", "key = ''", "port = 5432", "port = 0",
    "strategy = 'weighted'", "strategy = 1", "weight = 0", "priority = -3",
    "dead_after_s = 0.5", "keepalive_interval_s = 2", "flow_window_bytes = 'big'",
    "unknown = 1", "[[site]]", "= =", "name = \"unterminated",
]), max_size=12)


@settings(max_examples=300)
@given(toml_lines)
def test_config_parse_only_raises_config_error(lines: list[str]) -> None:
    try:
        parse_config(Path("site.toml"), "\n".join(lines))
    except ConfigError as exc:
        assert str(exc).startswith("site.toml")


@settings(max_examples=200)
@given(st.binary(max_size=256))
def test_claim_decode_only_raises_claim_error(body: bytes) -> None:
    with contextlib.suppress(ClaimError):
        decode_claim_body(body)


@settings(max_examples=200)
@given(st.binary(max_size=256))
def test_routing_decode_only_raises_routing_error(payload: bytes) -> None:
    try:
        for _age, wire in decode_message(payload):
            RouterRecord.from_wire(wire)
    except RoutingError:
        pass
    with contextlib.suppress(RoutingError):
        RouterRecord.from_wire(payload)


# ---------------------------------------------------------------- the issuer's reply

_ISSUER_CA = CertificateAuthority.generate("west")
_KEY_PEM, _CSR_PEM = make_csr("east")
_RID = "r0123456789abcdef"
_GOOD_CERT = _ISSUER_CA.sign_csr(_CSR_PEM, expected_name="east", router_id=_RID)

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats() | st.text(max_size=40) | st.binary(max_size=40)
    | st.sampled_from([_GOOD_CERT, _GOOD_CERT[:-40], _GOOD_CERT * 2, "west", _RID]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10,
)
reply_maps = st.dictionaries(st.sampled_from(["ok", "error", "cert", "site", "router_id"]),
                             msgpack_values, max_size=5)


def _check(reply: object) -> None:
    check_reply(reply, ca_pem=_ISSUER_CA.cert_pem, issuer_site="west", name="east",
                router_id=_RID, key_pem=_KEY_PEM, now=datetime.now(UTC))


@settings(max_examples=300)
@given(st.binary(max_size=512) | reply_maps.map(msgpack.packb))
def test_reply_decode_and_check_only_raise_claim_error(body: bytes) -> None:
    with contextlib.suppress(ClaimError):
        _check(decode_reply(body))


@settings(max_examples=300)
@given(reply_maps)
def test_reply_check_only_raises_claim_error(reply: dict[str, object]) -> None:
    try:
        _check(reply)
    except ClaimError as exc:
        assert "\n" not in str(exc)
    else:  # accepted: then it was exactly the honest reply's content
        assert reply["ok"] is True and reply["cert"] == _GOOD_CERT


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=200), st.integers(min_value=0, max_value=len(_GOOD_CERT)))
def test_damaged_certificate_only_raises_claim_error(junk: bytes, at: int) -> None:
    cert = _GOOD_CERT[:at] + junk + _GOOD_CERT[at:]
    with contextlib.suppress(ClaimError):
        _check({"ok": True, "cert": cert, "site": "west", "router_id": _RID})
