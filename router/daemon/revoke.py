"""`sitectl link revoke SITE` on a running router: record the site's certificates and
router ids as revoked (persisted before anything else happens), then close its live links
with the reason; from then on the link port turns it away (CertSigner.link_refusal),
and neither a claim nor a renewal is signed for it. Other links are not touched."""

from __future__ import annotations

import logging
import time

from router.daemon.certsigner import CertSigner
from router.net.links import LinkTable
from router.routing import RoutingCore
from router.site.certrecords import Revoked, build_revocation

log = logging.getLogger(__name__)


def revoke_site(site: str, reason: str, *, signer: CertSigner, links: LinkTable,
                routing: RoutingCore) -> tuple[Revoked, int]:
    """The revocation as recorded, and how many live links it closed."""
    live = [(link.peer_site, link.peer_id,
             # Only a link it dialled presents a certificate from our CA.
             link.stream.peer_certificate_der() if link.direction == "in" else None)
            for link in links.all_links()]
    entry = build_revocation(site, reason, own_site=signer.site, now=time.time(),
                             issued=signer.issued, live=live,
                             known=((r.router_id, r.site) for r in routing.records()))
    entry = signer.revocations.add(entry)
    text = signer.refusal_text(entry)
    closed = links.close_links(entry.site, set(entry.router_ids), text)
    log.warning("%s; %d live link(s) closed; routers %s, %d certificate(s) refused from now "
                "on", text, closed, ", ".join(entry.router_ids) or "unknown",
                len(entry.serials), extra={"peer_site": entry.site})
    return entry, closed
