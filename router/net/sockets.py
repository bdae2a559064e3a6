"""Small helpers for the local TCP sockets every port and adaptor handles."""

from __future__ import annotations

import contextlib
import os
import socket
import struct

import trio

# Below glibc's 128 KiB mmap threshold: socket.recv(n) allocates n bytes up front, even
# when it then finds nothing to read, and above the threshold every call costs an
# mmap/munmap pair (measured: 14 us vs 1.3 us per call).
READ_CHUNK = 124 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)


async def open_tcp(host: str, port: int) -> trio.SocketStream:
    """`trio.open_tcp_stream(host, port)`, without its resolver call and its happy-eyeballs
    nursery and task when `host` is an IP address (a connector's usual target): one
    socket, one connect. That is most of what connecting cost a flow's serving router."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:  # a name (or a scoped IPv6 address): resolve, try each address
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno is None:
            raise
        # As open_tcp_stream's attempts say it: "Connection refused", not trio's
        # "Error connecting to ('127.0.0.1', 1): Connection refused".
        raise OSError(exc.errno, os.strerror(exc.errno)) from None
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def peer_name(stream: trio.abc.Stream) -> str:
    """host:port of the other end, for logs and OPEN messages ("?" if not a socket)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return "?"
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def abort_socket(stream: trio.abc.Stream) -> None:
    """Make the next close send RST: the client must see a reset, not a clean EOF."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


# trio's socket calls yield to the scheduler around every call that succeeds (a
# checkpoint sandwich): a round trip through the run loop for each read and write of a
# request. These two go straight to the fd when it is ready, as the TCP pump does.
async def send_all(stream: trio.abc.Stream, data: bytes | bytearray | memoryview) -> None:
    """`stream.send_all(data)`, trying one plain write first for a socket stream. The
    caller must not send from two tasks at once (trio would catch that; this may not)."""
    sock = getattr(stream, "socket", None)
    if sock is not None and data:
        try:
            n = os.write(sock.fileno(), data)
        except OSError:  # would block, or broken: send_all finds out which
            n = 0
        if n == len(data):
            return
        data = memoryview(data)[n:]
    await stream.send_all(data)


def receive_nowait(stream: trio.abc.Stream, max_bytes: int) -> bytes | None:
    """What a socket stream has to read now (b"" at EOF); None if nothing yet, or not a
    socket stream, or an error (a later `receive_some` reports it)."""
    sock = getattr(stream, "socket", None)
    if sock is None or sock.fileno() < 0:
        return None
    try:
        return os.read(sock.fileno(), max_bytes)
    except OSError:
        return None


async def receive_some(stream: trio.abc.Stream, max_bytes: int) -> bytes:
    """`stream.receive_some(max_bytes)`: for a socket stream, one plain read, and a wait
    only when nothing is there yet (the next request of a keep-alive client usually
    is: no epoll change then); b"" at EOF."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return bytes(await stream.receive_some(max_bytes))
    fd = sock.fileno()
    if fd < 0:
        raise trio.ClosedResourceError("the stream was closed")
    while True:
        try:
            data = os.read(fd, max_bytes)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"connection lost: {exc}") from exc
        if len(data) == max_bytes:
            # A full buffer: more is likely waiting. Let other tasks have their turn, so
            # a client that keeps the socket full cannot keep its reader from yielding
            # (shielded: a cancellation now would lose what was read).
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data
