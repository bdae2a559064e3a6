"""Several sites on loopback: flows across transit routers, failover between sites."""

from __future__ import annotations

import hashlib
import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import HEADER, HashServer, transfer
from tests.support.sites import (
    Site,
    free_port,
    line_of_sites,
    link,
    site_env,
    start_sites,
    wait_for,
)

MB = 1024 * 1024


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Site]]:
    """a - b - c - d, each linked to the next (the later one redeems)."""
    sites = line_of_sites(tmp_path_factory.mktemp("line"), "abcd")
    yield sites
    for site in sites:
        site.stop()


def test_flow_across_two_transit_routers(line: list[Site]) -> None:
    a, _, _, d = line
    server = HashServer()
    a.sitectl("connector", "create", "far", f"127.0.0.1:{server.port}")
    port = free_port()
    d.sitectl("listener", "create", "far", str(port))
    wait_for(lambda: d.key_reachable("far"), what="far reachable from d")
    result = transfer(port, 1, 20 * MB, 20 * MB)
    assert server.results[1].received_hash == result.sent_hash
    assert result.received_hash == server.results[1].sent_hash
    net = d.status(network=True)["network"]
    assert net["keys"]["far"]["path"] == ["d", "c", "b", "a"]
    assert {s["site"] for s in net["sites"]} == {"a", "b", "c", "d"}


def test_refusal_fails_over_to_another_site(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    hub, left, right = sites = [Site(tmp_path, n, env).init() for n in ("hub", "left", "right")]
    start_sites(*sites)
    try:
        link(hub, left, tmp_path)
        link(hub, right, tmp_path)
        server = HashServer()
        dead = free_port()
        left.sitectl("connector", "create", "svc", f"127.0.0.1:{dead}", "--priority", "0")
        right.sitectl("connector", "create", "svc", f"127.0.0.1:{server.port}",
                      "--priority", "5")
        port = free_port()
        hub.sitectl("listener", "create", "svc", str(port), "--strategy", "priority")
        wait_for(lambda: len(hub.state()["keys"].get("svc", {}).get("served_by", [])) == 2,
                 what="both servers known")
        result = transfer(port, 7, MB, MB)  # left refuses (target down), right serves
        assert server.results[7].received_hash == result.sent_hash
        assert "cannot reach 'svc'" in left.log_tail(20)
        # What the client sent before its flow opened went with the OPEN to left, and
        # again to right: right got it once, and the record counts it once.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            request = HEADER.pack(8, 1000) + random.Random(8).randbytes(20_000)
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
        wait_for(lambda: 8 in server.results, what="the server saw the request end")
        assert server.results[8].received_hash == hashlib.sha256(request[HEADER.size:]).hexdigest()
        assert len(got) == 1000
        (record,) = [r for r in json.loads(hub.sitectl("flows", "--json").stdout)
                     if r["routing_key"] == "svc" and r["bytes_s2c"] == 1000]
        assert record["bytes_c2s"] == len(request) and record["outcome"] == "ok", record
    finally:
        for s in (hub, left, right):
            s.stop()


def test_live_cost_change_moves_the_path_without_dropping_links(tmp_path: Path) -> None:
    """A triangle: src reaches dst directly (cost 1) or via mid; raising the direct
    link's cost moves the path through mid, and no link goes down."""
    env = site_env(tmp_path)
    src, mid, dst = sites = [Site(tmp_path, n, env).init() for n in ("src", "mid", "dst")]
    start_sites(*sites)
    try:
        link(dst, src, tmp_path)  # src dials dst: src owns this link's cost
        link(mid, src, tmp_path)
        link(dst, mid, tmp_path)
        server = HashServer()
        dst.sitectl("connector", "create", "svc", f"127.0.0.1:{server.port}")
        port = free_port()
        src.sitectl("listener", "create", "svc", str(port))

        def path() -> list[str] | None:
            result: list[str] | None = src.state(network=True)["network"]["keys"].get(
                "svc", {}).get("path")
            return result

        wait_for(lambda: path() == ["src", "dst"], what="direct path")
        since = {lk["name"]: lk["since"] for lk in src.status()["links"]}
        src.sitectl("link", "cost", "dst", "10")
        wait_for(lambda: path() == ["src", "mid", "dst"], what="path via mid")
        # The accepting side adopted the new cost; nothing was torn down.
        wait_for(lambda: any(lk["peer"] == "src" and lk["cost"] == 10 for s in
                             src.state(network=True)["network"]["sites"] if s["site"] == "dst"
                             for lk in s["links"]), what="dst's record shows cost 10")
        assert {lk["name"]: lk["since"] for lk in src.status()["links"]} == since
        result = transfer(port, 3, MB, MB)
        assert server.results[3].received_hash == result.sent_hash
        refused = dst.sitectl("link", "cost", "in:src", "3", check=False)
        assert refused.returncode != 0 and "dialled by site src" in refused.stderr
    finally:
        for s in (src, mid, dst):
            s.stop()
