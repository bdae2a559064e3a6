"""Flow records as a user reads them: `sitectl flows` on three sites in a line."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.services import HashServer, transfer
from tests.support.sites import Site, free_port, link, site_env, start_sites, wait_for

FLOWS = 20
HEADER = 16  # HashServer's header, sent before the pattern bytes


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Site]]:
    """a - b - c; c serves "db", a listens for it."""
    work = tmp_path_factory.mktemp("records")
    env = site_env(work)
    sites = [Site(work, name, env).init() for name in "abc"]
    start_sites(*sites)
    for left, right in itertools.pairwise(sites):
        link(left, right, work)
    yield sites
    for site in sites:
        site.stop()


def flows(site: Site, *args: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(site.sitectl("flows", "--json", *args).stdout)
    return result


def ended(site: Site, key: str, n: int) -> list[dict[str, Any]]:
    """`site`'s records of `key` once `n` of them ended."""
    def done() -> list[dict[str, Any]] | None:
        recs = flows(site, "--key", key)
        return recs if sum(r["end"] is not None for r in recs) >= n else None
    result: list[dict[str, Any]] = wait_for(done, what=f"{n} ended {key} flows on {site.name}")
    return result


def test_twenty_flows_are_recorded_whole_on_the_listener_site(line: list[Site]) -> None:
    a, _, c = line
    server = HashServer()
    c.sitectl("connector", "create", "db", f"127.0.0.1:{server.port}")
    port = free_port()
    a.sitectl("listener", "create", "db", str(port))
    wait_for(lambda: a.key_reachable("db"), what="db reachable from a")
    sent = {}
    for i in range(1, FLOWS + 1):
        up, down = 1000 * i, 3000 * i + 7
        result = transfer(port, i, up, down)
        assert result.received == down
        sent[i] = (HEADER + up, down)
    records = ended(a, "db", FLOWS)
    assert len(records) == FLOWS
    by_bytes = {(r["bytes_c2s"], r["bytes_s2c"]) for r in records}
    assert by_bytes == set(sent.values())
    for rec in records:
        assert rec["sites"] == ["a", "b", "c"]
        assert rec["outcome"] == "ok" and rec["reason"] is None
        assert rec["protocol"] == "tcp" and rec["routing_key"] == "db"
        assert rec["listener_site"] == "a" and rec["connector_site"] == "c"
        assert rec["server"] == f"127.0.0.1:{server.port}"
        assert rec["client"].startswith("127.0.0.1:")
        assert rec["ttfb_s"] is not None and 0 <= rec["ttfb_s"] <= rec["end"] - rec["start"]
        assert "method" not in rec
    # The connector's half on c: the same flows, the same bytes, its side's view.
    half = ended(c, "db", FLOWS)
    assert {(r["bytes_c2s"], r["bytes_s2c"]) for r in half} == set(sent.values())
    assert all(r["role"] == "connector" and r["sites"] == ["a", "b", "c"] for r in half)
    # One line per flow for people.
    text = a.sitectl("flows", "--key", "db", "--limit", "3").stdout.splitlines()
    assert len(text) == 3
    assert text[0].split("  ")[:2] == ["db", "a>b>c"]
    assert f"-> 127.0.0.1:{server.port}" in text[0] and text[0].endswith("  ok")
    server.close()


def test_refused_flows_say_why(line: list[Site]) -> None:
    a, _, c = line
    c.sitectl("connector", "create", "dead", f"127.0.0.1:{free_port()}")  # nothing there
    dead_port, none_port = free_port(), free_port()
    a.sitectl("listener", "create", "dead", str(dead_port))
    a.sitectl("listener", "create", "nowhere", str(none_port))
    wait_for(lambda: a.key_reachable("dead"), what="dead reachable from a")
    for port in (dead_port, none_port):
        # Closed, or reset (even before connect() returned): no site served it.
        with contextlib.suppress(ConnectionResetError), \
                socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert sock.recv(1) == b""
    (dead,) = ended(a, "dead", 1)
    assert dead["outcome"] == "refused" and dead["sites"] == ["a"]
    assert "c: site c cannot reach 'dead' target" in dead["reason"]
    (nowhere,) = ended(a, "nowhere", 1)
    assert nowhere["outcome"] == "refused" and nowhere["connector_site"] is None
    assert nowhere["reason"] == "no reachable site has a connector for it"
    (half,) = ended(c, "dead", 1)  # c's own record of the refusal
    assert half["outcome"] == "refused" and "cannot reach" in half["reason"]
    line_text = a.sitectl("flows", "--key", "nowhere").stdout.strip()
    assert line_text.endswith("refused: no reachable site has a connector for it")


def test_network_view_from_the_middle_names_a_site_that_is_down(line: list[Site]) -> None:
    _, b, c = line
    assert flows(b) == []  # transit only: b holds no flow end
    records = flows(b, "--network", "--key", "db")
    # a's whole records; c's halves of the same flows are left out (a answered).
    assert len(records) == FLOWS
    assert {r["listener_site"] for r in records} == {"a"}
    assert all(r["role"] == "listener" for r in records)
    refused = flows(b, "--network", "--key", "dead")
    assert [r["listener_site"] for r in refused] == ["a"]
    c.kill()
    result = b.sitectl("flows", "--network", "--json")
    assert "no answer from site c" in result.stderr
    mine = json.loads(result.stdout)
    assert {r["listener_site"] for r in mine} == {"a"}  # a still answers
    text = b.sitectl("flows", "--network", "--limit", "1")
    assert len(text.stdout.splitlines()) == 1 and "site c" in text.stderr
