"""Certificate renewal over a live link: the body of a RENEW frame (msgpack).

The dialler of a link holds a client certificate from the acceptor's CA. Two thirds of
the way through its life it makes a new key and sends, on the link itself,

    {"op": "request", "id": N, "csr": PEM}

and the acceptor answers with one of

    {"op": "signed", "id": N, "cert": PEM}
    {"op": "refused", "id": N, "error": TEXT}

Why a link frame and not a flow: a flow may be forwarded across routers, but a renewal
must be judged by the one peer whose TLS client certificate authenticated this link, so
it is hop-local by nature, like PING or GOAWAY. Nothing inside the message says who asks:
the acceptor takes the site and router id from the link's certificate, never the CSR.
Every field is type- and size-checked here; anything else is a RenewalError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from router.errors import VanError

MAX_CSR_BYTES = 16 * 1024  # as certs.authority.MAX_CSR_BYTES: a P-256 CSR is ~500 bytes
MAX_CERT_BYTES = 8 * 1024  # as certs.verify.MAX_LEAF_PEM_BYTES
MAX_ERROR_CHARS = 300
MAX_ID = 2**32 - 1
_MSGPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


class RenewalError(VanError):
    """A malformed renewal message; the message says what is wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewRequest:
    id: int
    csr_pem: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewSigned:
    id: int
    cert_pem: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewRefused:
    id: int
    error: str


RenewMessage = RenewRequest | RenewSigned | RenewRefused


def encode(msg: RenewMessage) -> bytes:
    body: dict[str, Any]
    if isinstance(msg, RenewRequest):
        body = {"op": "request", "id": msg.id, "csr": msg.csr_pem}
    elif isinstance(msg, RenewSigned):
        body = {"op": "signed", "id": msg.id, "cert": msg.cert_pem}
    else:
        body = {"op": "refused", "id": msg.id, "error": msg.error[:MAX_ERROR_CHARS]}
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def _bytes(body: dict[Any, Any], field: str, cap: int) -> bytes:
    value = body.get(field)
    if not isinstance(value, bytes) or not value:
        raise RenewalError(f"{field} must be non-empty bytes")
    if len(value) > cap:
        raise RenewalError(f"{field} of {len(value)} bytes exceeds {cap}")
    return value


def decode(payload: bytes) -> RenewMessage:
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True,
                               max_bin_len=MAX_CSR_BYTES, max_str_len=4 * MAX_ERROR_CHARS,
                               max_array_len=0, max_map_len=8)
    except _MSGPACK_ERRORS as exc:
        raise RenewalError(f"not a renewal message ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise RenewalError("not a renewal message (not a map)")
    op, msg_id = body.get("op"), body.get("id")
    if isinstance(msg_id, bool) or not isinstance(msg_id, int) or not 0 <= msg_id <= MAX_ID:
        raise RenewalError("id must be an integer from 0 to 2**32-1")
    if op == "request":
        return RenewRequest(id=msg_id, csr_pem=_bytes(body, "csr", MAX_CSR_BYTES))
    if op == "signed":
        return RenewSigned(id=msg_id, cert_pem=_bytes(body, "cert", MAX_CERT_BYTES))
    if op == "refused":
        error = body.get("error")
        if not isinstance(error, str):
            raise RenewalError("error must be text")
        return RenewRefused(id=msg_id, error=error[:MAX_ERROR_CHARS])
    raise RenewalError("op must be request, signed or refused")
