"""Small helpers for the local TCP sockets every port and adaptor handles."""

from __future__ import annotations

import contextlib
import socket
import struct

import trio

# Below glibc's 128 KiB mmap threshold: socket.recv(n) allocates n bytes up front, even
# when it then finds nothing to read, and above the threshold every call costs an
# mmap/munmap pair (measured: 14 us vs 1.3 us per call).
READ_CHUNK = 124 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)


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
