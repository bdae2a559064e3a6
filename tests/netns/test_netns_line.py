"""A line of four sites in separate network namespaces: A (root) - B - C - D.

Each neighbour pair shares only its own veth /30; B and C have no IP forwarding, so the
only way from D to A is through the routers of C and B. A exposes the machine's PostgreSQL
(reachable on 127.0.0.1:5432 in the root namespace only); D reaches it over three hops.
Then the B-C link is cut silently (nftables drop) to split the network, and healed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.netns import NetLab, NetnsSite, VethEnd, in_ns, leftovers, require_netns, run
from tests.support.services import HashServer, transfer
from tests.support.sites import free_port, wait_for

pytestmark = pytest.mark.netns

MB = 1024 * 1024
PG = ["-h", "127.0.0.1", "-U", "postgres"]


@dataclass
class Line:
    lab: NetLab
    a: NetnsSite
    b: NetnsSite
    c: NetnsSite
    d: NetnsSite
    bc: tuple[VethEnd, VethEnd]


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    require_netns(nft=True)
    lab = NetLab(tmp_path_factory.mktemp("nsline"))
    try:
        nb, nc, nd = lab.netns("b"), lab.netns("c"), lab.netns("d")
        ab = lab.veth(None, nb)
        bc = lab.veth(nb, nc)
        cd = lab.veth(nc, nd)
        # Each redeemer dials its issuer's --host, the issuer's end of their shared veth.
        a = lab.site("A", None, ab[0].addr, start=False)
        b = lab.site("B", nb, bc[0].addr, start=False)
        c = lab.site("C", nc, cd[0].addr, start=False)
        d = lab.site("D", nd, cd[1].addr, start=False)
        lab.start(a, b, c, d)
        lab.link(a, b)
        lab.link(b, c)
        lab.link(c, d)
        yield Line(lab, a, b, c, d, bc)
    finally:
        lab.cleanup()
        assert not [ns for ns in leftovers() if ns.startswith(lab.tag)]


def _postgres_ok() -> str | None:
    if shutil.which("psql") is None or shutil.which("pgbench") is None:
        return "psql/pgbench not installed"
    probe = subprocess.run(["psql", *PG, "-d", "test", "-tAc", "select 1"],
                           capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        return f"no PostgreSQL on 127.0.0.1:5432: {probe.stderr.strip()}"
    return None


def test_psql_and_pgbench_across_three_hops(line: Line) -> None:
    if (why := _postgres_ok()) is not None:
        pytest.skip(why)
    a, d = line.a, line.d
    dns = d.ns
    assert dns is not None
    scratch = f"vr_pgbench_{os.getpid()}"
    run("psql", *PG, "-d", "postgres", "-c", f"drop database if exists {scratch}")
    run("psql", *PG, "-d", "postgres", "-c", f"create database {scratch}")
    try:
        run("pgbench", *PG, "-i", "-s", "1", "-q", scratch)  # directly, in the root namespace
        a.sitectl("connector", "create", "db", "127.0.0.1:5432")
        port = free_port()
        d.sitectl("listener", "create", "db", str(port))
        wait_for(lambda: d.key_reachable("db"), what="db reachable from D")

        out = run("psql", *PG, "-p", str(port), "-d", "test", "-tAc", "select 42", ns=dns)
        assert out.stdout.strip() == "42", out

        bench = run("pgbench", *PG, "-p", str(port), "-c", "4", "-j", "2", "-T", "3", "-S",
                    scratch, ns=dns, timeout=60)
        m = re.search(r"number of transactions actually processed: (\d+)", bench.stdout)
        assert m and int(m.group(1)) > 0, bench.stdout + bench.stderr
        failed = re.search(r"number of failed transactions: (\d+)", bench.stdout)
        assert failed is None or int(failed.group(1)) == 0, bench.stdout

        net = d.network()
        assert net["keys"]["db"]["path"] == ["D", "C", "B", "A"], net["keys"]
        assert {s["site"] for s in net["sites"]} == {"A", "B", "C", "D"}
        # The transit routers really carried it (B and C relay flows, not the kernel).
        assert d.status()["flows"]["opened"] >= 5
    finally:
        run("psql", *PG, "-d", "postgres", "-c",
            f"drop database if exists {scratch} with (force)", check=False)


def _check(ns: str | None, port: int, server: HashServer, conn_id: int, size: int) -> None:
    result = in_ns(ns, transfer, port, conn_id, size, size, 30)
    assert server.results[conn_id].received_hash == result.sent_hash
    assert result.received_hash == server.results[conn_id].sent_hash
    assert result.received == size


def test_partition_and_heal(line: Line) -> None:
    lab, a, b, c, d = line.lab, line.a, line.b, line.c, line.d
    # A service on each side: "west" on A (root namespace), "east" on D (D's namespace).
    west_srv = lab.server(None, HashServer)
    east_srv = lab.server(d.ns, HashServer)
    a.sitectl("connector", "create", "west", f"127.0.0.1:{west_srv.port}")
    d.sitectl("connector", "create", "east", f"127.0.0.1:{east_srv.port}")
    west_port, east_port = free_port(), free_port()
    d.sitectl("listener", "create", "west", str(west_port))
    a.sitectl("listener", "create", "east", str(east_port))
    wait_for(lambda: d.key_reachable("west") and a.key_reachable("east"),
             what="both keys reachable across the line")
    _check(d.ns, west_port, west_srv, 1, 2 * MB)
    _check(None, east_port, east_srv, 1, 2 * MB)

    assert b.ns is not None
    t0 = time.monotonic()
    lab.cut(b.ns, "vrcut", [line.bc[0].ifname])  # B's end of B-C: no FIN, no RST

    def split() -> bool:
        west_side = (a.site_reachable("C") is False and a.site_reachable("D") is False
                     and a.site_reachable("B") is True and not a.listener_reachable("east")
                     and not a.key_reachable("east"))
        east_side = (d.site_reachable("A") is False and d.site_reachable("B") is False
                     and d.site_reachable("C") is True and not d.listener_reachable("west")
                     and not d.key_reachable("west"))
        return west_side and east_side

    wait_for(split, timeout=20, what="both halves see the other half unreachable")
    split_s = time.monotonic() - t0
    # Detection takes dead_after_s = 3 s; the bound leaves room for a loaded 2-core host,
    # where each poll above is eight sitectl processes (a measurement belongs in bench/).
    assert split_s < 15, f"partition took {split_s:.1f} s to be noticed"
    assert a.status(network=True)["network"]["keys"].get("east", {}).get("path") is None
    assert d.path("west") is None
    # A client on the cut-off side is turned away, not hung.
    with pytest.raises(OSError):
        in_ns(d.ns, transfer, west_port, 2, MB, MB, 15)

    lab.uncut(b.ns, "vrcut")

    def healed() -> bool:
        return (d.listener_reachable("west") and a.listener_reachable("east")
                and d.path("west") == ["D", "C", "B", "A"]
                and a.path("east") == ["A", "B", "C", "D"])

    wait_for(healed, timeout=30, what="network reconverged after the partition healed")
    assert c.link_up("B")  # C redialled B by itself
    _check(d.ns, west_port, west_srv, 3, 2 * MB)
    _check(None, east_port, east_srv, 3, 2 * MB)


def test_namespaces_are_really_separate(line: Line) -> None:
    """Sanity check of the rig: D cannot reach A's address at the IP level."""
    assert line.d.ns is not None
    out = run("ip", "route", "get", line.a.host, ns=line.d.ns, check=False)
    assert out.returncode != 0, out.stdout  # no route: only the routers connect D to A
    assert Path("/proc/sys/net/ipv4/ip_forward").exists()
    fwd = run("cat", "/proc/sys/net/ipv4/ip_forward", ns=line.b.ns).stdout.strip()
    assert fwd == "0"
