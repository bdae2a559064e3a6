"""The one check for names that come from outside: tokens, CLI, link files (addresses:
`router.endpoint`).

A site or link name becomes a file name (links/NAME.toml, NAME.key), so everything that
accepts one goes through `validate_name`; nothing else decides what a name may be.
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # sites, links, routing keys

ROUTER_ID_RE = re.compile(r"r[0-9a-f]{16}")  # router_id_for(): "r" + 16 hex digits
_SHOWN = 40  # characters of a rejected value quoted back, so the message stays one line


class InvalidName(ValueError):
    """A name or address that must not be used; the message says which and why."""


def shown(text: str) -> str:
    """`text` quoted for a one-line message, cut short if long."""
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def validate_name(text: object, what: str = "site name") -> str:
    """`text` if it is a valid site/link name, else InvalidName naming `what`."""
    if not isinstance(text, str):
        raise InvalidName(f"{what} must be a string, got {type(text).__name__}")
    # fullmatch: `$` in NAME_RE also matches before a trailing newline.
    if not NAME_RE.fullmatch(text):
        raise InvalidName(f"{shown(text)} is not a valid {what} (1-63 letters, digits, '.', "
                          "'_' or '-', starting with a letter or digit)")
    return text


def validate_router_id(text: object) -> str:
    if not isinstance(text, str) or not ROUTER_ID_RE.fullmatch(text):
        value = shown(text) if isinstance(text, str) else type(text).__name__
        raise InvalidName(f"{value} is not a router id (r + 16 hex digits)")
    return text
