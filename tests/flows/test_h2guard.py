"""h2guard alone: bytes in, a refusal out, the same however the bytes are cut."""

from __future__ import annotations

import itertools

import pytest
from h2.errors import ErrorCodes
from hypothesis import given, settings
from hypothesis import strategies as st

from router.adaptors.http.h2guard import PREFACE, FrameGuard, Refused
from router.adaptors.http.limits import HttpLimits

LIMITS = HttpLimits(http_max_head_bytes=1024, http2_control_frame_burst=10,
                    http2_control_frames_per_s=1.0)  # a header block of 4096 at most


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags])
            + sid.to_bytes(4, "big") + payload)


def padded(kind: int, flags: int, data: bytes, pad: int) -> bytes:
    return frame(kind, flags | 0x8, 1, bytes([pad]) + data + b"\0" * pad)


def feed(data: bytes, cuts: list[int], now: float = 0.0) -> tuple[Refused, int] | None:
    """The refusal and where in `data` it falls, fed in the pieces `cuts` makes."""
    guard = FrameGuard(LIMITS, 0.0)
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for lo, hi in itertools.pairwise(bounds):
        refused = guard.feed(data[lo:hi], now)
        if refused is not None:
            return refused, lo + refused.at
    return None


HEADERS, CONTINUATION = 0x1, 0x9
# Honest: within the bound once padding and priority fields are taken off.
HONEST = [
    frame(HEADERS, 0x4, 1, b"h" * 4096),
    frame(HEADERS, 0, 1, b"h" * 2000) + frame(CONTINUATION, 0x4, 1, b"c" * 2096),
    padded(HEADERS, 0x4 | 0x20, b"p" * 5 + b"h" * 4096, 255),
    frame(0x0, 0, 1, b"d" * 100) * 50 + padded(0x0, 0, b"d", 200) * 50,  # DATA is free
    frame(0x0, 0x1, 1) * 50,  # ...and so is an empty one that ends its stream
    frame(0x3, 0, 1, b"\0\0\0\x08") * 50,  # RST_STREAM: a budget of its own
    frame(0x6, 0, 0, b"p" * 8) * 9 + frame(0x4, 0, 0, b"\0\3\0\0\0\1"),  # 10: the burst
]
# (frames before, the refused frame, code, reason)
HOSTILE = [
    (frame(HEADERS, 0, 1, b"h" * 2000) + frame(CONTINUATION, 0, 1, b"c" * 2000),
     frame(CONTINUATION, 0x4, 1, b"c" * 97), ErrorCodes.ENHANCE_YOUR_CALM,
     b"header block too large"),
    (b"", frame(HEADERS, 0x4, 1, b"h" * 4097), ErrorCodes.ENHANCE_YOUR_CALM,
     b"header block too large"),
    (frame(HEADERS, 0, 1, b"h" * 4000) + frame(CONTINUATION, 0, 1),
     frame(CONTINUATION, 0, 1, b"c" * 97), ErrorCodes.ENHANCE_YOUR_CALM,
     b"header block too large"),
    (frame(0x0, 0, 1, b"d"), (16_385).to_bytes(3, "big") + b"\0\0\0\0\0\1",
     ErrorCodes.FRAME_SIZE_ERROR, b"frame larger than SETTINGS_MAX_FRAME_SIZE"),
    (b"", frame(0x5, 0x4, 1, b"\0\0\0\2"), ErrorCodes.PROTOCOL_ERROR,
     b"a client cannot push"),
    (frame(0x6, 0, 0, b"p" * 8) * 10, frame(0x6, 0, 0, b"p" * 8),
     ErrorCodes.ENHANCE_YOUR_CALM, b"too many control frames"),
    (frame(0x0, 0, 1) * 5 + padded(0x0, 0, b"", 3) * 5, frame(0x2, 0, 1, b"\0" * 5),
     ErrorCodes.ENHANCE_YOUR_CALM, b"too many control frames"),
    (frame(0x8, 0, 0, b"\0\0\0\1") * 10, frame(0xfa, 0, 0), ErrorCodes.ENHANCE_YOUR_CALM,
     b"too many control frames"),
    (b"", frame(0x4, 0, 0, b"\0\3\0\0\0\1" * 11), ErrorCodes.ENHANCE_YOUR_CALM,
     b"too many control frames"),
]


@pytest.mark.parametrize("frames", HONEST)
@given(cuts=st.lists(st.integers(min_value=0), max_size=8))
@settings(max_examples=30)
def test_honest_frames_pass_however_cut(frames: bytes, cuts: list[int]) -> None:
    assert feed(PREFACE + frames, cuts) is None


@pytest.mark.parametrize(("before", "refused", "code", "reason"), HOSTILE)
@given(cuts=st.lists(st.integers(min_value=0), max_size=8))
@settings(max_examples=30)
def test_the_refused_frame_is_found_however_cut(before: bytes, refused: bytes,
                                                code: ErrorCodes, reason: bytes,
                                                cuts: list[int]) -> None:
    data = PREFACE + before + refused + b"x" * 100
    found = feed(data, cuts)
    assert found is not None
    verdict, at = found
    assert (verdict.code, verdict.reason) == (code, reason)
    # h2 reads every frame before it, and of it at most the part of its header (and
    # pad length) that came with an earlier read.
    start = len(PREFACE + before)
    assert start <= at <= start + 10


def test_byte_by_byte() -> None:
    before, refused, code, _ = HOSTILE[0]
    data = PREFACE + before + refused
    found = feed(data, list(range(len(data))))
    assert found is not None and found[0].code == code


def test_the_budget_refills_with_time_and_with_frames_sent() -> None:
    guard = FrameGuard(LIMITS, 0.0)
    ping = frame(0x6, 0, 0, b"p" * 8)
    assert guard.feed(PREFACE + ping * 10, 0.0) is None
    assert guard.feed(ping, 0.0) is not None
    guard = FrameGuard(LIMITS, 0.0)
    assert guard.feed(PREFACE + ping * 10, 0.0) is None
    assert guard.feed(ping * 3, 3.0) is None  # 1 a second
    guard.earn(2)  # two response frames: four more
    assert guard.feed(ping * 4, 3.0) is None
    assert guard.feed(ping, 3.0) is not None
