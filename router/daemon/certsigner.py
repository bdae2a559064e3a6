"""The site CA's signing desk for link client certificates: at redemption (for the token
issuer) and at renewal (over a live link). Every certificate it signs is short-lived
(`link_cert_lifetime_s`), recorded (`IssuedCerts`), and refused to a revoked site.

A renewal is judged by what authenticated the link, never by the request: the name and
router id come from the client certificate the peer presented (which our CA signed, as
the link port trusts no other), and the CSR must be for that name and a new key."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import trio

import certs
from router.net.link import Link
from router.net.renewal import RenewalRefused
from router.site.certrecords import (
    Issued,
    IssuedCerts,
    Revocations,
    Revoked,
    revocation_text,
)
from router.site.errors import SiteError

# At most one certificate per link per this fraction of the lifetime: an honest holder
# renews once per two thirds of it.
MIN_RENEWAL_FRACTION = 1 / 4


class CertSigner:
    def __init__(self, *, site: str, ca: certs.CertificateAuthority,
                 lifetime_s: Callable[[], float], issued: IssuedCerts,
                 revocations: Revocations) -> None:
        self.site = site
        self._ca = ca
        self._lifetime_s = lifetime_s
        self.issued = issued
        self.revocations = revocations
        self._signed_at: dict[Link, float] = {}  # trio time of the last renewal per link

    def revoked(self, *, site: str | None = None, router_id: str | None = None,
                info: certs.LeafInfo | None = None) -> Revoked | None:
        return self.revocations.find(
            site=site, router_id=router_id if router_id else None,
            serial=None if info is None else info.serial,
            key_sha256=None if info is None else info.key_sha256)

    def refusal_text(self, entry: Revoked) -> str:
        return revocation_text(entry, self.site)

    # ---- the link port's gate (router.net.links.LinkGate)
    def link_refusal(self, der: bytes | None, site: str | None = None,
                     router_id: str | None = None) -> str | None:
        """Why a peer may not link: its certificate (serial, key, name, router id) or
        what its HELLO says is revoked. None: it may."""
        if not self.revocations.entries:
            return None
        info = None
        if der is not None:
            # TLS accepted it; if it is malformed, the HELLO checks say what is wrong.
            with contextlib.suppress(certs.CertError):
                info = certs.leaf_info_der(der)
        entry = self.revoked(site=site, router_id=router_id, info=info) or (
            None if info is None else
            self.revoked(site=info.common_name, router_id=info.router_id))
        if entry is None:
            return None
        entry.last_refused = time.time()
        return self.refusal_text(entry)

    def _sign(self, csr_pem: bytes, *, site: str, router_id: str, how: str) -> bytes:
        """Sign and record; CertError or SiteError (nothing recorded) if it cannot."""
        if self.revocations.find(key_sha256=certs.csr_key_sha256(csr_pem)) is not None:
            raise SiteError("the key in the request belongs to a revoked site")
        cert_pem = self._ca.sign_csr(csr_pem, expected_name=site, router_id=router_id,
                                     lifetime_s=self._lifetime_s())
        info = certs.leaf_info(cert_pem)
        self.issued.record(Issued(site=site, router_id=router_id, serial=info.serial,
                                  key_sha256=info.key_sha256, issued=info.issued.timestamp(),
                                  expires=info.expires.timestamp(), how=how))
        return cert_pem

    def sign_claim(self, csr_pem: bytes, *, site: str, router_id: str) -> bytes:
        """A redeemed token's certificate (the issuer checked the grant and the name)."""
        entry = self.revoked(site=site, router_id=router_id)
        if entry is not None:
            raise SiteError(self.refusal_text(entry))
        return self._sign(csr_pem, site=site, router_id=router_id, how="token")

    # ---- renewal over a live link (router.net.renewal.Signer)
    def sign_renewal(self, link: Link, csr_pem: bytes) -> bytes:
        der = link.stream.peer_certificate_der()
        if der is None:
            raise RenewalRefused("this link has no client certificate to renew")
        try:
            info = certs.leaf_info_der(der)
        except certs.CertError as exc:
            raise RenewalRefused(str(exc)) from None
        if info.router_id is None or info.router_id != link.peer_id:
            raise RenewalRefused("your certificate binds no router id (it predates them): "
                                 "redeem a new token")
        if info.common_name != link.peer_site:
            raise RenewalRefused(f"your certificate names {info.common_name!r}, not the "
                                 f"site {link.peer_site!r} of this link")
        entry = self.revoked(site=link.peer_site, router_id=link.peer_id, info=info)
        if entry is not None:
            raise RenewalRefused(self.refusal_text(entry))
        now = trio.current_time()
        lifetime = self._lifetime_s()
        last = self._signed_at.get(link)
        if last is not None and now - last < lifetime * MIN_RENEWAL_FRACTION:
            raise RenewalRefused(f"renewed on this link {now - last:.0f} s ago already "
                                 f"(at most once per {lifetime * MIN_RENEWAL_FRACTION:g} s)")
        try:
            if certs.csr_key_sha256(csr_pem) == info.key_sha256:
                raise RenewalRefused("a renewal needs a new key")
            cert_pem = self._sign(csr_pem, site=link.peer_site, router_id=link.peer_id,
                                  how="renewal")
        except (certs.CertError, SiteError) as exc:
            raise RenewalRefused(str(exc)) from None
        self._signed_at[link] = now
        return cert_pem

    def link_ended(self, link: Link) -> None:
        self._signed_at.pop(link, None)

    def peer_cert(self, router_id: str) -> tuple[float, float | None] | None:
        """(expires, last renewal) of the newest certificate issued to a router."""
        entry = self.issued.latest(router_id)
        if entry is None:
            return None
        return entry.expires, entry.issued if entry.how == "renewal" else None
