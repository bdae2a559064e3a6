"""A minimal RFC 6455 WebSocket over any trio stream, for tests: the handshake, framing
(masking, 16- and 64-bit lengths, fragments, ping/pong, close). The test backend's echo
endpoint (tests/support/httpd.py) and the tests' client both use it, so each side is
checked by the other and by the bytes' sha256, never by a library on both ends."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

import trio

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
MAX_MESSAGE = 64 * 1024 * 1024


class WsError(Exception):
    pass


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def frame(opcode: int, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _unmask(key, payload)


def _unmask(key: bytes, data: bytes) -> bytes:
    """XOR with the 4-byte key, fast enough for MBs (as one big integer)."""
    if not data:
        return data
    n = len(data)
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(n, "big")


class FrameReader:
    """Bytes in, (fin, opcode, payload) out; `masked`: the peer must mask (a server)."""

    def __init__(self, *, masked: bool) -> None:
        self.masked = masked
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bool, int, bytes]]:
        self.buf += data
        out: list[tuple[bool, int, bytes]] = []
        while True:
            if len(self.buf) < 2:
                return out
            b0, b1 = self.buf[0], self.buf[1]
            if bool(b1 & 0x80) != self.masked:
                raise WsError("masking is wrong for this direction")
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return out
                n, at = struct.unpack_from(">H", self.buf, 2)[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return out
                n, at = struct.unpack_from(">Q", self.buf, 2)[0], 10
            if n > MAX_MESSAGE:
                raise WsError(f"frame of {n} bytes")
            key = b""
            if self.masked:
                if len(self.buf) < at + 4:
                    return out
                key, at = bytes(self.buf[at:at + 4]), at + 4
            if len(self.buf) < at + n:
                return out
            payload = bytes(self.buf[at:at + n])
            del self.buf[:at + n]
            out.append((bool(b0 & 0x80), b0 & 0x0F, _unmask(key, payload) if key else payload))


class WebSocket:
    """One end of an open WebSocket: `client` ends mask what they send."""

    def __init__(self, stream: trio.abc.Stream, *, client: bool, leftover: bytes = b"") -> None:
        self.stream = stream
        self.client = client
        self.reader = FrameReader(masked=not client)
        self.frames: list[tuple[bool, int, bytes]] = self.reader.feed(leftover)
        self.closed_by_peer: int | None = None

    async def send(self, data: bytes, *, opcode: int = BINARY, fragment: int = 0) -> None:
        """One message; `fragment`: split it into frames of that many bytes."""
        size = fragment or max(len(data), 1)
        pieces = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        out = b"".join(frame(opcode if i == 0 else CONT, p, mask=self.client,
                             fin=i == len(pieces) - 1) for i, p in enumerate(pieces))
        await self.stream.send_all(out)

    async def _frame(self) -> tuple[bool, int, bytes]:
        while not self.frames:
            data = await self.stream.receive_some(256 * 1024)
            if not data:
                raise WsError("the connection closed without a close frame")
            self.frames = self.reader.feed(bytes(data))
        return self.frames.pop(0)

    async def receive(self) -> tuple[int, bytes] | None:
        """The next message (opcode, data), answering pings; None after a close frame
        (answered)."""
        parts: list[bytes] = []
        opcode = None
        while True:
            fin, op, payload = await self._frame()
            if op == PING:
                await self.stream.send_all(frame(PONG, payload, mask=self.client))
                continue
            if op == PONG:
                continue
            if op == CLOSE:
                self.closed_by_peer = struct.unpack(">H", payload[:2])[0] if payload else 1005
                await self.stream.send_all(frame(CLOSE, payload[:2], mask=self.client))
                return None
            if opcode is None:
                if op == CONT:
                    raise WsError("a continuation frame first")
                opcode = op
            elif op != CONT:
                raise WsError("a new message inside a fragmented one")
            parts.append(payload)
            if fin:
                return opcode, b"".join(parts)

    async def close(self, code: int = 1000) -> int | None:
        """Send a close frame and read to the peer's; its code."""
        await self.stream.send_all(frame(CLOSE, struct.pack(">H", code), mask=self.client))
        while True:
            _, op, payload = await self._frame()
            if op == CLOSE:
                return struct.unpack(">H", payload[:2])[0] if payload else 1005


async def read_head(stream: trio.abc.Stream, limit: int = 64 * 1024) -> tuple[bytes, bytes]:
    """An HTTP/1.1 response head (through its blank line) and the bytes after it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise WsError(f"closed before a head: {buf[:200]!r}")
        buf += data
        if len(buf) > limit:
            raise WsError("head too long")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def connect(stream: trio.abc.Stream, path: str, *, host: str = "x",
                  extra: bytes = b"") -> tuple[WebSocket | None, bytes, bytes]:
    """Send the opening handshake on `stream`: (the WebSocket if the answer was a valid
    101, the response head, the bytes after it)."""
    key = base64.b64encode(os.urandom(16))
    await stream.send_all(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n".encode()
        + b"Sec-WebSocket-Key: " + key + b"\r\n" + extra + b"\r\n")
    head, rest = await read_head(stream)
    if status_of(head) != 101:
        return None, head, rest
    if header(head, b"sec-websocket-accept") != accept_key(key):
        raise WsError(f"bad Sec-WebSocket-Accept in {head!r}")
    if (header(head, b"upgrade") or b"").lower() != b"websocket":
        raise WsError(f"no Upgrade: websocket in {head!r}")
    return WebSocket(stream, client=True, leftover=rest), head, rest
