"""What h2 leaves unbounded in what an HTTP/2 client sends, checked on each frame's
header before h2 reads the frame (pure: bytes and `now` in, a refusal out).

h2 takes a frame's length on trust until the whole frame arrived (a header saying 16 MiB
on a 16 KiB connection is buffered whole, then refused), and gathers a header block
from up to 64 frames of any allowed size before it decodes it (CVE-2024-27316 class:
64 CONTINUATIONs of the largest frame). Both are refused here as the frame's header
arrives, so h2 never buffers more than one frame, nor a header block past the bound.
Frames that carry no request (SETTINGS, PING, PRIORITY, WINDOW_UPDATE, empty DATA,
unknown types: CVE-2019-9512/9515/9518, cost h2 and the router work while costing the
client 9 bytes each) are paid from a budget.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from h2.errors import ErrorCodes

from router.adaptors.http.limits import HttpLimits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_BYTES = 9
SETTING_BYTES = 6  # one setting in a SETTINGS frame
# A header list is at most http_max_head_bytes (name, value and 32 a field), and HPACK's
# Huffman code spends at most 30 bits on an octet (h2's own encoder, httpx's, always
# uses it; for `\\` 19 bits), so a block over 4x that cannot decode within the limit:
# one that long is refused without being read, and none within it ever is.
HPACK_MAX_EXPANSION = 4
# An honest client acknowledges what it receives: at most one WINDOW_UPDATE for its
# stream and one for the connection a DATA frame (h2load with 1 KiB windows sends 1.1,
# nghttp 0.6, grpcio 1.0 on unary calls), and grpc's BDP pings as data arrives.
EARNED_PER_FRAME_SENT = 2


class FrameType(enum.IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Flag(enum.IntFlag):
    END_STREAM = 0x1  # DATA, HEADERS
    ACK = 0x1  # SETTINGS, PING
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20  # HEADERS


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """The connection ends with GOAWAY `code`; `at`: how many of the bytes just fed
    came before the refused frame (h2 may read those)."""

    code: ErrorCodes
    reason: bytes
    at: int


class FrameGuard:
    """Fed every byte the client sends, in order, from its preface on."""

    def __init__(self, limits: HttpLimits, now: float) -> None:
        self._max_frame = limits.http2_max_frame_bytes
        self._max_block = HPACK_MAX_EXPANSION * limits.http_max_head_bytes
        self._burst = float(limits.http2_control_frame_burst)
        self._per_s = limits.http2_control_frames_per_s
        self._tokens = self._burst
        self._tokens_at = now
        self._skip = len(PREFACE)  # bytes to pass over: the preface, then payloads
        self._head = bytearray()  # a frame header read in part (and a pad length)
        self._block: int | None = None  # bytes of the header block open, if one is

    def feed(self, data: bytes, now: float) -> Refused | None:
        pos = start = 0  # `start`: where the frame being read began in `data`
        while pos < len(data):
            if self._skip:
                n = min(self._skip, len(data) - pos)
                pos += n
                self._skip -= n
                continue
            if not self._head:
                start = pos
            need = self._header_size() - len(self._head)
            self._head += data[pos:pos + need]
            pos += min(need, len(data) - pos)
            if len(self._head) < self._header_size():
                continue  # the rest comes with the next read
            head = bytes(self._head)
            self._head.clear()
            length = int.from_bytes(head[:3], "big")
            self._skip = length - (len(head) - FRAME_HEADER_BYTES)
            why = self._check(head[3], Flag(head[4]), length, head[9:], now)
            if why is not None:
                code, reason = why
                return Refused(code=code, reason=reason, at=start)
        return None

    def earn(self, frames_sent: int) -> None:
        """`frames_sent` frames of responses went to the client."""
        self._tokens = min(self._burst, self._tokens + EARNED_PER_FRAME_SENT * frames_sent)

    def _header_size(self) -> int:
        """9 bytes, and the pad length of a padded DATA or HEADERS frame, which says
        how much of it is data or header block."""
        if len(self._head) < FRAME_HEADER_BYTES:
            return FRAME_HEADER_BYTES
        kind, flags, length = self._head[3], self._head[4], int.from_bytes(self._head[:3], "big")
        padded = (flags & Flag.PADDED and length > 0
                  and kind in (FrameType.DATA, FrameType.HEADERS))
        return FRAME_HEADER_BYTES + 1 if padded else FRAME_HEADER_BYTES

    def _check(self, kind: int, flags: Flag, length: int, pad: bytes,
               now: float) -> tuple[ErrorCodes, bytes] | None:
        if length > self._max_frame:
            return ErrorCodes.FRAME_SIZE_ERROR, b"frame larger than SETTINGS_MAX_FRAME_SIZE"
        # What the frame carries past its padding (and a HEADERS' priority fields).
        carried = length - (1 + pad[0] if pad else 0)
        if kind == FrameType.HEADERS:
            carried -= 5 if flags & Flag.PRIORITY else 0
            self._block = max(carried, 0)
        elif kind == FrameType.CONTINUATION and self._block is not None:
            self._block += length
        elif kind == FrameType.PUSH_PROMISE:
            return ErrorCodes.PROTOCOL_ERROR, b"a client cannot push"
        else:
            self._block = None  # h2 refuses a header block cut by another frame
        if self._block is not None:
            if self._block > self._max_block:
                return ErrorCodes.ENHANCE_YOUR_CALM, b"header block too large"
            if flags & Flag.END_HEADERS:
                self._block = None
        cost = _cost(kind, flags, length, carried)
        if cost and not self._spend(cost, now):
            return ErrorCodes.ENHANCE_YOUR_CALM, b"too many control frames"
        return None

    def _spend(self, cost: int, now: float) -> bool:
        refill = (now - self._tokens_at) * self._per_s
        self._tokens = min(self._burst, self._tokens + refill) - cost
        self._tokens_at = now
        return self._tokens >= 0


def _cost(kind: int, flags: Flag, length: int, carried: int) -> int:
    """What a frame costs the control budget: nothing if it carries a request's part."""
    if kind == FrameType.DATA:
        return 0 if carried > 0 or flags & Flag.END_STREAM else 1
    if kind == FrameType.SETTINGS:  # h2 handles each setting, and keeps unknown ones
        return 1 if flags & Flag.ACK else max(1, length // SETTING_BYTES)
    if kind in (FrameType.PRIORITY, FrameType.PING, FrameType.WINDOW_UPDATE):
        return 1
    return 0 if kind in _KNOWN else 1  # h2 ignores unknown types, after parsing them


_KNOWN = frozenset(t.value for t in FrameType)
