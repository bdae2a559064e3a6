"""Bringing a link up: TCP, TLS 1.3 with client certificates, then the link HELLO.

Used by both sides: the dialer (a configured link) and the acceptor (the link port).
Also answers token claims on the link port: a TLS client without a certificate may
only redeem a token, nothing else.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import certs
from router.errors import VanError
from router.names import InvalidName, validate_name
from router.net.link import LinkLost, exchange_hello
from router.net.tls import TLSStream
from router.protocol import (
    PREFACE,
    Event,
    Hello,
    LinkClosedByPeer,
    LinkConnection,
    LinkLimits,
    Role,
)
from router.protocol.claim import CLAIM_MAGIC, CLAIM_VERSION, MAX_CLAIM_BYTES, encode_reply
from router.site.config import Limits

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0  # the whole TLS + HELLO/claim phase of an incoming connection
FIRST_BYTE_TIMEOUT_S = 2.0  # a TLS client sends its ClientHello at once
ClaimHandler = Callable[[bytes], Awaitable[dict[str, Any]]]


class HandshakeError(VanError):
    """The peer could not be brought up as a link; the message says why."""


def link_limits(limits: Limits) -> LinkLimits:
    return LinkLimits(
        max_frame_bytes=limits.max_frame_bytes,
        max_flows=limits.max_flows_per_link,
        keepalive_interval=limits.keepalive_interval_s,
        dead_after=limits.dead_after_s,
    )


async def tls_handshake(stream: TLSStream, timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
    try:
        with trio.fail_after(timeout):
            await stream.do_handshake()
    except trio.TooSlowError:
        raise HandshakeError(f"TLS handshake took longer than {timeout:g} s") from None
    except ssl.SSLCertVerificationError as exc:
        raise HandshakeError(f"peer certificate rejected: {exc.verify_message}") from None
    except ssl.SSLError as exc:
        raise HandshakeError(f"TLS handshake failed: {exc.reason or exc}") from None
    except trio.BrokenResourceError as exc:
        raise HandshakeError(f"TLS handshake failed: {exc}") from None


async def start_link(
    stream: TLSStream, *, role: Role, hello: Hello, limits: Limits, expect_site: str | None,
    expect_router_id: str | None = None,
) -> tuple[LinkConnection, Hello, list[Event]]:
    """Exchange HELLOs on an authenticated TLS stream; check the peer is who its
    certificate says, and (dialler) the router pinned when the token was redeemed."""
    conn = LinkConnection(role=role, hello=hello, limits=link_limits(limits),
                          now=trio.current_time())
    try:
        peer, early = await exchange_hello(stream, conn, HANDSHAKE_TIMEOUT_S)
    except trio.TooSlowError:
        raise HandshakeError("peer sent no HELLO in time") from None
    except (trio.BrokenResourceError, LinkLost) as exc:
        raise HandshakeError(f"link setup failed: {exc}") from None
    except ssl.SSLError as exc:
        # TLS 1.3: the server checks our certificate after the client's handshake
        # ends, so its verdict arrives as an alert on the first read.
        raise HandshakeError(_alert_text(exc)) from None
    try:
        # The one site-name rule, as for tokens, claims, the CLI and config.
        validate_name(peer.site, "peer site name")
    except InvalidName as exc:
        raise HandshakeError(f"peer HELLO refused: {exc}") from None
    for event in early if role is Role.DIALER else ():
        if isinstance(event, LinkClosedByPeer):  # the acceptor's GOAWAY right after HELLO
            raise HandshakeError(f"site {peer.site} refused the link: {event.reason}")
    der = stream.peer_certificate_der()
    try:
        cert_site = certs.peer_common_name(der) if der else None
        # Certificates issued at redemption bind the redeemer's router id too.
        cert_router = certs.peer_router_id(der) if der else None
    except certs.CertError as exc:
        raise HandshakeError(str(exc)) from None
    if cert_site != peer.site:
        raise HandshakeError(
            f"peer says it is site {peer.site!r} but its certificate names {cert_site!r}"
        )
    if cert_router is not None and cert_router != peer.router_id:
        raise HandshakeError(
            f"peer says it is router {peer.router_id} but its certificate names {cert_router}"
        )
    if expect_site is not None and peer.site != expect_site:
        raise HandshakeError(f"expected site {expect_site!r}, found {peer.site!r}")
    if expect_router_id is not None and peer.router_id != expect_router_id:
        raise HandshakeError(f"expected router {expect_router_id}, found {peer.router_id}")
    if peer.router_id == hello.router_id:
        raise HandshakeError("the link leads back to this router")
    return conn, peer, early


def _alert_text(exc: ssl.SSLError) -> str:
    reason = (exc.reason or str(exc)).upper()
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
        return "the peer rejected our certificate (not signed by its CA)"
    if "CERTIFICATE_REQUIRED" in reason:
        return "the peer requires a client certificate"
    return f"TLS failed: {exc.reason or exc}"


_CLAIM_HEADER = struct.Struct(">4sBI")


async def read_claim(stream: TLSStream, first: bytes) -> bytes:
    """Read a claim's body after the 9-byte header; sizes are checked first."""
    buf = bytearray(first)
    with trio.fail_after(HANDSHAKE_TIMEOUT_S):
        while len(buf) < _CLAIM_HEADER.size:
            chunk = await stream.receive_some()
            if not chunk:
                raise HandshakeError("claim truncated")
            buf += chunk
        magic, version, length = _CLAIM_HEADER.unpack_from(buf)
        if magic != CLAIM_MAGIC:
            raise HandshakeError("a peer without a certificate may only redeem a token")
        if version != CLAIM_VERSION:
            # Say why, so a sitectl of another version does not just see the line drop.
            await stream.send_all(encode_reply({"ok": False, "error": (
                f"this site speaks claim version {CLAIM_VERSION}, not {version}")}))
            raise HandshakeError(f"unsupported claim version {version}")
        if length > MAX_CLAIM_BYTES:
            raise HandshakeError(f"claim of {length} bytes exceeds limit of {MAX_CLAIM_BYTES}")
        del buf[: _CLAIM_HEADER.size]
        while len(buf) < length:
            chunk = await stream.receive_some()
            if not chunk:
                raise HandshakeError("claim truncated")
            buf += chunk
    return bytes(buf[:length])


class FirstByte(enum.Enum):
    ARRIVED = "arrived"
    SILENT = "silent"  # nothing within the deadline
    CLOSED = "closed"  # the peer closed or reset before sending anything


async def wait_first_byte(sock: trio.SocketStream,
                          timeout: float = FIRST_BYTE_TIMEOUT_S) -> FirstByte:
    """Wait for a new connection to send something; nothing is read (a one-byte peek)
    or allocated meanwhile."""
    with trio.move_on_after(timeout):
        await trio.lowlevel.wait_readable(sock.socket)
        try:
            peeked = await sock.socket.recv(1, socket.MSG_PEEK)
        except OSError:
            return FirstByte.CLOSED
        return FirstByte.ARRIVED if peeked else FirstByte.CLOSED
    return FirstByte.SILENT


async def serve_unauthenticated(stream: TLSStream, on_claim: ClaimHandler) -> dict[str, Any]:
    """A TLS client without a certificate: answer one token claim, then close.
    Returns the reply sent (or not read in time: the claim was handled all the same)."""
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            first = await stream.receive_some()
    except trio.TooSlowError:
        raise HandshakeError("unauthenticated peer sent nothing") from None
    if first.startswith(PREFACE[:4]):
        raise HandshakeError("link attempt without a client certificate refused")
    body = await read_claim(stream, first)
    reply = await on_claim(body)
    with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
        await stream.send_all(encode_reply(reply))
    return reply
