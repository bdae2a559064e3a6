"""Events returned by ``LinkConnection.receive_data`` and ``handle_timer``.

Named in the past tense: each one is something that already happened on the link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from .errors import FlowCode
from .messages import Hello, Open

__all__ = [
    "CreditGranted",
    "DataReceived",
    "Event",
    "FlowAccepted",
    "FlowFinished",
    "FlowOpened",
    "FlowRefused",
    "FlowReset",
    "HelloReceived",
    "LinkClosedByPeer",
    "LinkDead",
    "PongReceived",
    "RenewReceived",
    "RoutingReceived",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloReceived:
    hello: Hello


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowOpened:
    """The peer asked to open a flow; answer with ``accept_flow`` or ``refuse_flow``."""

    flow_id: int
    open: Open


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowAccepted:
    """The peer accepted a flow we opened and granted ``window`` bytes of credit;
    ``trace`` and ``server`` say where it went (see ``Accept``; empty from an older peer)."""

    flow_id: int
    window: int
    trace: tuple[str, ...] = ()
    server: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowRefused:
    flow_id: int
    code: FlowCode
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived:
    """Payload for a flow; consecutive DATA frames of one receive call are merged."""

    flow_id: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditGranted:
    flow_id: int
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowFinished:
    """The peer half-closed: it will send no more data on this flow."""

    flow_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowReset:
    flow_id: int
    code: FlowCode
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingReceived:
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewReceived:
    """A certificate renewal message (router.protocol.renewal) from the peer."""

    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PongReceived:
    """Answer to one of our PINGs; ``rtt`` in seconds of the caller's clock."""

    rtt: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkClosedByPeer:
    """The peer sent GOAWAY."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDead:
    """Nothing arrived from the peer for ``dead_after`` seconds."""

    reason: str


Event: TypeAlias = (
    HelloReceived
    | FlowOpened
    | FlowAccepted
    | FlowRefused
    | DataReceived
    | CreditGranted
    | FlowFinished
    | FlowReset
    | RoutingReceived
    | RenewReceived
    | PongReceived
    | LinkClosedByPeer
    | LinkDead
)
