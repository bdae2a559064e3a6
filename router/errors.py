"""The one root of the errors raised on purpose, each with a one-line message.

Config, site, token, claim, handshake, link-lost, routing and refusal errors all sit
under `VanError`, so a caller that turns failures into messages for a user catches
one type. `certs` is a package of its own and keeps its own `CertError`.
"""

from __future__ import annotations


class VanError(Exception):
    """A failure whose message (one line) says what went wrong and, where it can, why."""
