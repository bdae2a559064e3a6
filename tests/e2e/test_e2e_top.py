"""`sitectl top` with real routers: after flows ran through three sites, `--once` prints the
per-key table with the right keys, roles and serving sites; live, it redraws in place on
a terminal and leaves it as it found it, whether `q` or Ctrl-C ends it."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import termios
import time
from collections.abc import Iterator

import pytest

from tests.e2e.test_e2e_summary import Steady
from tests.support.services import EchoServer
from tests.support.sites import Site, free_port, link, site_env, start_sites, wait_for


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site, Site]]:
    """a - b - c; "api" served by b, "db" by c, both listened for on a."""
    work = tmp_path_factory.mktemp("top")
    env = site_env(work)
    sites = [Site(work, name, env).init() for name in "abc"]
    start_sites(*sites)
    echo = EchoServer()
    try:
        a, b, c = sites
        link(a, b, work)
        link(b, c, work)
        b.sitectl("connector", "create", "api", f"127.0.0.1:{echo.port}")
        c.sitectl("connector", "create", "db", f"127.0.0.1:{echo.port}")
        ports = {"api": free_port(), "db": free_port()}
        for key, port in ports.items():
            a.sitectl("listener", "create", key, str(port))
            wait_for(lambda key=key: a.key_reachable(key), what=f"{key} reachable from a")
        for port in ports.values():
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                    sock.sendall(b"ping")
                    assert sock.recv(10) == b"ping"
        a.ports = ports  # type: ignore[attr-defined]
        yield a, b, c
    finally:
        echo.close()
        for site in sites:
            site.stop()


ROW = re.compile(r"^(\S+) +(listener|connector) +(\S+) +([\d.]+) +(\d+) ", re.M)


def test_top_once_shows_each_key_with_its_serving_site(line: tuple[Site, Site, Site]) -> None:
    a, b, c = line
    client = Steady(a.ports["db"])  # type: ignore[attr-defined]
    client.start()
    try:
        wait_for(lambda: client.moved > 0, what="the db flow moving")
        text = a.sitectl("top", "--once", "--interval", "0.5").stdout
        data = json.loads(a.sitectl("top", "--once", "--json", "--interval", "0.5").stdout)
    finally:
        client.stop()
    rows = {(m[1], m[2], m[3]): (float(m[4]), int(m[5])) for m in ROW.finditer(text)}
    assert set(rows) == {("api", "listener", "b"), ("db", "listener", "c")}, text
    assert rows["db", "listener", "c"][1] == 1  # the steady flow, active
    assert rows["api", "listener", "b"][1] == 0
    assert "KEY" in text and "SERVED BY" in text and "TTFB P50" in text
    assert re.search(r"(?m)^in:b +<- b +up +[\d.]+ ms +[\d.]+ [KM]B/s ", text), text
    by_row = {(r["key"], r["role"], r["site"]): r for r in data["rows"]}
    assert set(by_row) == set(rows)
    db = by_row["db", "listener", "c"]
    assert db["flows"] == 4 and db["active"] == 1
    assert db["c2s_bytes_per_s"] > 0 and db["s2c_bytes_per_s"] > 0
    assert by_row["api", "listener", "b"]["flows"] == 3
    assert by_row["api", "listener", "b"]["error_share"] == 0.0
    [up] = [x for x in data["links"] if x["peer_site"] == "b"]
    assert up["state"] == "up" and up["out_bytes_per_s"] > 0
    # The serving sites count the same flows as connectors.
    on_c = json.loads(c.sitectl("top", "--once", "--json", "--interval", "0.2").stdout)
    assert {(r["key"], r["role"], r["site"]): r["flows"] for r in on_c["rows"]} == {
        ("db", "connector", "c"): 4}
    on_b = b.sitectl("top", "--once", "--interval", "0.2").stdout
    assert {(m[1], m[2], m[3]) for m in ROW.finditer(on_b)} == {("api", "connector", "b")}


def run_in_pty(site: Site, keys: bytes | None, sig: int | None) -> tuple[int, str, list[object],
                                                                          list[object]]:
    """`sitectl top` on a pseudo-terminal; after its first frame, type `keys` or send `sig`.
    Returns its exit code, its output, and the terminal's modes before and after."""
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([site.sitectl_bin, "--site-dir", str(site.dir), "top",
                             "--interval", "0.3"],
                            stdin=slave, stdout=slave, stderr=slave, env=site.env,
                            start_new_session=True)
    out = b""
    try:
        deadline = time.monotonic() + 30
        while b"SERVED BY" not in out or out.count(b"\x1b[H") < 3:  # a few redraws
            assert time.monotonic() < deadline, out
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                out += os.read(master, 65536)
        if keys is not None:
            os.write(master, keys)
        if sig is not None:
            proc.send_signal(sig)
        code = proc.wait(15)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child's side is closed
                break
            if not chunk:
                break
            out += chunk
        after = termios.tcgetattr(slave)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    return code, out.decode(errors="replace"), before, after


@pytest.mark.parametrize(("keys", "sig", "code"), [(b"q", None, 0), (None, signal.SIGINT, 0),
                                                   (None, signal.SIGTERM, 128 + 15)])
def test_top_redraws_in_place_and_restores_the_terminal(
        line: tuple[Site, Site, Site], keys: bytes | None, sig: int | None, code: int) -> None:
    a, _, _ = line
    exit_code, out, before, after = run_in_pty(a, keys, sig)
    assert exit_code == code, out
    assert out.startswith("\x1b[?1049h\x1b[?25l")  # alternate screen, no cursor
    assert out.rstrip("\r\n").endswith("\x1b[?25h\x1b[?1049l"), repr(out[-80:])
    assert after == before  # cbreak undone: echo and line editing as they were
    assert re.search(r"db +listener +c ", out), out
