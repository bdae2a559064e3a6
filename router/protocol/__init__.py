"""The link protocol between routers, sans-IO: bytes in, events out, bytes to send."""

from .connection import LinkConnection, LinkLimits, Role
from .errors import ErrorCode, FlowCode, FlowError, ProtocolError
from .events import (
    CreditGranted,
    DataReceived,
    Event,
    FlowAccepted,
    FlowFinished,
    FlowOpened,
    FlowRefused,
    FlowReset,
    HelloReceived,
    LinkClosedByPeer,
    LinkDead,
    PongReceived,
    RenewReceived,
    RoutingReceived,
)
from .frames import PREFACE, RENEW_FEATURE, VERSION, FrameType
from .messages import Accept, GoAway, Hello, Open, Refuse, Reset, printable

__all__ = [
    "PREFACE",
    "RENEW_FEATURE",
    "VERSION",
    "Accept",
    "CreditGranted",
    "DataReceived",
    "ErrorCode",
    "Event",
    "FlowAccepted",
    "FlowCode",
    "FlowError",
    "FlowFinished",
    "FlowOpened",
    "FlowRefused",
    "FlowReset",
    "FrameType",
    "GoAway",
    "Hello",
    "HelloReceived",
    "LinkClosedByPeer",
    "LinkConnection",
    "LinkDead",
    "LinkLimits",
    "Open",
    "PongReceived",
    "ProtocolError",
    "Refuse",
    "RenewReceived",
    "Reset",
    "Role",
    "RoutingReceived",
    "printable",
]
