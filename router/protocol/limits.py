"""Link-level settings: which end we are, and the named limits with their units."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# Control bytes an honest link can have queued per flow while its writer waits: up to
# four CREDITs (one per quarter window consumed; the peer cannot send past the window
# before they leave) plus OPEN (routing key, trace), ACCEPT, FIN and RESET, generously.
CONTROL_BYTES_PER_FLOW = 512
MIN_UNSENT_CONTROL_BYTES = 256 * 1024


class Role(Enum):
    """Which end of the TCP connection we are; decides flow-id parity."""

    DIALER = "dialer"  # allocates odd flow ids
    ACCEPTOR = "acceptor"  # allocates even flow ids


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkLimits:
    max_frame_bytes: int = 256 * 1024  # largest DATA payload accepted, bytes
    max_control_bytes: int = 64 * 1024  # largest non-DATA payload accepted, bytes
    max_flows: int = 10_000  # concurrent flows per link, both directions together
    keepalive_interval: float = 1.0  # seconds of send-idleness before we PING
    dead_after: float = 3.0  # seconds without receiving anything before the link is dead
    # Non-DATA bytes queued and not yet taken by data_to_send past which receive_data
    # stops parsing (and the driver stops reading). 0 derives it from max_flows: it must
    # stay above what honest flows queue, or two busy routers could both stop reading.
    max_unsent_control_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("max_frame_bytes", "max_control_bytes", "max_flows"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LinkLimits.{name} must be positive")
        if self.max_unsent_control_bytes < 0:
            raise ValueError("LinkLimits.max_unsent_control_bytes must not be negative")
        if not self.max_unsent_control_bytes:
            derived = max(MIN_UNSENT_CONTROL_BYTES, CONTROL_BYTES_PER_FLOW * self.max_flows)
            object.__setattr__(self, "max_unsent_control_bytes", derived)
        if not (self.keepalive_interval > 0 and self.dead_after > 0):
            raise ValueError("LinkLimits intervals must be positive seconds")
