"""Resource exhaustion degrades, never kills: a router out of descriptors keeps its
pid and its control socket and serves again when clients leave; silent and stalled
connections to the link port do not keep a real link out or eat memory."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.site.directory import Site as RouterSite
from tests.support.services import HashServer, transfer
from tests.support.sites import Site, free_port, link, site_env, start_sites, wait_for

MB = 1024 * 1024
FD_LIMIT = 128
IDLE_CLIENTS = 300
RSS_GROWTH_LIMIT_MB = 40


def _connect_all(port: int, n: int) -> list[socket.socket]:
    """`n` connections that never send (the kernel completes them from the backlog)."""
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]


def _closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(0)
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def _backlog(port: int) -> int | None:
    """Connections waiting in the accept queue of the listener on `port` (the Recv-Q
    that `ss -lt` shows), from /proc/net/tcp{,6}."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return int(fields[4].split(":")[1], 16)
    return None


def _count(site: Site, text: str) -> int:
    return sum(text in line for line in site.log_path.read_text().splitlines())


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path, "solo", site_env(tmp_path)).init()
    yield site
    site.stop()


def test_out_of_descriptors_the_router_degrades_and_recovers(solo: Site) -> None:
    server = HashServer()
    solo.start(rlimit_nofile=FD_LIMIT)
    pid, listen_port = solo.pid, free_port()
    solo.sitectl("connector", "create", "db", f"127.0.0.1:{server.port}")
    solo.sitectl("listener", "create", "db", str(listen_port))
    wait_for(lambda: solo.key_reachable("db"), what="key db reachable")
    fds_before, rss_before = solo.open_fds(), solo.rss_kib()

    idle = _connect_all(listen_port, IDLE_CLIENTS)
    try:
        wait_for(lambda: _count(solo, "accept failed"), what="the router at its fd limit")
        assert solo.open_fds() >= FD_LIMIT - 4
        # Those it cannot serve are closed at once, not left hanging in the backlog.
        wait_for(lambda: sum(map(_closed_by_peer, idle)) >= IDLE_CLIENTS - FD_LIMIT,
                 what="clients past the limit closed")
        result = solo.sitectl("status", check=False, timeout=60)
        # Either the spare descriptor or a freed one served it, or it was shed at once.
        assert result.returncode in (0, 1), result
        assert "Traceback" not in result.stderr
        if result.returncode:
            assert len(result.stderr.splitlines()) == 1, result.stderr
            assert result.stderr.startswith("sitectl: the router of site solo "), result.stderr
        assert solo.proc is not None and solo.proc.poll() is None, solo.log_tail()
    finally:
        _close_all(idle)

    wait_for(lambda: solo.open_fds() <= fds_before + 2, what="descriptors given back")
    assert solo.status()["site"] == "solo"
    sent = transfer(listen_port, 1, 4 * MB, 4 * MB)
    assert server.results[1].received_hash == sent.sent_hash
    assert sent.received_hash == server.results[1].sent_hash
    assert solo.pid == pid and solo.proc.poll() is None
    assert (solo.rss_kib() - rss_before) / 1024 < RSS_GROWTH_LIMIT_MB, (rss_before, solo.rss_kib())
    assert int(RouterSite(solo.dir).pid_path.read_text()) == pid
    # One line per accept loop per 10 s, however many accepts failed.
    assert 1 <= _count(solo, "accept failed") <= 6, solo.log_tail()
    # Clients turned away for want of descriptors: one line per key per 10 s, not one each.
    assert _count(solo, "closing client") <= 6, solo.log_tail()
    assert "Traceback" not in solo.log_path.read_text()
    server.close()


# A TLS record header announcing a ClientHello, and part of one: then nothing.
PARTIAL_HELLO = bytes.fromhex("16030100c8") + b"\x01\x00\x00\xc4\x03\x03" + bytes(20)
STALLED = 6  # under the per-source share: the real peer comes from 127.0.0.1 too


def test_silent_and_stalled_link_connections_do_not_keep_a_link_out(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    west = Site(tmp_path, "west", env).init()
    east = Site(tmp_path, "east", env).init()
    start_sites(west, east)
    try:
        rss_before, fds_before = west.rss_kib(), west.open_fds()
        silent = _connect_all(west.link_port, 300)
        stalled = _connect_all(west.link_port, STALLED)
        for s in stalled:
            s.sendall(PARTIAL_HELLO)
        try:
            wait_for(lambda: _backlog(west.link_port) == 0, what="connections accepted")
            rss_held = west.rss_kib()
            started = time.monotonic()
            link(west, east, tmp_path)  # redeems a token, then links: both on the link port
            wait_for(lambda: east.link_up("west"), timeout=15, what="link up")
            assert time.monotonic() - started < 15
            rss_held = max(rss_held, west.rss_kib())
            for s in silent:  # the first-byte deadline closed every one of them
                s.settimeout(10)
                assert s.recv(1) == b""
        finally:
            _close_all(silent + stalled)
        assert (rss_held - rss_before) / 1024 < RSS_GROWTH_LIMIT_MB, (rss_before, rss_held)
        wait_for(lambda: west.open_fds() <= fds_before + 2, what="descriptors given back")
        assert west.proc is not None and west.proc.poll() is None
        assert 1 <= _count(west, "nothing sent in") <= 3, west.log_tail()
        assert _count(west, "refused link attempt") <= 3, west.log_tail()
    finally:
        east.stop()
        west.stop()


@pytest.mark.parametrize("reset", [False, True])
def test_sitectl_says_in_one_line_that_the_router_hung_up(solo: Site, reset: bool) -> None:
    """What a router out of descriptors does to a control request (accept and close at
    once), played by a fake control socket: sitectl prints one line, exit 1."""
    path = RouterSite(solo.dir).control_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(1)

        def hang_up() -> None:
            conn, _ = server.accept()
            if reset:
                conn.recv(1)  # unread request bytes make the close a reset
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

        thread = threading.Thread(target=hang_up)
        thread.start()
        result = solo.sitectl("status", check=False)
        thread.join(10)
    assert result.returncode == 1, result
    assert result.stderr == ("sitectl: the router of site solo closed the control connection "
                             "without answering (it may be out of file descriptors)\n")
