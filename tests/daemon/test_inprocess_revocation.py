"""Revocation, in one trio.run over memory streams with real TLS, in virtual time: what a
revoked site may try next. A certificate for its router id with a new key, a new router id
under its name, a renewal on the link it had: each refused, with the reason on both sides.
Revoking one site leaves the other's link alone."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import certs
from router.daemon.revoke import revoke_site
from router.net.renewal import RenewalRefused
from router.routing import Ed25519Signer
from router.site.config import Limits
from router.site.errors import SiteError
from tests.support.memnet import Net, Node, converged, mem_net, wait_until

LIMITS = Limits(redial_min_s=0.2, redial_max_s=1.0)


async def star(net: Net) -> tuple[Node, Node, Node]:
    hub = await net.add_router("hub")
    a = await net.add_router("a")
    b = await net.add_router("b")
    net.link(a, hub)
    net.link(b, hub)
    await wait_until(lambda: converged(hub, a, b), "a and b linked to the hub")
    return hub, a, b


def revoke(hub: Node, site: str) -> int:
    r = hub.router
    _, closed = revoke_site(site, "decommissioned", signer=r.cert_signer, links=r.links,
                            routing=r.routing)
    return closed


def dial_error(node: Node, link: str) -> str:
    return str(node.router.links.dials[link].last_error)


async def test_a_revoked_site_is_refused_whatever_it_presents(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net(LIMITS) as net:
        hub, a, b = await star(net)
        b_link = b.router.links.link_for(hub.id)
        old_link = hub.router.links.link_for(a.id)
        assert old_link is not None
        start = trio.current_time()
        assert revoke(hub, "a") == 1
        await wait_until(lambda: hub.id not in a.neighbours(), "a's link gone")
        assert trio.current_time() - start < 1.0
        await wait_until(lambda: "site hub refused the link: site a was revoked by site hub"
                         in dial_error(a, "a-hub"), "a's redial refused with the reason")
        assert dial_error(a, "a-hub").endswith(": decommissioned")
        entry = hub.router.cert_signer.revocations.entries[0]
        assert entry.router_ids == [a.id] and entry.last_refused is not None

        # A certificate for a's router id with a new key (say, signed before the revocation
        # and kept): refused at the TLS stage by its router id.
        a.router.identity.add_link("a-hub", hub.router.identity)
        refused = entry.last_refused
        await wait_until(lambda: entry.last_refused != refused, "the new key refused too")
        assert hub.id not in a.neighbours()

        # A new identity under the name a: refused by the name.
        a.router.identity.signer = Ed25519Signer.generate()
        a.router.identity.add_link("a-hub", hub.router.identity)
        refused = entry.last_refused
        await wait_until(lambda: entry.last_refused != refused, "the new identity refused")
        assert hub.id not in a.neighbours()

        # A renewal on the link it had (or any it could make) is refused.
        with pytest.raises(RenewalRefused, match="site a was revoked"):
            hub.router.cert_signer.sign_renewal(old_link, certs.make_csr("a")[1])
        # b never noticed.
        assert b.router.links.link_for(hub.id) is b_link and b_link is not None
        assert b_link.closed_reason is None


async def test_revoking_what_cannot_be_revoked_says_why(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net(LIMITS) as net:
        hub, _, _ = await star(net)
        for site, message in (("nobody", "site nobody is not known here"),
                              ("hub", "this site's own name"),
                              ("../etc", "not a valid site name")):
            with pytest.raises(SiteError, match=message):
                revoke(hub, site)
        with pytest.raises(SiteError, match="one printable line"):
            revoke_site("a", "x\n" * 10, signer=hub.router.cert_signer,
                        links=hub.router.links, routing=hub.router.routing)
        assert not hub.router.cert_signer.revocations.entries
