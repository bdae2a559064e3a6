"""Token redemption on the wire ("claims"), shared by the router and sitectl.

The redeemer opens TLS to the issuer's link port WITHOUT a client certificate,
verifying the issuer against the CA in the token, then sends
    b"VANC" + version (u8) + length (u32)
      + msgpack {code, csr, site, router_id, identity, proof}
and reads back length (u32) + msgpack {ok, error | cert, site, router_id}. The issuer
accepts nothing else from an unauthenticated peer, and caps the request size.

`identity` is the redeemer's Ed25519 public key, whose hash is its router id, and
`proof` its signature over everything the certificate will bind (`claim_transcript`):
nobody can have a router id certified without holding that router's identity key.

Neither side trusts the other's message: the issuer refuses names that are taken
(`refusal_for`), and the redeemer checks the reply in full (`sitectl.redeem.check_reply`) before
anything of it is written to disk.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from router.errors import VanError
from router.routing.signing import Signer, ed25519_verify, router_id_for

CLAIM_MAGIC = b"VANC"
CLAIM_VERSION = 2  # 2: the claim carries the redeemer's router id, proven by its key
_PROOF_CONTEXT = b"vanrouter claim proof v2\0"  # a claim signature is good for nothing else
_IDENTITY_BYTES = 32  # a raw Ed25519 public key
_PROOF_BYTES = 64  # an Ed25519 signature
MAX_CLAIM_BYTES = 32 * 1024
MAX_REFUSAL_CHARS = 200  # an issuer's refusal reaches the user's terminal: keep it short
ROUTER_ID_RE = re.compile(r"r[0-9a-f]{16}", re.ASCII)
LENGTH = struct.Struct(">I")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class ClaimError(VanError):
    """Redemption failed; the message says why in one line."""


class ClaimRefused(ClaimError):
    """The issuer answered and said no: another of its endpoints would say the same."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """What a redeemer asks for: a certificate for `site`, run by router `router_id`."""

    code: bytes
    csr_pem: bytes
    site: str
    router_id: str


def claim_transcript(*, code: bytes, csr_pem: bytes, site: str, router_id: str) -> bytes:
    """What the redeemer's identity key signs: everything the certificate will bind,
    and the code, so a proof cannot be replayed with another token."""
    packed: bytes = msgpack.packb([code, csr_pem, site, router_id])
    return _PROOF_CONTEXT + packed


def encode_claim(*, code: bytes, csr_pem: bytes, site: str, signer: Signer) -> bytes:
    router_id = router_id_for(signer.public_key)
    proof = signer.sign(claim_transcript(code=code, csr_pem=csr_pem, site=site,
                                         router_id=router_id))
    body: bytes = msgpack.packb({"code": code, "csr": csr_pem, "site": site,
                                 "router_id": router_id, "identity": signer.public_key,
                                 "proof": proof})
    return CLAIM_MAGIC + bytes([CLAIM_VERSION]) + LENGTH.pack(len(body)) + body


def encode_reply(reply: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(reply)
    return LENGTH.pack(len(body)) + body


def _unpack_map(body: bytes) -> dict[Any, Any]:
    if len(body) > MAX_CLAIM_BYTES:
        raise ClaimError(f"too large ({len(body)} bytes)")
    try:
        doc = msgpack.unpackb(body)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise ClaimError(f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise ClaimError("not a map")
    return doc


def decode_claim_body(body: bytes) -> Claim:
    try:
        doc = _unpack_map(body)
    except ClaimError as exc:
        raise ClaimError(f"malformed claim ({exc})") from None
    code, csr, site, router_id = (doc.get(k) for k in ("code", "csr", "site", "router_id"))
    if not (isinstance(code, bytes) and isinstance(csr, bytes) and isinstance(site, str)
            and isinstance(router_id, str)):
        raise ClaimError("malformed claim (missing fields or wrong field types)")
    if ROUTER_ID_RE.fullmatch(router_id) is None:
        raise ClaimError("malformed claim (bad router id)")
    identity, proof = doc.get("identity"), doc.get("proof")
    if not (isinstance(identity, bytes) and len(identity) == _IDENTITY_BYTES
            and isinstance(proof, bytes) and len(proof) == _PROOF_BYTES):
        raise ClaimError("malformed claim (missing or malformed identity key or proof)")
    if router_id_for(identity) != router_id:
        raise ClaimError(f"claim refused: router id {router_id} is not that of the "
                         "identity key presented")
    transcript = claim_transcript(code=code, csr_pem=csr, site=site, router_id=router_id)
    if not ed25519_verify(identity, transcript, proof):
        raise ClaimError(f"claim refused: not signed by the identity key of router {router_id}")
    return Claim(code=code, csr_pem=csr, site=site, router_id=router_id)


def decode_reply(body: bytes) -> dict[Any, Any]:
    """The issuer's reply as a map; anything else is a ClaimError."""
    try:
        return _unpack_map(body)
    except ClaimError as exc:
        raise ClaimError(f"the issuer's reply is not acceptable: {exc}") from None


def refusal_for(
    claim: Claim, *, own_site: str, own_router_id: str, linked_sites: Collection[str],
    known: Iterable[tuple[str, str]],
) -> str | None:
    """Why the issuer must not sign this claim, or None.

    A certificate from our CA names a site to every router that trusts our CA, so
    it must never name us, a site we are linked with, or a site the network knows
    under another router. `known` is (router id, site) from the routing database.
    """
    if claim.site == own_site:
        return f"the name {claim.site!r} is this site's own name"
    if claim.router_id == own_router_id:
        return f"router id {claim.router_id} is this router's own"
    if claim.site in linked_sites:
        return f"a site named {claim.site!r} is already linked with this site"
    for rid, site in known:
        if site == claim.site and rid != claim.router_id:
            return f"the name {claim.site!r} belongs to router {rid} in this network"
        if rid == claim.router_id and site != claim.site:
            return f"router {rid} is known in this network as site {site!r}"
    return None


def printable(text: str) -> str:
    text = _UNPRINTABLE.sub("?", text)
    return text if len(text) <= MAX_REFUSAL_CHARS else text[:MAX_REFUSAL_CHARS] + "..."


def shown_value(value: object) -> str:
    return repr(printable(value)) if isinstance(value, str) else type(value).__name__


