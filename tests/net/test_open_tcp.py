"""open_tcp: an IP address is connected to directly (one socket, no resolver, no extra
task); a name goes through trio's resolver; either way a refusal says only why."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest
import trio

from router.net.errors import connect_reason
from router.net.sockets import open_tcp


def closed_port(family: socket.AddressFamily, host: str) -> int:
    with socket.socket(family) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"),
                                              (socket.AF_INET6, "::1"),
                                              (socket.AF_INET, "localhost")])
async def test_connects_and_carries_bytes(family: socket.AddressFamily, host: str) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    listener = trio.socket.socket(family)
    await listener.bind(("127.0.0.1" if host == "localhost" else host, 0))
    listener.listen()
    port = listener.getsockname()[1]
    with listener:
        stream = await open_tcp(host, port)
        server, _ = await listener.accept()
        with server:
            await stream.send_all(b"ping")
            assert await server.recv(4) == b"ping"
            assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await stream.aclose()


async def test_a_refusal_says_only_why() -> None:
    port = closed_port(socket.AF_INET, "127.0.0.1")
    with pytest.raises(OSError) as info:
        await open_tcp("127.0.0.1", port)
    assert connect_reason(info.value) == "Connection refused"


async def test_cancelled_while_connecting_leaks_no_socket() -> None:
    # 192.0.2.1 (TEST-NET-1) is never routed to anyone: the connect waits until cancelled
    # (or fails at once where there is no route at all).
    before = len(os.listdir("/proc/self/fd"))
    with trio.move_on_after(0.2), contextlib.suppress(OSError):
        await open_tcp("192.0.2.1", 9)
    assert len(os.listdir("/proc/self/fd")) == before
