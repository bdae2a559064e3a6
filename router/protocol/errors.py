"""Exceptions of the link protocol.

A ``ProtocolError`` means the peer broke the protocol and the link must go; a
``FlowError`` means local code misused a flow (a bug on our side, the link is fine).
"""

from __future__ import annotations

from enum import Enum, IntEnum

from router.errors import VanError

__all__ = ["ErrorCode", "FlowCode", "FlowError", "ProtocolError"]


class FlowCode(IntEnum):
    """Why a flow was refused or reset, carried on the wire with the reason text.

    A REFUSE always means the serving side never started the flow, so an opener may
    try elsewhere; the code says where: ROUTE and LINK_LOST are the path (routes are
    changing, the same site may work again), NO_TARGET and CAPACITY the site.
    """

    UNKNOWN = 0  # a code this router does not know (a newer peer): treat as the site's
    ROUTE = 1  # a router on the path could not forward the OPEN
    NO_TARGET = 2  # the serving site has no connector for the key, or cannot reach it
    TIMEOUT = 3  # no answer to the OPEN in time
    LINK_LOST = 4  # a link under the flow went down
    CAPACITY = 5  # the link is closing or holds its maximum of flows
    SHUTDOWN = 6  # a router on the path is shutting down
    INTERNAL = 7  # an internal error in a router on the path
    PEER_RESET = 8  # the local end (client or target) reset or failed
    CANCELLED = 9  # the opener gave up

    @classmethod
    def of(cls, value: int) -> FlowCode:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN

    @property
    def path_failed(self) -> bool:
        """The path, not the serving site, failed: the same site may work again."""
        return self in (FlowCode.ROUTE, FlowCode.LINK_LOST)


class ErrorCode(Enum):
    """Why a link was judged broken; carried by ``ProtocolError.code``."""

    BAD_PREFACE = "bad_preface"
    VERSION = "version"
    HELLO_EXPECTED = "hello_expected"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_FRAME = "unknown_frame"
    BAD_FRAME = "bad_frame"  # well-known type but malformed: flags, fixed-size body, flow 0 misuse
    BAD_MESSAGE = "bad_message"  # a msgpack body that does not decode to a valid message
    BAD_FLOW_ID = "bad_flow_id"
    FLOW_STATE = "flow_state"
    FLOW_CONTROL = "flow_control"
    TOO_MANY_FLOWS = "too_many_flows"
    LINK_CLOSED = "link_closed"


class ProtocolError(VanError):
    """The peer violated the link protocol; ``str(err)`` says how."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.name}, {self.message!r})"


class FlowError(Exception):
    """Local misuse of a flow: unknown id, wrong state, or sending beyond credit."""
