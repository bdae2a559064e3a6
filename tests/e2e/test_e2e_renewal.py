"""Credentials that renew, with real routers: link certificates that live 4 seconds are
renewed over the live link while a flow runs (hash compared) and the link never drops;
the server certificate renews itself; a site whose certificate expired while its router
was stopped is told why and what to do."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import certs
from tests.support.services import EchoServer, PacedFlow
from tests.support.sites import (
    Site,
    free_port,
    link,
    short_lived,
    site_env,
    start_sites,
    wait_for,
)

LIFETIME_S = 4.0


def serial(path: Path) -> str:
    return certs.leaf_info(path.read_bytes()).serial


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Site, Site]]:
    work = tmp_path_factory.mktemp("renewal")
    env = site_env(work)
    hub = short_lived(Site(work, "hub", env).init(), LIFETIME_S)
    lap = short_lived(Site(work, "lap", env).init(), LIFETIME_S)
    start_sites(hub, lap)
    link(hub, lap, work)
    yield work, hub, lap
    lap.stop()
    hub.stop()


def link_of(site: Site, name: str) -> dict[str, object]:
    return next(lk for lk in site.state()["links"] if lk["name"] == name)


def test_a_flow_runs_across_several_renewals_and_the_link_never_drops(
        sites: tuple[Path, Site, Site]) -> None:
    _, hub, lap = sites
    server = EchoServer()
    port = free_port()
    hub.sitectl("connector", "create", "echo", f"127.0.0.1:{server.port}")
    lap.sitectl("listener", "create", "echo", str(port))
    wait_for(lambda: lap.key_reachable("echo"), what="echo reachable")
    cert_path, server_path = lap.dir / "links" / "hub.crt", hub.dir / "router.crt"
    before = link_of(lap, "hub")
    hub_side_before = link_of(hub, "in:lap")
    seen, servers = {serial(cert_path)}, {serial(server_path)}

    flow = PacedFlow(port)
    try:
        def renewed_thrice() -> bool:
            seen.add(serial(cert_path))
            servers.add(serial(server_path))
            return len(seen) >= 4 and len(servers) >= 2

        wait_for(renewed_thrice, timeout=30, what="three renewals during the flow")
    finally:
        flow.finish()
    assert not flow.errors
    assert flow.got.hexdigest() == flow.sent.hexdigest()
    after, hub_side = link_of(lap, "hub"), link_of(hub, "in:lap")
    assert after["state"] == "up" and after["since"] == before["since"]
    # (an accepted link's since is derived from the router's clock at each status)
    assert abs(float(hub_side["since"]) - float(hub_side_before["since"])) < 0.5
    assert after["renewal_error"] is None
    assert isinstance(after["cert_renewed"], float) and after["cert_renewed"] > time.time() - 10
    assert isinstance(after["cert_expires"], float) and after["cert_expires"] > time.time()
    assert hub.state()["server_cert"]["renewed"] is not None
    # What sitectl status prints: expiry and last renewal for the link and the server.
    text = lap.sitectl("status").stdout
    assert "certificate expires in" in text and "renewed" in text
    assert "server certificate: expires in" in hub.sitectl("status").stdout


def test_a_certificate_that_expired_while_stopped_gets_a_clear_error(
        sites: tuple[Path, Site, Site]) -> None:
    _, _, lap = sites
    cert_path = lap.dir / "links" / "hub.crt"
    lap.stop()
    expires = certs.leaf_info(cert_path.read_bytes()).expires.timestamp()
    wait_for(lambda: time.time() > expires + 1, timeout=LIFETIME_S + 5,
             what="the certificate to expire")
    lap.start()
    wait_for(lambda: "expired at" in str(link_of(lap, "hub")["error"]),
             what="the expiry in the link's status")
    error = str(link_of(lap, "hub")["error"])
    assert link_of(lap, "hub")["state"] == "expired"
    assert error.startswith("this site's certificate for link hub expired at ")
    assert "get a new token from the peer site" in error
    assert "sitectl link delete hub" in error and "sitectl link create TOKEN" in error
    assert error in lap.log_path.read_text()  # in the log too
    # The server certificate had expired as well; it was renewed at start, locally.
    assert lap.state()["server_cert"]["expires"] > time.time()
