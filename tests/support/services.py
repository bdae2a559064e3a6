"""Small real TCP services for end-to-end tests (threads: simple and independent of
the routers' event loop)."""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import threading
from dataclasses import dataclass

HEADER = struct.Struct(">QQ")  # connection id, bytes the server must send back
CHUNK = 256 * 1024


def pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _send_pattern(sock: socket.socket, seed: int, total: int) -> str:
    digest = hashlib.sha256()
    rng = random.Random(seed)
    left = total
    while left:
        chunk = rng.randbytes(min(CHUNK, left))
        sock.sendall(chunk)
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _recv_all(sock: socket.socket) -> tuple[str, int]:
    digest = hashlib.sha256()
    n = 0
    while data := sock.recv(CHUNK):
        digest.update(data)
        n += len(data)
    return digest.hexdigest(), n


@dataclass
class Transfer:
    sent_hash: str
    received_hash: str
    received: int


class Server:
    """Accepts on 127.0.0.1:port and runs `handle` per connection in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port: int = self.sock.getsockname()[1]
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            with conn:
                self.handle(conn)
        except OSError as exc:
            self.errors.append(exc)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class HashServer(Server):
    """Reads a header, then at once sends N pattern bytes back while hashing all it
    receives; records (received hash, received bytes, sent hash) by connection id."""

    def __init__(self) -> None:
        self.results: dict[int, Transfer] = {}
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        header = b""
        while len(header) < HEADER.size:
            more = conn.recv(HEADER.size - len(header))
            if not more:
                return
            header += more
        conn_id, back = HEADER.unpack(header)
        sent: list[str] = []
        sender = threading.Thread(target=lambda: sent.append(
            _send_pattern(conn, conn_id + 1_000_000, back)))
        sender.start()
        received_hash, n = _recv_all(conn)
        sender.join()
        self.results[conn_id] = Transfer(sent[0] if sent else "", received_hash, n)
        conn.shutdown(socket.SHUT_WR)


class EchoServer(Server):
    def handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(CHUNK):
            conn.sendall(data)


def transfer(port: int, conn_id: int, send: int, back: int, timeout: float = 60) -> Transfer:
    """Client side of HashServer: send `send` pattern bytes, receive `back` bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(HEADER.pack(conn_id, back))
        result: list[str] = []
        failed: list[OSError] = []

        def sender() -> None:
            digest = hashlib.sha256()
            rng = random.Random(conn_id)
            left = send
            try:
                while left:
                    chunk = rng.randbytes(min(CHUNK, left))
                    sock.sendall(chunk)
                    digest.update(chunk)
                    left -= len(chunk)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                failed.append(exc)
                return
            result.append(digest.hexdigest())

        thread = threading.Thread(target=sender)
        thread.start()
        try:
            received_hash, n = _recv_all(sock)
        finally:
            thread.join()
        if failed:
            raise failed[0]
    return Transfer(result[0], received_hash, n)


class PacedFlow:
    """A client of `port` that sends 32 KiB every 50 ms until stopped, hashing what it
    sends and what comes back (the target echoes); `ended` is set when its read side
    ends (at the echo's end, or early when the flow is reset)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sent, self.got = hashlib.sha256(), hashlib.sha256()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.ended = threading.Event()
        self._writer = threading.Thread(target=self._write)
        self._reader = threading.Thread(target=self._read)
        self._writer.start()
        self._reader.start()

    def _write(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                chunk = hashlib.sha256(i.to_bytes(8, "big")).digest() * 1024
                self.sock.sendall(chunk)
                self.sent.update(chunk)
                i += 1
                self.stop.wait(0.05)  # pacing, so that the flow spans what is tested
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.errors.append(exc)

    def _read(self) -> None:
        try:
            while data := self.sock.recv(65536):
                self.got.update(data)
        except OSError as exc:
            self.errors.append(exc)
        finally:
            self.ended.set()

    def finish(self) -> None:
        self.stop.set()
        self._writer.join()
        self._reader.join()
        self.sock.close()
