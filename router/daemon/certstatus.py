"""What `sitectl status` shows of certificates: each link's (expiry, last renewal, why a
renewal failed), the server certificate's, and the sites this site revoked."""

from __future__ import annotations

from typing import Any

import certs
from router.daemon.view import RouterView
from router.net.link import Link
from router.net.links import DialState
from router.site.certrecords import Revoked


def dialled(r: RouterView, name: str, dial: DialState) -> dict[str, Any]:
    """Our client certificate for an outgoing link (from the peer's CA)."""
    info = r.identity.client_cert_info(name)
    state = r.renewals.states.get(name)
    renewed = state.renewed if state is not None and state.renewed else dial.spec.renewed
    return {"cert_expires": None if info is None else info.expires.timestamp(),
            "cert_renewed": renewed,
            "renewal_error": None if state is None else state.error}


def accepted(r: RouterView, link: Link) -> dict[str, Any]:
    """The peer's client certificate (from our CA): the newest we issued it, else the one
    it presented."""
    newest = r.cert_signer.peer_cert(link.peer_id)
    if newest is not None:
        return {"cert_expires": newest[0], "cert_renewed": newest[1], "renewal_error": None}
    der = link.stream.peer_certificate_der()
    try:
        expires = None if der is None else certs.leaf_info_der(der).expires.timestamp()
    except certs.CertError:
        expires = None
    return {"cert_expires": expires, "cert_renewed": None, "renewal_error": None}


def server(r: RouterView) -> dict[str, Any]:
    info = certs.leaf_info(r.identity.keypair.cert_pem)
    return {"expires": info.expires.timestamp(), "renewed": r.server_cert.renewed,
            "error": r.server_cert.error}


def revoked_entry(e: Revoked) -> dict[str, Any]:
    return {"site": e.site, "router_ids": e.router_ids, "revoked": e.revoked,
            "reason": e.reason, "certificates": len(e.serials), "last_refused": e.last_refused}


def revoked(r: RouterView) -> list[dict[str, Any]]:
    return [revoked_entry(e) for e in r.cert_signer.revocations.entries]
