"""Read-only helpers: inspect certificates and verify CA signatures."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from certs._x509util import common_name_of, load_cert
from certs.errors import CertError


def fingerprint(cert_pem: bytes) -> str:
    """'sha256:' + lowercase hex SHA-256 of the certificate's DER encoding."""
    cert = load_cert(cert_pem)
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def cert_common_name(cert_pem: bytes) -> str:
    return common_name_of(load_cert(cert_pem).subject, "certificate")


def identity_mismatch(site_name: str, ca_cert_pem: bytes, cert_pem: bytes) -> str | None:
    """Why a site's CA and router certificates were not made for `site_name`, or None.
    The CA's CN is "<site> CA", as CertificateAuthority.generate names it."""
    ca_cn, cn = cert_common_name(ca_cert_pem), cert_common_name(cert_pem)
    if cn != site_name:
        return f"the router certificate is for {cn!r}"
    if ca_cn != f"{site_name} CA":
        return f"the CA certificate is {ca_cn!r}"
    return None


def cert_not_after(cert_pem: bytes) -> datetime:
    """Expiry time as an aware UTC datetime."""
    return load_cert(cert_pem).not_valid_after_utc


def peer_common_name(der_cert: bytes) -> str:
    """CN of a DER certificate, e.g. from SSLObject.getpeercert(binary_form=True)."""
    try:
        cert = x509.load_der_x509_certificate(der_cert)
    except (ValueError, TypeError) as exc:
        raise CertError("peer certificate is not a valid DER X.509 certificate") from exc
    return common_name_of(cert.subject, "peer certificate")


def verify_signature(ca_cert_pem: bytes, data: bytes, signature: bytes) -> bool:
    """True iff `signature` is the CA key's ECDSA-SHA256 signature over `data`.

    Never raises: callers use this on untrusted input (link tokens), where any
    malformed piece simply means "not valid".
    """
    try:
        public_key = x509.load_pem_x509_certificate(ca_cert_pem).public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return False
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True
