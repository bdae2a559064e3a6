"""Two routers as subprocesses, driven only by sitectl: data through a listener."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Pair
from tests.support.services import EchoServer, HashServer, Server, transfer
from tests.support.sites import free_port, wait_for

MB = 1024 * 1024


def test_50mb_each_way_intact(pair: Pair) -> None:
    server = HashServer()
    key, port = pair.key("bulk"), free_port()
    pair.expose(key, server.port, port)
    result = transfer(port, 1, 50 * MB, 50 * MB)
    got = server.results[1]
    assert got.received_hash == result.sent_hash  # client -> server intact
    assert result.received_hash == got.sent_hash  # server -> client intact
    assert result.received == 50 * MB


def test_100_concurrent_flows_random_sizes(pair: Pair) -> None:
    server = HashServer()
    key, port = pair.key("many"), free_port()
    pair.expose(key, server.port, port)
    rng = random.Random(7)
    jobs = [(i, rng.randint(0, 2 * MB), rng.randint(0, 2 * MB)) for i in range(100, 200)]
    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(lambda j: (j, transfer(port, *j)), jobs))
    for (conn_id, _send, back), res in results:
        assert server.results[conn_id].received_hash == res.sent_hash, conn_id
        assert res.received_hash == server.results[conn_id].sent_hash, conn_id
        assert res.received == back
    wait_for(lambda: pair.east.state()["flows"]["active"] == 0, what="flows closed")


class HalfCloseServer(Server):
    """Reads until EOF, then answers: the reply proves it saw the client's FIN."""

    def handle(self, conn: socket.socket) -> None:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.sendall(b"got " + data)
        conn.shutdown(socket.SHUT_WR)


def test_half_close_travels_end_to_end(pair: Pair) -> None:
    server = HalfCloseServer()
    key, port = pair.key("half"), free_port()
    pair.expose(key, server.port, port)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply == b"got hello"  # answer after our FIN, then EOF


class StallServer(Server):
    """Accepts and never reads: the flow's far end is stalled."""

    def __init__(self) -> None:
        self.release = threading.Event()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        self.release.wait(120)


def test_stalled_flow_does_not_block_others_and_memory_stays_bounded(pair: Pair) -> None:
    stall, bulk = StallServer(), HashServer()
    stall_key, stall_port = pair.key("stall"), free_port()
    bulk_key, bulk_port = pair.key("bulk"), free_port()
    pair.expose(stall_key, stall.port, stall_port)
    pair.expose(bulk_key, bulk.port, bulk_port)
    rss_before = pair.east.rss_kib() + pair.west.rss_kib()

    pushed = [0]
    stalled = socket.create_connection(("127.0.0.1", stall_port), timeout=120)

    def push() -> None:
        chunk = b"\0" * MB
        try:
            while pushed[0] < 1024 * MB:
                stalled.sendall(chunk)
                pushed[0] += len(chunk)
        except OSError:
            pass

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    # Wait until the pipeline is full: the pusher makes no more progress.
    last = [-1]

    def stuck() -> bool:
        now, prev = pushed[0], last[0]
        last[0] = now
        return now == prev and now > 0

    wait_for(stuck, timeout=60, what="stalled flow to fill its windows")
    # Another flow on the same link still completes, intact.
    result = transfer(bulk_port, 5, 20 * MB, 20 * MB)
    assert bulk.results[5].received_hash == result.sent_hash
    assert result.received_hash == bulk.results[5].sent_hash
    growth_mib = (pair.east.rss_kib() + pair.west.rss_kib() - rss_before) / 1024
    assert pushed[0] < 1024 * MB, "a stalled reader must push back on the client"
    assert growth_mib < 40, f"routers grew by {growth_mib:.1f} MiB for a stalled flow"
    stall.release.set()
    stalled.close()
    pusher.join(30)


def _first_bytes(port: int) -> bytes:
    """What a client reads from a listener that closes it; a reset counts as nothing.

    The reset can even surface from connect(): with a timeout, Python connects without
    blocking and reads SO_ERROR afterwards, and a router that accepts and aborts at once
    under load gets its RST in before that read."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            return sock.recv(10)
    except ConnectionResetError:
        return b""


def test_connector_target_down_closes_client_promptly(pair: Pair) -> None:
    key, port = pair.key("down"), free_port()
    dead_port = free_port()  # nothing listens there
    pair.expose(key, dead_port, port)
    assert _first_bytes(port) == b""
    log = pair.east.log_tail(20)
    assert f"cannot reach '{key}'" in log and "Connection refused" in log, log


def test_no_connector_anywhere_closes_client(pair: Pair) -> None:
    key, port = pair.key("nobody"), free_port()
    pair.east.sitectl("listener", "create", key, str(port))
    assert _first_bytes(port) == b""
    assert "no reachable site has a connector" in pair.east.log_tail(10)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
def test_psql_reaches_postgresql_through_the_link(pair: Pair) -> None:
    key, port = pair.key("db"), free_port()
    pair.expose(key, 5432, port)
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "test",
         "-tAc", "select 6 * 7"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def test_echo_ping_pong(pair: Pair) -> None:
    server = EchoServer()
    key, port = pair.key("echo"), free_port()
    pair.expose(key, server.port, port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for i in range(200):
            msg = bytes([i % 256])
            sock.sendall(msg)
            assert sock.recv(1) == msg


def test_a_thousand_concurrent_connections(pair: Pair) -> None:
    """1000 clients connected at once through one link, each answered with its own
    bytes; every flow ends when its client closes."""
    server = EchoServer()
    key, port = pair.key("crowd"), free_port()
    pair.expose(key, server.port, port)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(1000)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"%d\n" % i)
        for i, sock in enumerate(socks):
            got = b""
            while not got.endswith(b"\n"):
                chunk = sock.recv(100)
                assert chunk, f"connection {i} closed early"
                got += chunk
            assert got == b"%d\n" % i
        assert pair.east.status()["flows"]["active"] >= 1000
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: pair.east.state()["flows"]["active"] == 0, what="all flows closed")
    wait_for(lambda: pair.west.state()["flows"]["active"] == 0, what="all flows closed")
