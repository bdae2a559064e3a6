"""The redeemer's check of the issuer's reply, and the issuer's check of the name asked for.

Pure functions, no sockets: every way a reply can be wrong gets its one-line ClaimError.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

import certs
from certs import CertificateAuthority
from router.protocol.claim import (
    Claim,
    ClaimError,
    ClaimRefused,
    claim_transcript,
    decode_claim_body,
    decode_reply,
    encode_claim,
    refusal_for,
)
from router.routing.signing import Ed25519Signer, router_id_for
from sitectl.redeem import check_reply
from tests.support.forge import forge_leaf, public_key_of

OUR_ID = "r0123456789abcdef"
ISSUER_ID = "rfedcba9876543210"


class Ask:
    """What the redeemer (east) asked west's CA for."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.key_pem, self.csr_pem = certs.make_csr("east")
        self.public_key = public_key_of(self.key_pem)

    def honest(self) -> dict[str, Any]:
        cert = self.ca.sign_csr(self.csr_pem, expected_name="east", router_id=OUR_ID)
        return {"ok": True, "cert": cert, "site": "west", "router_id": ISSUER_ID}

    def check(self, reply: object) -> Any:
        return check_reply(reply, ca_pem=self.ca.cert_pem, issuer_site="west", name="east",
                           router_id=OUR_ID, key_pem=self.key_pem, now=datetime.now(UTC))


@pytest.fixture
def ask(ca: CertificateAuthority) -> Ask:
    return Ask(ca)


def test_honest_reply_is_accepted_and_re_encoded(ask: Ask) -> None:
    reply = ask.honest()
    reply["cert"] = b"\n\n" + reply["cert"] + b"\n"
    result = ask.check(reply)
    assert result.cert_pem == reply["cert"].strip() + b"\n"
    assert (result.issuer_site, result.issuer_router_id) == ("west", ISSUER_ID)


def _forged(**kw: Any) -> Callable[[Ask, CertificateAuthority], bytes]:
    def make(ask: Ask, other: CertificateAuthority) -> bytes:
        args: dict[str, Any] = {"name": "east", "router_id": OUR_ID} | kw
        ca = other if args.pop("foreign", False) else ask.ca
        key = args.pop("key", ask.public_key)
        return forge_leaf(ca, key, **args)
    return make


def _fresh_key() -> Any:
    return public_key_of(certs.make_csr("x")[0])


HOSTILE_CERTS: dict[str, tuple[Callable[[Ask, CertificateAuthority], object], str]] = {
    "garbage text": (lambda a, o: b"$(touch /tmp/pwned)\n", "not a single PEM certificate"),
    "not bytes": (lambda a, o: "-----BEGIN CERTIFICATE-----", "str, not PEM bytes"),
    "two certificates": (lambda a, o: a.honest()["cert"] * 2, "not a single PEM"),
    "text around the PEM": (lambda a, o: b"x\n" + a.honest()["cert"], "not a single PEM"),
    "broken base64": (lambda a, o: b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                      b"-----END CERTIFICATE-----\n", "not a valid PEM X.509"),
    "huge": (lambda a, o: b"A" * 100_000, "too large"),
    "another CA": (_forged(foreign=True), "not issued by the token's CA"),
    "another name": (_forged(name="west"), "is for 'west', expected 'east'"),
    "another key": (lambda a, o: _forged(key=_fresh_key())(a, o), "for another key"),
    "a CA": (_forged(is_ca=True), "is a CA certificate"),
    "serverAuth": (_forged(eku=[ExtendedKeyUsageOID.SERVER_AUTH]), "usage is serverAuth"),
    "dual use": (_forged(eku=[ExtendedKeyUsageOID.SERVER_AUTH,
                              ExtendedKeyUsageOID.CLIENT_AUTH]), "expected clientAuth only"),
    "no usage": (_forged(eku=[]), "usage is none"),
    "expired": (_forged(valid=(timedelta(days=-2), timedelta(days=-1))), "expired at"),
    "not yet valid": (_forged(valid=(timedelta(days=1), timedelta(days=2))), "not valid before"),
    "another router id": (_forged(router_id="r1111111111111111"), "alternative names"),
    "no router id": (_forged(router_id=None), "alternative names"),
    "extra SAN": (_forged(sans=[x509.DNSName("east"), x509.DNSName("west")]),
                  "alternative names"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CERTS))
def test_hostile_certificate_refused(ask: Ask, other_ca: CertificateAuthority,
                                     case: str) -> None:
    make, expected = HOSTILE_CERTS[case]
    reply = ask.honest() | {"cert": make(ask, other_ca)}
    with pytest.raises(ClaimError) as info:
        ask.check(reply)
    message = str(info.value)
    assert message.startswith("the issuer's reply is not acceptable: "), message
    assert expected in message and "\n" not in message, message


HOSTILE_FIELDS: dict[str, tuple[dict[str, object], str]] = {
    "other site": ({"site": "mallory"}, "names site 'mallory', but the token is from west"),
    "site not a string": ({"site": 7}, "names site int"),
    "bad router id": ({"router_id": "r../../etc"}, "router id 'r../../etc' is malformed"),
    "router id not a string": ({"router_id": b"r0"}, "router id bytes is malformed"),
    "ok not a boolean": ({"ok": 1}, "'ok' is not a boolean"),
    "no cert": ({"cert": None}, "NoneType, not PEM bytes"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FIELDS))
def test_hostile_fields_refused(ask: Ask, case: str) -> None:
    change, expected = HOSTILE_FIELDS[case]
    with pytest.raises(ClaimError, match=r"^the issuer's reply is not acceptable: ") as info:
        ask.check(ask.honest() | change)
    assert expected in str(info.value)


def test_not_a_map_refused(ask: Ask) -> None:
    with pytest.raises(ClaimError, match="not acceptable: not a map"):
        ask.check([1, 2])


def test_refusal_is_one_printable_line(ask: Ask) -> None:
    with pytest.raises(ClaimRefused) as info:
        ask.check({"ok": False, "error": "no\n\x1b[31mway" + "!" * 1000})
    message = str(info.value)
    assert message.startswith("site west refused the token: no??[31mway!!")
    assert len(message) < 300 and message.isprintable()


@pytest.mark.parametrize("body", [
    b"\x91" * 20_000 + b"\xc0",  # nested 20,000 lists deep
    b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
    b"\xc1",  # reserved byte
    msgpack.packb("a string"),
    b"x" * 40_000,  # over the size cap
])
def test_reply_decode_refuses_hostile_bytes(body: bytes) -> None:
    with pytest.raises(ClaimError, match=r"^the issuer's reply is not acceptable: "):
        decode_reply(body)


# ---------------------------------------------------------------- the issuer's side

def _claim(site: str, router_id: str = OUR_ID) -> Claim:
    return Claim(code=b"c", csr_pem=b"", site=site, router_id=router_id)


def _refusal(claim: Claim, **kw: Any) -> str | None:
    args: dict[str, Any] = {"own_site": "west", "own_router_id": ISSUER_ID,
                            "linked_sites": {"east"}, "known": []} | kw
    return refusal_for(claim, **args)


def test_claim_round_trip() -> None:
    signer = Ed25519Signer.generate()
    wire = encode_claim(code=b"c", csr_pem=b"csr", site="south", signer=signer)
    assert decode_claim_body(wire[9:]) == Claim(
        code=b"c", csr_pem=b"csr", site="south", router_id=router_id_for(signer.public_key))


def _claim_doc(signer: Ed25519Signer, **fields: object) -> dict[str, object]:
    wire = encode_claim(code=b"c" * 32, csr_pem=b"csr", site="south", signer=signer)
    doc: dict[str, object] = msgpack.unpackb(wire[9:])
    return doc | fields


@pytest.mark.parametrize(("change", "message"), [
    # Someone else's router id, with our own key: the id is not ours to claim.
    ({"router_id": "r" + "1" * 16}, "is not that of the identity key presented"),
    # Their key and id, but we cannot sign for them.
    ({"identity": Ed25519Signer.generate().public_key}, "not signed by the identity key"),
    # A proof over another claim: the name, CSR and code are what the signature binds.
    ({"site": "north"}, "not signed by the identity key"),
    ({"csr": b"another csr"}, "not signed by the identity key"),
    ({"code": b"d" * 32}, "not signed by the identity key"),
    ({"proof": bytes(64)}, "not signed by the identity key"),
    ({"proof": b"short"}, "missing or malformed identity key or proof"),
    ({"identity": None}, "missing or malformed identity key or proof"),
    ({"identity": "not bytes"}, "missing or malformed identity key or proof"),
])
def test_claim_must_prove_its_router_id(change: dict[str, object], message: str) -> None:
    signer = Ed25519Signer.generate()
    doc = _claim_doc(signer, **change)
    if change.get("identity", b"") is None:
        del doc["identity"]
    if "identity" in change and isinstance(change["identity"], bytes):
        doc["router_id"] = router_id_for(change["identity"])
    with pytest.raises(ClaimError, match=message):
        decode_claim_body(msgpack.packb(doc))


def test_a_proof_is_good_for_nothing_else() -> None:
    """The signed transcript starts with its own context, so an identity-key signature
    made for anything else (a routing record) never passes as a claim proof."""
    signer = Ed25519Signer.generate()
    rid = router_id_for(signer.public_key)
    bare = msgpack.packb([b"c" * 32, b"csr", "south", rid])
    doc = _claim_doc(signer, proof=signer.sign(bare))
    with pytest.raises(ClaimError, match="not signed by the identity key"):
        decode_claim_body(msgpack.packb(doc))
    assert claim_transcript(code=b"c" * 32, csr_pem=b"csr", site="south",
                            router_id=rid).endswith(bare)


def test_claim_without_router_id_refused() -> None:
    body = msgpack.packb({"code": b"c", "csr": b"x", "site": "south"})
    with pytest.raises(ClaimError, match="missing fields"):
        decode_claim_body(body)
    body = msgpack.packb({"code": b"c", "csr": b"x", "site": "south", "router_id": "west"})
    with pytest.raises(ClaimError, match="bad router id"):
        decode_claim_body(body)


def test_free_name_is_accepted() -> None:
    known = [(ISSUER_ID, "west"), ("r2222222222222222", "north"), (OUR_ID, "south")]
    assert _refusal(_claim("south"), known=known) is None


@pytest.mark.parametrize(("claim", "known", "expected"), [
    (_claim("west"), [], "the name 'west' is this site's own name"),
    (_claim("south", ISSUER_ID), [], f"router id {ISSUER_ID} is this router's own"),
    (_claim("east"), [], "a site named 'east' is already linked with this site"),
    (_claim("north"), [("r2222222222222222", "north")],
     "the name 'north' belongs to router r2222222222222222 in this network"),
    (_claim("south"), [(OUR_ID, "north")], f"router {OUR_ID} is known in this network as "
                                           "site 'north'"),
])
def test_taken_names_refused(claim: Claim, known: list[tuple[str, str]], expected: str) -> None:
    assert _refusal(claim, known=known) == expected
