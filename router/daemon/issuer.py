"""The token issuer: link tokens out, certificates for the claims that redeem them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import certs
from router.daemon.certsigner import CertSigner
from router.protocol.claim import ClaimError, decode_claim_body, refusal_for
from router.site.errors import SiteError
from router.site.tokens import GrantStore, Token, TokenError

log = logging.getLogger(__name__)


class TokenIssuer:
    def __init__(self, *, site: str, router_id: str, ca: certs.CertificateAuthority,
                 grants: GrantStore, signer: CertSigner,
                 endpoints: Callable[[], tuple[tuple[str, int], ...]],
                 linked_sites: Callable[[], set[str]],
                 known_routers: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self.site = site
        self.router_id = router_id
        self._ca = ca
        self._grants = grants
        self._signer = signer  # signs (short-lived), records, refuses revoked sites
        self._endpoints = endpoints
        self._linked_sites = linked_sites
        self._known_routers = known_routers  # (router id, site) from the routing database

    def issue_token(self, *, expires_s: float, uses: int) -> bytes:
        now = time.time()
        code, grant = self._grants.new_grant(expires_in=expires_s, uses=uses, now=now)
        token = Token(site=self.site, endpoints=self._endpoints(),
                      ca_pem=self._ca.cert_pem, code=code, expires=grant.expires, uses=uses)
        data = token.dump(self._ca.sign_bytes(token.signed_bytes()))
        self._grants.add(grant, now=now)  # stored only once the token exists
        return data

    async def on_claim(self, body: bytes) -> dict[str, Any]:
        """A redeemer presents a code, a CSR, its name and router id: sign it if the
        grant allows and the name is free. The grant is checked first, so only a token
        holder learns which names are taken; a refused claim does not use the token.
        The reply says why a claim was refused; the caller logs it."""
        try:
            claim = decode_claim_body(body)
            grant = self._grants.check(claim.code, now=time.time())
            revoked = self._signer.revoked(site=claim.site, router_id=claim.router_id)
            if revoked is not None:
                raise ClaimError(self._signer.refusal_text(revoked))
            refusal = refusal_for(claim, own_site=self.site, own_router_id=self.router_id,
                                  linked_sites=self._linked_sites(),
                                  known=self._known_routers())
            if refusal is not None:
                raise ClaimError(refusal)
            cert_pem = self._signer.sign_claim(claim.csr_pem, site=claim.site,
                                               router_id=claim.router_id)
            self._grants.consume(grant)  # counted only once the certificate exists
        except (ClaimError, TokenError, certs.CertError, SiteError) as exc:
            # Not logged here: anyone can send wrong claims as fast as TLS allows, so the
            # link port logs refusals with the peer's address, throttled per kind.
            return {"ok": False, "error": str(exc)}
        log.info("token redeemed by site %s (router %s)", claim.site, claim.router_id)
        return {"ok": True, "cert": cert_pem, "site": self.site, "router_id": self.router_id}
