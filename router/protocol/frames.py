"""Frame layout: the preface, the 10-byte header and the frame types."""

from __future__ import annotations

import struct
from enum import IntEnum

__all__ = [
    "CREDIT_BODY",
    "FLOW_FRAMES",
    "HEADER",
    "HEADER_SIZE",
    "LINK_FRAMES",
    "MAGIC",
    "PING_BODY_SIZE",
    "PREFACE",
    "RENEW_FEATURE",
    "VERSION",
    "FrameType",
]

MAGIC = b"VANL"
VERSION = 2  # 2: REFUSE and RESET carry a FlowCode
PREFACE = MAGIC + bytes([VERSION])

# type (u8), flags (u8, must be 0), flow_id (u32), payload length (u32)
HEADER = struct.Struct(">BBII")
HEADER_SIZE = HEADER.size
CREDIT_BODY = struct.Struct(">I")
PING_BODY_SIZE = 8
MAX_FLOW_ID = 2**32 - 1


class FrameType(IntEnum):
    HELLO = 1
    DATA = 2
    OPEN = 3
    ACCEPT = 4
    REFUSE = 5
    CREDIT = 6
    FIN = 7
    RESET = 8
    PING = 9
    PONG = 10
    ROUTING = 11
    GOAWAY = 12
    # A certificate renewal request or answer between the two ends of this link (a peer
    # sends it only if the other's HELLO lists RENEW_FEATURE, so older routers never see it).
    RENEW = 13


RENEW_FEATURE = "renew/1"

# Frames about the link itself travel on flow 0; all others name a flow and must not.
LINK_FRAMES = frozenset(
    {FrameType.HELLO, FrameType.PING, FrameType.PONG, FrameType.ROUTING, FrameType.GOAWAY,
     FrameType.RENEW}
)
FLOW_FRAMES = frozenset(FrameType) - LINK_FRAMES
