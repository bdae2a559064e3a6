"""Renewing link certificates over the live links (RENEW frames, router.protocol.renewal).

The dialler of a link renews the client certificate it holds from the acceptor's CA two
thirds of the way through its life: a new key, a CSR, one request on the link, the
answer checked in full (`certs.check_issued_leaf`: our name, our router id, our new key,
the link's CA) and stored for the next connection. The live TLS session goes on with the
old certificate, so neither the link nor any flow on it notices.

The acceptor answers a request only on a link it accepted (so the peer's client
certificate is from our CA), for the name and router id that certificate binds, and
`sign` (the daemon's signer) has the last word: revocations, lifetime, records. Requests
are rate-limited per link; an answer nobody waits for is dropped.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import trio

import certs
from router.errors import VanError
from router.net.link import Link
from router.net.logthrottle import KeyedLogThrottle
from router.protocol import RENEW_FEATURE
from router.protocol.renewal import (
    RenewalError,
    RenewMessage,
    RenewRefused,
    RenewRequest,
    RenewSigned,
    decode,
    encode,
)

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 10.0  # for the acceptor's answer to one request
MIN_REQUEST_INTERVAL_S = 1.0  # per link: requests closer than this are refused unread
RETRY_MIN_S, RETRY_MAX_S = 1.0, 600.0  # after a failed renewal, by the time left
MAX_SLEEP_S = 3600.0  # wake hourly anyway: the wall clock may jump (suspend, NTP)
DROPPED_LOG_INTERVAL_S = 10.0


class RenewalRefused(VanError):
    """The signer will not renew; the message is sent to the peer and logged."""


class Signer(Protocol):
    """The acceptor's side: sign `csr_pem` for the peer of `link`, or RenewalRefused."""

    def sign_renewal(self, link: Link, csr_pem: bytes) -> bytes: ...
    def link_ended(self, link: Link) -> None: ...


class Holder(Protocol):
    """The dialler's side: the credentials of a link, and where renewed ones go."""

    @property
    def name(self) -> str: ...
    @property
    def router_id(self) -> str: ...
    def credentials(self, link_name: str) -> tuple[bytes, bytes, bytes]: ...
    def store_renewed(self, link_name: str, cert_pem: bytes, key_pem: bytes,
                      now: float) -> None: ...


@dataclass(slots=True)
class RenewalState:
    """What `status` shows of a dialled link's renewals."""

    renewed: float | None = None  # epoch of the last renewal in this run
    renewals: int = 0
    error: str | None = None  # why the last attempt failed, until one succeeds
    next_at: float | None = None  # epoch of the next attempt


@dataclass(slots=True)
class _Waiting:
    id: int
    done: trio.Event = field(default_factory=trio.Event)
    answer: RenewSigned | RenewRefused | None = None


class Renewals:
    def __init__(self, *, holder: Holder, signer: Signer | None,
                 clock: Callable[[], float] = time.time) -> None:
        self._holder = holder
        self._signer = signer
        self._clock = clock
        self._ids = itertools.count(1)
        self._waiting: dict[Link, _Waiting] = {}
        self._last_request: dict[Link, float] = {}  # trio time, per accepted link
        self._dropped = KeyedLogThrottle(DROPPED_LOG_INTERVAL_S)
        self.states: dict[str, RenewalState] = {}

    # ---- messages from links (the Link's on_renew callback)
    def on_message(self, link: Link, payload: bytes) -> None:
        try:
            msg = decode(payload)
        except RenewalError as exc:
            self._drop(link, str(exc))
            return
        if isinstance(msg, RenewRequest):
            self._answer(link, msg)
            return
        waiting = self._waiting.get(link)
        if link.direction != "out" or waiting is None or waiting.id != msg.id:
            self._drop(link, "an answer to no request of ours")
            return
        waiting.answer = msg
        waiting.done.set()

    def _drop(self, link: Link, why: str) -> None:
        self._dropped.log(f"{link.peer_id}:{why[:20]}", log, logging.WARNING,
                          trio.current_time(), "renewal message from %s dropped: %s",
                          link.peer_site, why, extra={"link": link.name,
                                                      "peer_site": link.peer_site})

    def _answer(self, link: Link, msg: RenewRequest) -> None:
        now = trio.current_time()
        last = self._last_request.get(link)
        self._last_request[link] = now
        reply: RenewMessage
        try:
            if link.direction != "in":
                raise RenewalRefused("this router did not issue your certificate (it "
                                     "renews only the ones of links it accepted)")
            if self._signer is None:
                raise RenewalRefused("this router issues no certificates")
            if last is not None and now - last < MIN_REQUEST_INTERVAL_S:
                raise RenewalRefused("renewal requests come faster than one a second")
            cert_pem = self._signer.sign_renewal(link, msg.csr_pem)
            reply = RenewSigned(id=msg.id, cert_pem=cert_pem)
            log.info("renewed the certificate of site %s (router %s)", link.peer_site,
                     link.peer_id, extra={"link": link.name, "peer_site": link.peer_site})
        except RenewalRefused as exc:
            reply = RenewRefused(id=msg.id, error=str(exc))
            log.warning("refused to renew the certificate of site %s: %s", link.peer_site,
                        exc, extra={"link": link.name, "peer_site": link.peer_site})
        if link.closed_reason is None:
            link.conn.send_renew(encode(reply))
            link.kick()

    def link_ended(self, link: Link) -> None:
        self._last_request.pop(link, None)
        self._waiting.pop(link, None)
        if self._signer is not None:
            self._signer.link_ended(link)

    # ---- the dialler's loop, for the life of one outgoing link
    async def run_for(self, link: Link, link_name: str) -> None:
        state = self.states.setdefault(link_name, RenewalState())
        if RENEW_FEATURE not in link.peer.features:
            state.error = f"site {link.peer_site} cannot renew certificates (an older router)"
            return
        retry: float | None = None
        while True:
            try:
                info = certs.leaf_info(self._holder.credentials(link_name)[1])
            except (VanError, certs.CertError) as exc:
                state.error = f"cannot read this link's certificate: {exc}"
                return
            now = self._clock()
            due = info.renew_at.timestamp() if retry is None else now + retry
            if state.renewed is not None:  # a certificate cut short (by its CA's expiry,
                due = max(due, state.renewed + RETRY_MIN_S)  # say) must not spin
            state.next_at = due
            if due > now:
                await trio.sleep(min(due - now, MAX_SLEEP_S))
                if self._clock() < due:
                    continue  # woke early (hourly check): look again
            try:
                await self._renew(link, link_name, state)
                retry = None
            except (VanError, certs.CertError) as exc:
                state.error = str(exc)
                left = info.expires.timestamp() - self._clock()
                retry = min(max(left / 10, RETRY_MIN_S), RETRY_MAX_S)
                log.warning("link %s: certificate renewal failed (retry in %.0f s): %s",
                            link_name, retry, exc, extra={"link": link_name,
                                                          "peer_site": link.peer_site})

    async def _renew(self, link: Link, link_name: str, state: RenewalState) -> None:
        ca_pem, _, _ = self._holder.credentials(link_name)
        key_pem, csr_pem = certs.make_csr(self._holder.name)
        waiting = _Waiting(id=next(self._ids) & 0xFFFFFFFF)
        self._waiting[link] = waiting
        try:
            link.conn.send_renew(encode(RenewRequest(id=waiting.id, csr_pem=csr_pem)))
            link.kick()
            with trio.move_on_after(ANSWER_TIMEOUT_S):
                await waiting.done.wait()
        finally:
            self._waiting.pop(link, None)
        answer = waiting.answer
        if answer is None:
            raise RenewalRefused(f"site {link.peer_site} did not answer within "
                                 f"{ANSWER_TIMEOUT_S:g} s")
        if isinstance(answer, RenewRefused):
            raise RenewalRefused(f"site {link.peer_site} refused: {answer.error}")
        try:
            cert = certs.check_issued_leaf(
                answer.cert_pem, ca_pem=ca_pem, name=self._holder.name, key_pem=key_pem,
                role=certs.Role.CLIENT, router_id=self._holder.router_id,
                now=datetime.now(UTC))
        except certs.CertError as exc:
            raise RenewalRefused(f"site {link.peer_site} sent an unacceptable "
                                 f"certificate: {exc}") from None
        now = self._clock()
        self._holder.store_renewed(link_name, cert, key_pem, now)
        state.renewed, state.error = now, None
        state.renewals += 1
        log.info("link %s: certificate renewed, valid until %s", link_name,
                 certs.leaf_info(cert).expires.strftime("%Y-%m-%d %H:%M:%S UTC"),
                 extra={"link": link_name, "peer_site": link.peer_site})
