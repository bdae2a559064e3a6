"""Redeeming a token: the blocking claim client that sitectl runs.

It speaks the claim codec of `router.protocol.claim` over a TLS socket without a
client certificate, within one deadline for the whole exchange, and accepts the
issuer's reply only after `check_reply` found it grants exactly what was asked.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import certs
from router.endpoint import Endpoint
from router.net.proxy import READ_CHUNK, ConnectExchange, ProxyError
from router.protocol.claim import (
    LENGTH,
    MAX_CLAIM_BYTES,
    ROUTER_ID_RE,
    ClaimError,
    ClaimRefused,
    decode_reply,
    encode_claim,
    printable,
    shown_value,
)
from router.routing.signing import Signer, router_id_for
from router.site.proxyconf import ProxyURL

REDEEM_TIMEOUT_S = 10.0  # one issuer endpoint: connect, TLS, claim and the whole reply
REDEEM_ALL_TIMEOUT_S = 30.0  # every endpoint of a token (it may list 16)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimResult:
    """A reply that passed every check: safe to store and to pin."""

    cert_pem: bytes  # canonical re-encoding of the verified certificate
    issuer_site: str
    issuer_router_id: str


def check_reply(
    reply: object, *, ca_pem: bytes, issuer_site: str, name: str, router_id: str,
    key_pem: bytes, now: datetime,
) -> ClaimResult:
    """Accept the issuer's reply only if it grants exactly what we asked for.

    `name`, `router_id` and `key_pem` are ours (the redeemer's); `ca_pem` and
    `issuer_site` come from the token. A refusal raises ClaimRefused; any other
    defect raises ClaimError. Pure: nothing is read from or written to disk.
    """
    if not isinstance(reply, dict):
        raise ClaimError("the issuer's reply is not acceptable: not a map")
    ok = reply.get("ok")
    if ok is False:
        error = reply.get("error")
        reason = printable(error) if isinstance(error, str) and error else "no reason given"
        raise ClaimRefused(f"site {issuer_site} refused the token: {reason}")
    try:
        if ok is not True:
            raise ClaimError("'ok' is not a boolean")
        site, rid = reply.get("site"), reply.get("router_id")
        if site != issuer_site:
            raise ClaimError(f"it names site {shown_value(site)}, but the token is from "
                             f"{issuer_site}")
        if not isinstance(rid, str) or ROUTER_ID_RE.fullmatch(rid) is None:
            raise ClaimError(f"its router id {shown_value(rid)} is malformed")
        cert_pem = certs.check_issued_leaf(
            reply.get("cert"), ca_pem=ca_pem, name=name, key_pem=key_pem,
            role=certs.Role.CLIENT, router_id=router_id, now=now)
    except (ClaimError, certs.CertError) as exc:
        raise ClaimError(f"the issuer's reply is not acceptable: {exc}") from None
    return ClaimResult(cert_pem=cert_pem, issuer_site=site, issuer_router_id=rid)


class Deadline:
    """One limit for an exchange of many blocking socket operations.

    A socket timeout bounds each operation alone, so a peer that sends one byte just
    inside it can stretch a 32 KiB reply over days; each operation is given what is
    left instead. Time is a parameter (`now`).
    """

    def __init__(self, seconds: float, *, now: float) -> None:
        self.seconds = seconds
        self.at = now + seconds

    def left(self, now: float) -> float | None:
        """Seconds left, or None once the deadline has passed."""
        left = self.at - now
        return left if left > 0 else None


class _Budget:
    """Gives a socket what is left of a Deadline before each operation."""

    def __init__(self, deadline: Deadline, clock: Callable[[], float], expired: str) -> None:
        self.deadline, self.clock, self.expired = deadline, clock, expired

    def left(self) -> float:
        left = self.deadline.left(self.clock())
        if left is None:
            raise ClaimError(self.expired)
        return left

    def arm(self, sock: socket.socket) -> None:
        sock.settimeout(self.left())


def _recv_exact(sock: ssl.SSLSocket, n: int, budget: _Budget) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        budget.arm(sock)
        chunk = sock.recv(min(n - len(buf), 64 * 1024))
        if not chunk:
            raise ClaimError("issuer closed the connection without answering")
        buf += chunk
    return bytes(buf)


def _through_proxy(proxy: ProxyURL, host: str, port: int, budget: _Budget) -> socket.socket:
    """A socket to host:port tunnelled through `proxy` (HTTP CONNECT), within the budget."""
    exchange = ConnectExchange(proxy, host, port)
    try:
        raw = socket.create_connection(proxy.endpoint.pair(), timeout=budget.left())
    except TimeoutError:
        raise ClaimError(f"cannot connect to {exchange.where}: timed out") from None
    except OSError as exc:
        raise ClaimError(f"cannot connect to {exchange.where}: "
                         f"{exc.strerror or exc}") from None
    try:
        budget.arm(raw)
        raw.sendall(exchange.request())
        while True:
            budget.arm(raw)
            # No read goes past the answer: the TLS server inside waits for our hello.
            if exchange.receive(raw.recv(READ_CHUNK)):
                return raw
    except TimeoutError:
        raw.close()
        raise ClaimError(f"{exchange.where} did not answer CONNECT within "
                         f"{budget.deadline.seconds:g} s") from None
    except ProxyError as exc:
        raw.close()
        raise ClaimError(str(exc)) from None
    except OSError as exc:
        raw.close()
        raise ClaimError(f"{exchange.where} broke the connection during CONNECT: "
                         f"{exc.strerror or exc}") from None
    except BaseException:
        raw.close()
        raise


def redeem(
    *, host: str, port: int, issuer_site: str, ca_pem: bytes, code: bytes, csr_pem: bytes,
    key_pem: bytes, site: str, signer: Signer, now: datetime,
    timeout: float = REDEEM_TIMEOUT_S, clock: Callable[[], float] = time.monotonic,
    proxy: ProxyURL | None = None,
) -> ClaimResult:
    """Blocking client used by sitectl: the issuer's checked reply (see check_reply).
    `signer` holds our identity key: it proves the router id we claim. The whole
    exchange (connect, TLS, claim, reply) takes at most `timeout` seconds, through
    `proxy` (HTTP CONNECT) when one is given."""
    router_id = router_id_for(signer.public_key)
    ctx = certs.client_context(cert_pem=None, key_pem=None, ca_pem=ca_pem)
    where = Endpoint(host, port)
    expired = f"site {issuer_site} at {where} did not answer within {timeout:g} s"
    budget = _Budget(Deadline(timeout, now=clock()), clock, expired)
    if proxy is not None:
        raw = _through_proxy(proxy, host, port, budget)
    else:
        try:
            raw = socket.create_connection((host, port), timeout=budget.left())
        except TimeoutError:
            raise ClaimError(expired) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ClaimError(f"cannot reach site {issuer_site} at {where}: {reason}") from None
    try:
        budget.arm(raw)  # CPython bounds a whole TLS handshake, recv or send by it
        with ctx.wrap_socket(raw, server_hostname=issuer_site) as tls:
            budget.arm(tls)
            tls.sendall(encode_claim(code=code, csr_pem=csr_pem, site=site, signer=signer))
            (length,) = LENGTH.unpack(_recv_exact(tls, 4, budget))
            if length > MAX_CLAIM_BYTES:
                raise ClaimError(f"the issuer's reply is not acceptable: too large "
                                 f"({length} bytes)")
            reply = decode_reply(_recv_exact(tls, length, budget))
    except ssl.SSLCertVerificationError as exc:
        raise ClaimError(
            f"the router at {where} is not site {issuer_site} as the token says "
            f"(certificate check failed: {exc.verify_message}); "
            "the token is foreign or was altered"
        ) from None
    except TimeoutError:
        raise ClaimError(expired) from None
    except (ssl.SSLError, OSError) as exc:
        raise ClaimError(f"redeeming at {where} failed: {exc}") from None
    finally:
        raw.close()
    return check_reply(reply, ca_pem=ca_pem, issuer_site=issuer_site, name=site,
                       router_id=router_id, key_pem=key_pem, now=now)
