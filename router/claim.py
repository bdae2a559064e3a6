"""Token redemption on the wire ("claims"), shared by the router and sitectl.

The redeemer opens TLS to the issuer's link port WITHOUT a client certificate,
verifying the issuer against the CA in the token, then sends
    b"VANC" + version (u8) + length (u32) + msgpack {code, csr, site}
and reads back length (u32) + msgpack {ok, error | cert, ca, site}. The issuer
accepts nothing else from an unauthenticated peer, and caps the request size.
"""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

import msgpack

import certs

CLAIM_MAGIC = b"VANC"
CLAIM_VERSION = 1
MAX_CLAIM_BYTES = 32 * 1024
_LEN = struct.Struct(">I")


class ClaimError(Exception):
    """Redemption failed; the message says why in one line."""


def encode_claim(*, code: bytes, csr_pem: bytes, site: str) -> bytes:
    body: bytes = msgpack.packb({"code": code, "csr": csr_pem, "site": site})
    return CLAIM_MAGIC + bytes([CLAIM_VERSION]) + _LEN.pack(len(body)) + body


def encode_reply(reply: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(reply)
    return _LEN.pack(len(body)) + body


def decode_claim_body(body: bytes) -> tuple[bytes, bytes, str]:
    try:
        doc = msgpack.unpackb(body)
        code, csr, site = doc["code"], doc["csr"], doc["site"]
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise ClaimError(f"malformed claim ({type(exc).__name__})") from None
    if not (isinstance(code, bytes) and isinstance(csr, bytes) and isinstance(site, str)):
        raise ClaimError("malformed claim (wrong field types)")
    return code, csr, site


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ClaimError("issuer closed the connection without answering")
        buf += chunk
    return bytes(buf)


def redeem(
    *, host: str, port: int, issuer_site: str, ca_pem: bytes, code: bytes, csr_pem: bytes,
    site: str, timeout: float = 10.0,
) -> dict[str, Any]:
    """Blocking client used by sitectl: returns the issuer's reply {cert, ca, site}."""
    ctx = certs.client_context(cert_pem=None, key_pem=None, ca_pem=ca_pem)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ClaimError(f"cannot reach site {issuer_site} at {host}:{port}: {reason}") from None
    try:
        with ctx.wrap_socket(raw, server_hostname=issuer_site) as tls:
            tls.sendall(encode_claim(code=code, csr_pem=csr_pem, site=site))
            (length,) = _LEN.unpack(_recv_exact(tls, 4))
            if length > MAX_CLAIM_BYTES:
                raise ClaimError(f"issuer reply too large ({length} bytes)")
            reply = msgpack.unpackb(_recv_exact(tls, length))
    except ssl.SSLCertVerificationError as exc:
        raise ClaimError(
            f"the router at {host}:{port} is not site {issuer_site} as the token says "
            f"(certificate check failed: {exc.verify_message}); "
            "the token is foreign or was altered"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ClaimError(f"redeeming at {host}:{port} failed: {exc}") from None
    finally:
        raw.close()
    if not isinstance(reply, dict):
        raise ClaimError("issuer sent a malformed reply")
    if not reply.get("ok"):
        raise ClaimError(f"site {issuer_site} refused the token: {reply.get('error', 'no reason')}")
    return reply
