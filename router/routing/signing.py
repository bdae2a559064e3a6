"""Origin authenticity for router records.

A router's id is derived from its public key, so a record can only be produced by the holder of
the matching private key: neighbours flood records they cannot rewrite.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class Signer(Protocol):
    @property
    def public_key(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


VerifyFn = Callable[[bytes, bytes, bytes], bool]
"""verify(public_key, data, signature) -> True if the signature is valid."""


def router_id_for(public_key: bytes) -> str:
    """The router id owned by `public_key`: "r" + first 16 hex digits of its SHA-256."""
    return "r" + hashlib.sha256(public_key).hexdigest()[:16]


class NullSigner:
    """No signature at all, for fast simulations; pair it with `null_verify`."""

    __slots__ = ("_public_key",)

    def __init__(self, public_key: bytes | None = None) -> None:
        self._public_key = secrets.token_bytes(32) if public_key is None else public_key

    @classmethod
    def from_seed(cls, seed: str) -> NullSigner:
        """A deterministic key, so simulations give the same router ids on every run."""
        return cls(hashlib.sha256(seed.encode()).digest())

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        return b""


def null_verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Accepts everything. Only for simulations and tests."""
    return True


class Ed25519Signer:
    """Signs with an Ed25519 private key; `public_key` is the raw 32-byte public key."""

    __slots__ = ("_private_key", "_public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)


def ed25519_verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Verify a raw Ed25519 signature; a malformed key or signature is simply invalid."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
