"""Link-level settings: which end we are, and the named limits with their units."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


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

    def __post_init__(self) -> None:
        for name in ("max_frame_bytes", "max_control_bytes", "max_flows"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LinkLimits.{name} must be positive")
        if not (self.keepalive_interval > 0 and self.dead_after > 0):
            raise ValueError("LinkLimits intervals must be positive seconds")
