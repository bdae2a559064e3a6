"""Routing errors. Every refusal leaves the routing state exactly as it was."""

from __future__ import annotations

from router.errors import VanError


class RoutingError(VanError):
    """A routing input (message, command) was refused; the routing state is unchanged."""


class MalformedMessage(RoutingError):
    """A payload or record did not decode, or a field had the wrong type or range."""


class ForgedRecord(RoutingError):
    """A record's id does not match its public key, or its signature does not verify."""


class LimitExceeded(RoutingError):
    """A named limit (routers, links or keys per record, message bytes) would be exceeded."""
