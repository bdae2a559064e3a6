"""Clients for scale tests: many connections each proven served by one echo round trip,
opened in batches with one selector (not a thread or a wait per connection), and a
sequenced message ping-pong over one connection that checks every reply."""

from __future__ import annotations

import errno
import random
import resource
import selectors
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

HOST = "127.0.0.1"


@contextmanager
def fd_limit_raised() -> Iterator[int]:
    """This process's soft open-files limit at the hard limit while inside; the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class FlowError(AssertionError):
    """A connection was not served as expected; the message says which and how."""


@dataclass
class _Pending:
    index: int
    sock: socket.socket
    want: bytes
    got: bytearray = field(default_factory=bytearray)
    sent: bool = False


def _hello(index: int) -> bytes:
    return f"flow {index:06d}\n".encode()


def _open_batch(port: int, first: int, count: int, deadline: float) -> list[socket.socket]:
    """`count` connections to `port`, each sent a line naming it and answered with the
    same line, all in flight together."""
    sel = selectors.DefaultSelector()
    pending: dict[int, _Pending] = {}
    done: list[socket.socket] = []
    try:
        for index in range(first, first + count):
            s = socket.socket()
            s.setblocking(False)
            pending[s.fileno()] = _Pending(index, s, _hello(index))
            code = s.connect_ex((HOST, port))
            if code not in (0, errno.EINPROGRESS):
                raise FlowError(f"flow {index}: connect: {errno.errorcode.get(code, code)}")
            sel.register(s, selectors.EVENT_WRITE, pending[s.fileno()])
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FlowError(f"{len(pending)} of {count} flows from {first} not answered "
                                f"in time (e.g. flow {next(iter(pending.values())).index})")
            for key, _ in sel.select(min(left, 1.0)):
                p: _Pending = key.data
                if _step(p, sel):
                    sel.unregister(p.sock)
                    del pending[p.sock.fileno()]
                    p.sock.setblocking(True)
                    done.append(p.sock)
    except BaseException:
        for p in pending.values():
            p.sock.close()
        for s in done:
            s.close()
        raise
    finally:
        sel.close()
    return done


def _step(p: _Pending, sel: selectors.BaseSelector) -> bool:
    """One readiness event of a pending connection; True once its echo came back whole."""
    if not p.sent:
        code = p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise FlowError(f"flow {p.index}: connect: {errno.errorcode.get(code, code)}")
        p.sock.send(p.want)  # a few bytes on a fresh socket: all taken
        p.sent = True
        sel.modify(p.sock, selectors.EVENT_READ, p)
        return False
    try:
        data = p.sock.recv(len(p.want) - len(p.got))
    except OSError as exc:
        raise FlowError(f"flow {p.index}: {exc!r} before its echo") from exc
    if not data:
        raise FlowError(f"flow {p.index}: closed after {bytes(p.got)!r} of its echo")
    p.got += data
    if not p.want.startswith(p.got):
        raise FlowError(f"flow {p.index}: echo {bytes(p.got)!r}, sent {p.want!r}")
    return len(p.got) == len(p.want)


def open_echo_flows(port: int, n: int, batch: int = 500,
                    timeout: float = 120.0) -> list[socket.socket]:
    """`n` connections through `port` to an echo server, each proven served by one
    round trip and then left idle (blocking sockets), opened `batch` at a time."""
    deadline = time.monotonic() + timeout
    socks: list[socket.socket] = []
    try:
        for first in range(0, n, batch):
            socks += _open_batch(port, first, min(batch, n - first), deadline)
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def still_open(s: socket.socket) -> bool:
    """Nothing came and the peer has not closed: an idle flow is still held."""
    s.setblocking(False)
    try:
        s.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)
    return False


# --- a sequenced ping-pong -----------------------------------------------------------

_HEADER = struct.Struct(">IH")  # sequence number, payload length
MAX_PAYLOAD = 65535


def message_sizes(n: int, seed: int) -> list[int]:
    """Mostly small (a database's requests and answers), some medium, a few large
    enough to span several link frames' worth of a socket read."""
    rng = random.Random(seed)
    sizes = []
    for _ in range(n):
        r = rng.random()
        if r < 0.7:
            sizes.append(rng.randint(0, 64))
        elif r < 0.99:
            sizes.append(rng.randint(65, 2048))
        else:
            sizes.append(rng.randint(2049, MAX_PAYLOAD))
    return sizes


def message(seq: int, size: int) -> bytes:
    """Sequence number, length, and a payload that differs per message."""
    body = (seq.to_bytes(4, "big") * (size // 4 + 1))[:size]
    return _HEADER.pack(seq, size) + body


@dataclass
class PingPong:
    """Messages sent in rounds over one connection; after each round, every reply is
    read back and compared with what was sent, in order."""

    sock: socket.socket
    checked: int = 0
    _buf: bytearray = field(default_factory=bytearray)

    def round(self, msgs: list[bytes]) -> None:
        self.sock.sendall(b"".join(msgs))
        for sent in msgs:
            got = self._read(len(sent))
            if got != sent:
                seq, size = _HEADER.unpack_from(sent)
                want_seq, got_seq = seq, _HEADER.unpack_from(got)[0]
                raise FlowError(f"reply {self.checked}: sequence {got_seq} (length "
                                f"{len(got)}) where {want_seq} of length {size} was sent")
            self.checked += 1

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = self.sock.recv(256 * 1024)
            if not data:
                raise FlowError(f"closed after {self.checked} replies")
            self._buf += data
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out
