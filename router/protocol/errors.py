"""Exceptions of the link protocol.

A ``ProtocolError`` means the peer broke the protocol and the link must go; a
``FlowError`` means local code misused a flow (a bug on our side, the link is fine).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ErrorCode", "FlowError", "ProtocolError", "RouterError"]


class RouterError(Exception):
    """Base of every error the router raises on purpose."""


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


class ProtocolError(RouterError):
    """The peer violated the link protocol; ``str(err)`` says how."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.name}, {self.message!r})"


class FlowError(RouterError):
    """Local misuse of a flow: unknown id, wrong state, or sending beyond credit."""
