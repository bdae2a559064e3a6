"""Checking a leaf someone else issued to us before it is trusted or stored.

A token redeemer receives its link certificate from the issuer, which may be
hostile (a stolen or forged token pointing at an attacker's endpoint, or an
issuer that lies). The certificate must be exactly what was asked for: one PEM
block, signed by the token's CA, for our name, our key and our router id, for
the one role we asked for, and valid now. Only its canonical re-encoding is
returned, so nothing but a parsed certificate ever reaches the disk.
"""

from __future__ import annotations

import re
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs._x509util import (
    CLOCK_SKEW,
    ROUTER_URI_PREFIX,
    common_name_of,
    load_cert,
    load_private_key,
    validate_router_id,
)
from certs.authority import Role
from certs.errors import CertError

# Our leaves are ~700 bytes of PEM; anything near this is not one of ours.
MAX_LEAF_PEM_BYTES = 8 * 1024

# Exactly one PEM certificate block; surrounding whitespace only.
_ONE_PEM_CERT = re.compile(
    rb"\s*-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\s*"
)
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}


def check_issued_leaf(
    cert_pem: object, *, ca_pem: bytes, name: str, key_pem: bytes, role: Role,
    router_id: str | None, now: datetime,
) -> bytes:
    """Return the canonical PEM of `cert_pem` if it is the leaf we asked `ca_pem` for.

    Raises CertError saying what is wrong, in one line. `now` is an aware datetime.
    """
    if not isinstance(cert_pem, bytes):
        raise CertError(f"the certificate is {type(cert_pem).__name__}, not PEM bytes")
    if len(cert_pem) > MAX_LEAF_PEM_BYTES:
        raise CertError(f"the certificate is too large ({len(cert_pem)} bytes)")
    if _ONE_PEM_CERT.fullmatch(cert_pem) is None:
        raise CertError("the certificate is not a single PEM certificate")
    cert = load_cert(cert_pem)
    try:
        _check_issuer(cert, load_cert(ca_pem, "CA certificate"))
        _check_role(cert, role)
        _check_names(cert, name, router_id)
        _check_key(cert, key_pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        # cryptography parses extensions lazily: malformed ones surface here.
        raise CertError(f"the certificate is malformed ({exc})") from None
    if cert.not_valid_before_utc > now + CLOCK_SKEW:
        raise CertError(f"the certificate is not valid before {cert.not_valid_before_utc}")
    if cert.not_valid_after_utc <= now:
        raise CertError(f"the certificate expired at {cert.not_valid_after_utc}")
    return cert.public_bytes(serialization.Encoding.PEM)


def router_id_of(cert: x509.Certificate) -> str | None:
    """The router id bound into a leaf (URI SAN), or None if it carries none."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise CertError(f"certificate has a malformed subjectAltName ({exc})") from None
    ids = [uri.removeprefix(ROUTER_URI_PREFIX)
           for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)
           if uri.startswith(ROUTER_URI_PREFIX)]
    if not ids:
        return None
    if len(ids) > 1:
        raise CertError("certificate names more than one router id")
    return validate_router_id(ids[0])


def peer_router_id(der_cert: bytes) -> str | None:
    """router_id_of for a DER certificate, e.g. SSLObject.getpeercert(binary_form=True)."""
    try:
        cert = x509.load_der_x509_certificate(der_cert)
    except (ValueError, TypeError) as exc:
        raise CertError("peer certificate is not a valid DER X.509 certificate") from exc
    return router_id_of(cert)


def _check_issuer(cert: x509.Certificate, ca: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError("the certificate was not issued by the token's CA") from None


def _check_role(cert: x509.Certificate, role: Role) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CertError("the certificate lacks basicConstraints") from None
    if bc.ca:
        raise CertError("the certificate is a CA certificate")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and (ku.key_cert_sign or ku.crl_sign):
        raise CertError("the certificate may sign certificates")
    try:
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = []  # no EKU means "any purpose" to OpenSSL: refuse it
    if eku != [role.value]:
        found = ", ".join(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku) or "none"
        raise CertError(f"the certificate's usage is {found}, expected "
                        f"{_EKU_NAMES[role.value]} only")


def _check_names(cert: x509.Certificate, name: str, router_id: str | None) -> None:
    cn = common_name_of(cert.subject, "the certificate")
    if cn != name:
        raise CertError(f"the certificate is for {cn!r}, expected {name!r}")
    try:
        sans = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    expected: list[x509.GeneralName] = [x509.DNSName(name)]
    if router_id is not None:
        expected.append(x509.UniformResourceIdentifier(ROUTER_URI_PREFIX + router_id))
    if sans != expected:
        shown = ", ".join(str(getattr(san, "value", san)) for san in sans) or "none"
        raise CertError(f"the certificate's alternative names are {shown}, expected "
                        + ", ".join(str(san.value) for san in expected))


def _check_key(cert: x509.Certificate, key_pem: bytes) -> None:
    ours = load_private_key(key_pem).public_key()
    if cert.public_key() != ours:
        raise CertError("the certificate is for another key than the one we asked for")
