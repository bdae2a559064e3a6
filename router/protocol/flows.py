"""The per-flow state machine, as a table.

``(state, input) -> next state``. A missing entry is a violation: a ``ProtocolError`` when
the input came from the peer, a ``FlowError`` when it was a local command.
"""

from __future__ import annotations

from enum import Enum

from .errors import ErrorCode, FlowError, ProtocolError

__all__ = ["TRANSITIONS", "Flow", "FlowInput", "FlowState"]


class FlowState(Enum):
    IDLE = "idle"  # before OPEN in either direction; never stored
    OPENING = "opening"  # we sent OPEN, awaiting ACCEPT or REFUSE
    OPENING_FIN = "opening_fin"  # ...and FIN already (the whole message went early)
    OPEN_RECEIVED = "open_received"  # peer sent OPEN, we have not answered
    OPEN_RECEIVED_FIN = "open_received_fin"  # ...and its FIN
    OPEN = "open"
    LOCAL_CLOSED = "local_closed"  # we sent FIN; peer may still send
    REMOTE_CLOSED = "remote_closed"  # peer sent FIN; we may still send
    CLOSED = "closed"  # forgotten as soon as reached

    # Members are singletons: the identity hash is enough, and C-fast; Enum's own
    # hashes the name in Python, a dozen times per flow in the transition table.
    __hash__ = object.__hash__


class FlowInput(Enum):
    SEND_OPEN = "send_open"
    RECV_OPEN = "recv_open"
    SEND_ACCEPT = "send_accept"
    RECV_ACCEPT = "recv_accept"
    SEND_REFUSE = "send_refuse"
    RECV_REFUSE = "recv_refuse"
    SEND_DATA = "send_data"
    RECV_DATA = "recv_data"
    SEND_CREDIT = "send_credit"
    RECV_CREDIT = "recv_credit"
    SEND_FIN = "send_fin"
    RECV_FIN = "recv_fin"
    SEND_RESET = "send_reset"
    RECV_RESET = "recv_reset"

    __hash__ = object.__hash__  # as FlowState's


S = FlowState
I = FlowInput  # noqa: E741 - a table reads better with one-letter names

TRANSITIONS: dict[tuple[FlowState, FlowInput], FlowState] = {
    (S.IDLE, I.SEND_OPEN): S.OPENING,
    (S.IDLE, I.RECV_OPEN): S.OPEN_RECEIVED,
    (S.OPENING, I.RECV_ACCEPT): S.OPEN,
    (S.OPENING, I.RECV_REFUSE): S.CLOSED,
    (S.OPEN_RECEIVED, I.SEND_ACCEPT): S.OPEN,
    (S.OPEN_RECEIVED, I.SEND_REFUSE): S.CLOSED,
    # Early data: DATA and FIN before the answer, within the acceptor's early_bytes
    # (the connection checks that the peer offered any before FIN goes out).
    (S.OPENING, I.SEND_DATA): S.OPENING,
    (S.OPENING, I.SEND_FIN): S.OPENING_FIN,
    (S.OPENING_FIN, I.RECV_ACCEPT): S.LOCAL_CLOSED,
    (S.OPENING_FIN, I.RECV_REFUSE): S.CLOSED,
    (S.OPEN_RECEIVED, I.RECV_DATA): S.OPEN_RECEIVED,
    (S.OPEN_RECEIVED, I.RECV_FIN): S.OPEN_RECEIVED_FIN,
    (S.OPEN_RECEIVED_FIN, I.SEND_ACCEPT): S.REMOTE_CLOSED,
    (S.OPEN_RECEIVED_FIN, I.SEND_REFUSE): S.CLOSED,
    (S.OPEN, I.SEND_DATA): S.OPEN,
    (S.OPEN, I.RECV_DATA): S.OPEN,
    (S.OPEN, I.SEND_CREDIT): S.OPEN,
    (S.OPEN, I.RECV_CREDIT): S.OPEN,
    (S.OPEN, I.SEND_FIN): S.LOCAL_CLOSED,
    (S.OPEN, I.RECV_FIN): S.REMOTE_CLOSED,
    (S.LOCAL_CLOSED, I.RECV_DATA): S.LOCAL_CLOSED,
    (S.LOCAL_CLOSED, I.SEND_CREDIT): S.LOCAL_CLOSED,
    # The peer may have granted credit before it saw our FIN.
    (S.LOCAL_CLOSED, I.RECV_CREDIT): S.LOCAL_CLOSED,
    (S.LOCAL_CLOSED, I.RECV_FIN): S.CLOSED,
    (S.REMOTE_CLOSED, I.SEND_DATA): S.REMOTE_CLOSED,
    (S.REMOTE_CLOSED, I.RECV_CREDIT): S.REMOTE_CLOSED,
    (S.REMOTE_CLOSED, I.SEND_FIN): S.CLOSED,
}
# Either side may abandon a flow at any point before it is closed.
for _state in (S.OPENING, S.OPENING_FIN, S.OPEN_RECEIVED, S.OPEN_RECEIVED_FIN, S.OPEN,
               S.LOCAL_CLOSED, S.REMOTE_CLOSED):
    TRANSITIONS[_state, I.SEND_RESET] = S.CLOSED
    TRANSITIONS[_state, I.RECV_RESET] = S.CLOSED
del _state

# Precomputed for the DATA hot path: one set lookup instead of a tuple build per frame.
CAN_RECV_DATA = frozenset(s for (s, i) in TRANSITIONS if i is I.RECV_DATA)
CAN_SEND_DATA = frozenset(s for (s, i) in TRANSITIONS if i is I.SEND_DATA)
# Not answered yet: credit granted back accrues, and goes out after ACCEPT.
UNANSWERED = frozenset({S.OPEN_RECEIVED, S.OPEN_RECEIVED_FIN})


class Flow:
    """One multiplexed flow: its state and both directions' flow-control counters."""

    __slots__ = ("flow_id", "recv_allowance", "send_credit", "state", "unacked", "window")

    def __init__(self, flow_id: int, state: FlowState, send_credit: int, recv_allowance: int):
        self.flow_id = flow_id
        self.state = state
        self.send_credit = send_credit  # bytes we may still send
        self.recv_allowance = recv_allowance  # bytes the peer may still send
        self.window = recv_allowance  # the receive window we granted at the start
        self.unacked = 0  # consumed locally, not yet granted back to the peer

    def can(self, event: FlowInput) -> bool:
        return (self.state, event) in TRANSITIONS

    def on_peer(self, event: FlowInput, frame: str) -> FlowState:
        """Apply an input that came from the peer; ProtocolError if not allowed now."""
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise ProtocolError(
                ErrorCode.FLOW_STATE,
                f"{frame} not allowed on flow {self.flow_id} in state {self.state.value}",
            ) from None
        return self.state

    def on_local(self, event: FlowInput) -> FlowState:
        """Apply a local command; FlowError if not allowed now."""
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise FlowError(
                f"cannot {event.value.replace('_', ' ')} on flow {self.flow_id}"
                f" in state {self.state.value}"
            ) from None
        return self.state
