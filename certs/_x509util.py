"""Small shared helpers: name validation, PEM parsing, key encoding.

Everything here converts library exceptions into CertError so callers only ever
need to handle one exception type.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TypeGuard

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from certs.errors import CertError

# Site names end up as a SAN DNSName and as the TLS server_hostname, so they
# must be plain ASCII labels. Underscores are tolerated: OpenSSL's exact-match
# hostname check does not care, and existing site names use them.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)

# A router id (router/routing/signing.py router_id_for) bound into a leaf as a URI SAN.
_ROUTER_ID_RE = re.compile(r"r[0-9a-f]{16}", re.ASCII)
ROUTER_URI_PREFIX = "urn:vanrouter:router:"

# X.509 caps commonName at 64 characters (RFC 5280 ub-common-name).
MAX_CN_LEN = 64

# Backdate notBefore so peers with slightly slow clocks accept fresh certs.
CLOCK_SKEW = timedelta(minutes=5)


def validate_name(name: str) -> str:
    """Return `name` if it is a legal site name, else raise CertError."""
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise CertError(
            f"invalid name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_router_id(router_id: str) -> str:
    if not isinstance(router_id, str) or _ROUTER_ID_RE.fullmatch(router_id) is None:
        raise CertError(f"invalid router id {router_id!r}: expected 'r' and 16 hex digits")
    return router_id


def validate_days(valid_days: int) -> timedelta:
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days < 1:
        raise CertError(f"valid_days must be a positive integer, got {valid_days!r}")
    return timedelta(days=valid_days)


MIN_LIFETIME_S = 1.0  # short lifetimes are for tests; sites use days (see Limits)


def leaf_lifetime(valid_days: int, lifetime_s: float | None) -> timedelta:
    """`lifetime_s` seconds if given (at least MIN_LIFETIME_S), else `valid_days`."""
    if lifetime_s is None:
        return validate_days(valid_days)
    if (isinstance(lifetime_s, bool) or not isinstance(lifetime_s, int | float)
            or not MIN_LIFETIME_S <= lifetime_s < 1e10):
        raise CertError(f"lifetime_s must be from {MIN_LIFETIME_S:g} s, got {lifetime_s!r}")
    return timedelta(seconds=lifetime_s)


def now_utc() -> datetime:
    return datetime.now(UTC)


def load_cert(cert_pem: bytes, what: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError) as exc:
        raise CertError(f"{what} is not a valid PEM X.509 certificate") from exc


def load_private_key(key_pem: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:
        # Raised both for encrypted keys and for non-bytes input.
        raise CertError("private key is encrypted or not bytes; need unencrypted PEM") from exc
    except ValueError as exc:
        raise CertError("private key is not a valid unencrypted PEM key") from exc


def common_name_of(name: x509.Name, what: str) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        raise CertError(f"{what} has no common name (CN)")
    if len(attrs) > 1:
        # Ambiguous identity: refuse rather than guess which CN is meant.
        raise CertError(f"{what} has more than one common name (CN)")
    value = attrs[0].value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


LeafPublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def is_acceptable_leaf_key(key: object) -> TypeGuard[LeafPublicKey]:
    """Leaf keys must be EC P-256 or Ed25519; anything else is refused."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return isinstance(key.curve, ec.SECP256R1)
    return isinstance(key, ed25519.Ed25519PublicKey)
