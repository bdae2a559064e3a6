"""A reset stays a reset on the same-site path (listener and connector on one router):
a cut-off transfer must never look complete. Normal ends and half-closes still work."""

from __future__ import annotations

import itertools
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import HashServer, Server, transfer
from tests.support.sites import Site, free_port, site_env, wait_for

MB = 1024 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)
_ids = itertools.count(1)


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return data


class SendThenResetServer(Server):
    """Sends 1 MiB, waits for the client's byte saying it has it all, then resets."""

    def handle(self, conn: socket.socket) -> None:
        conn.sendall(b"x" * MB)
        conn.recv(1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


class RecordingServer(Server):
    """Reads until the end and records how it ended: b"" (clean) or the error."""

    def __init__(self) -> None:
        self.received = 0
        self.got_data = threading.Event()
        self.ended: list[object] = []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                self.received += len(data)
                self.got_data.set()
            self.ended.append(b"")
        except OSError as exc:
            self.ended.append(exc)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("resets")
    s = Site(tmp, "west", site_env(tmp)).init().start()
    yield s
    s.stop()


def expose_locally(site: Site, backend_port: int) -> int:
    key, port = f"local-{next(_ids)}", free_port()
    site.sitectl("connector", "create", key, f"127.0.0.1:{backend_port}")
    site.sitectl("listener", "create", key, str(port))
    wait_for(lambda: site.key_reachable(key), what=f"key {key} reachable")
    return port


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_backend_reset_reaches_the_client_as_a_reset(site: Site) -> None:
    server = SendThenResetServer()
    port = expose_locally(site, server.port)
    baseline = fd_count(site.pid)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert recv_exactly(client, MB) == b"x" * MB
        client.sendall(b"!")  # the backend resets once it sees this
        with pytest.raises(ConnectionResetError):
            while client.recv(65536):  # a clean EOF here would make the transfer look whole
                pass
    wait_for(lambda: fd_count(site.pid) <= baseline, what="router fds back to baseline")


def test_client_reset_reaches_the_backend_as_a_reset(site: Site) -> None:
    server = RecordingServer()
    port = expose_locally(site, server.port)
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(b"y" * 1000)
    assert server.got_data.wait(10)
    reset(client)
    wait_for(lambda: server.ended, what="the backend's connection ended")
    assert isinstance(server.ended[0], ConnectionResetError), server.ended


def test_normal_transfer_and_half_close_still_end_cleanly(site: Site) -> None:
    server = HashServer()
    port = expose_locally(site, server.port)
    baseline = fd_count(site.pid)
    # The client half-closes after 3 MiB and goes on reading 5 MiB back.
    result = transfer(port, 7, 3 * MB, 5 * MB)
    assert server.results[7].received_hash == result.sent_hash
    assert server.results[7].received == 3 * MB
    assert result.received_hash == server.results[7].sent_hash and result.received == 5 * MB
    wait_for(lambda: fd_count(site.pid) <= baseline, what="router fds back to baseline")


def test_reset_on_a_cross_site_path_is_unchanged(tmp_path: Path) -> None:
    """The same backend through two sites: the client sees a reset there too."""
    from tests.conftest import Pair

    pair = Pair(tmp_path)
    try:
        server = SendThenResetServer()
        key, port = pair.key("xsite-reset"), free_port()
        pair.expose(key, server.port, port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert recv_exactly(client, MB) == b"x" * MB
            client.sendall(b"!")
            with pytest.raises(ConnectionResetError):
                while client.recv(65536):
                    pass
    finally:
        pair.stop()
