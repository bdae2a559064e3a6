"""What identifies a leaf (for revocation) and when it was issued, expires and is due for
renewal (two thirds through its life)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from certs._x509util import CLOCK_SKEW, common_name_of, load_cert, load_private_key
from certs.authority import MAX_CSR_BYTES
from certs.errors import CertError
from certs.verify import router_id_of

RENEW_FRACTION = 2 / 3  # of a leaf's lifetime, after which its holder renews it


@dataclass(frozen=True, slots=True)
class LeafInfo:
    common_name: str
    router_id: str | None
    serial: str  # hex
    key_sha256: str  # "sha256:" + hex of the SubjectPublicKeyInfo (DER)
    issued: datetime  # aware UTC; the issuer backdates notBefore by CLOCK_SKEW
    expires: datetime

    @property
    def renew_at(self) -> datetime:
        return self.issued + (self.expires - self.issued) * RENEW_FRACTION


def _key_sha256(obj: x509.Certificate | x509.CertificateSigningRequest, what: str) -> str:
    try:
        spki = obj.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertError(f"{what} has an unusable public key ({exc})") from None
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return "sha256:" + digest.finalize().hex()


def csr_key_sha256(csr_pem: bytes) -> str:
    """The key fingerprint (as LeafInfo.key_sha256) of a CSR; CertError if unreadable."""
    if not isinstance(csr_pem, bytes) or len(csr_pem) > MAX_CSR_BYTES:
        raise CertError("CSR is not bytes of a sane size")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CertError("CSR is not a valid PEM certificate signing request") from None
    return _key_sha256(csr, "CSR")


def _info(cert: x509.Certificate) -> LeafInfo:
    expires = cert.not_valid_after_utc
    issued = min(cert.not_valid_before_utc + CLOCK_SKEW, expires)
    return LeafInfo(common_name=common_name_of(cert.subject, "certificate"),
                    router_id=router_id_of(cert), serial=format(cert.serial_number, "x"),
                    key_sha256=_key_sha256(cert, "certificate"), issued=issued,
                    expires=expires)


def leaf_info(cert_pem: bytes) -> LeafInfo:
    return _info(load_cert(cert_pem))


def leaf_info_der(der: bytes) -> LeafInfo:
    """leaf_info for a DER certificate, e.g. a TLS peer's."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except (ValueError, TypeError) as exc:
        raise CertError("peer certificate is not a valid DER X.509 certificate") from exc
    return _info(cert)


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether `key_pem` is the private key of `cert_pem` (False if either is unreadable)."""
    try:
        return load_cert(cert_pem).public_key() == load_private_key(key_pem).public_key()
    except CertError:
        return False


def issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether `ca_pem` signed `cert_pem` (False if either is unreadable)."""
    try:
        load_cert(cert_pem).verify_directly_issued_by(load_cert(ca_pem))
    except (CertError, ValueError, TypeError, InvalidSignature):
        return False
    return True
