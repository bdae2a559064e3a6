"""Certificate authority: generate/load a per-site CA, issue leaves, sign CSRs."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs._x509util import (
    CLOCK_SKEW,
    MAX_CN_LEN,
    ROUTER_URI_PREFIX,
    LeafPublicKey,
    common_name_of,
    is_acceptable_leaf_key,
    leaf_lifetime,
    load_cert,
    load_private_key,
    new_ec_key,
    now_utc,
    private_key_pem,
    validate_days,
    validate_name,
    validate_router_id,
)
from certs.errors import CertError

# A CSR for one small key is well under 1 KiB; the cap stops a peer from making
# us parse arbitrarily large ASN.1 during token redemption.
MAX_CSR_BYTES = 16 * 1024


class Role(enum.Enum):
    """What a leaf may do in TLS. One usage per certificate, so a certificate handed
    to a redeemer (client) can never be presented as a site's link port (server)."""

    SERVER = ExtendedKeyUsageOID.SERVER_AUTH
    CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH


@dataclass(frozen=True)
class KeyPair:
    """A private key and its certificate, both PEM."""

    # repr=False so logging a KeyPair never leaks the private key.
    key_pem: bytes = field(repr=False)
    cert_pem: bytes


def make_csr(name: str) -> tuple[bytes, bytes]:
    """Create a new EC P-256 key and a CSR with CN=name; returns (key_pem, csr_pem)."""
    validate_name(name)
    key = new_ec_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return private_key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


class CertificateAuthority:
    """An in-memory CA (EC P-256) that signs site leaf certificates and link tokens."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        # Use generate() or from_pem(); they validate that key and cert belong together.
        self._cert = cert
        self._key = key
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._key_pem = private_key_pem(key)

    def __repr__(self) -> str:
        return f"CertificateAuthority({self._cert.subject.rfc4514_string()!r})"

    @classmethod
    def generate(cls, site_name: str, *, valid_days: int = 3650) -> CertificateAuthority:
        validate_name(site_name)
        cn = f"{site_name} CA"
        if len(cn) > MAX_CN_LEN:
            raise CertError(f"site name {site_name!r} too long for a CA common name")
        lifetime = validate_days(valid_days)
        key = new_ec_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        not_before = now_utc() - CLOCK_SKEW
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + CLOCK_SKEW + lifetime)
            # path_length=0: this CA signs leaves only, never sub-CAs.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        cert = load_cert(cert_pem, "CA certificate")
        key = load_private_key(key_pem)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertError("CA private key must be an EC key")
        if cert.public_key() != key.public_key():
            raise CertError("CA private key does not match the CA certificate")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise CertError("CA certificate lacks basicConstraints") from None
        if not bc.ca:
            raise CertError("certificate is not a CA (basicConstraints ca=False)")
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self._cert_pem

    @property
    def key_pem(self) -> bytes:
        return self._key_pem

    def issue(
        self, name: str, *, role: Role = Role.SERVER, valid_days: int = 825,
        router_id: str | None = None, lifetime_s: float | None = None,
    ) -> KeyPair:
        """Generate a fresh EC P-256 key and a leaf certificate for `name`, valid for
        `lifetime_s` seconds if given, else `valid_days`.

        The default role is the site router's own (link port) certificate.
        """
        validate_name(name)
        lifetime = leaf_lifetime(valid_days, lifetime_s)
        key = new_ec_key()
        cert = self._build_leaf(name, key.public_key(), lifetime, role, router_id)
        return KeyPair(key_pem=private_key_pem(key), cert_pem=cert)

    def sign_csr(
        self, csr_pem: bytes, *, valid_days: int = 825, expected_name: str | None = None,
        router_id: str | None = None, lifetime_s: float | None = None,
    ) -> bytes:
        """Sign a CSR and return a client-only leaf certificate PEM.

        Only the CSR's public key and CN are used; requested extensions are
        ignored so a requester cannot ask for e.g. CA rights or extra SANs.
        `router_id`, if given, is bound into the certificate as a URI SAN.
        """
        if not isinstance(csr_pem, bytes):
            raise CertError("CSR must be bytes")
        if len(csr_pem) > MAX_CSR_BYTES:
            raise CertError(f"CSR too large ({len(csr_pem)} bytes, max {MAX_CSR_BYTES})")
        lifetime = leaf_lifetime(valid_days, lifetime_s)
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CertError("CSR is not a valid PEM certificate signing request") from exc
        try:
            signature_ok = csr.is_signature_valid
            public_key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CertError("CSR has an unsupported or malformed key") from exc
        if not signature_ok:
            raise CertError("CSR signature does not verify")
        if not is_acceptable_leaf_key(public_key):
            raise CertError("CSR key must be EC P-256 or Ed25519")
        name = common_name_of(csr.subject, "CSR")
        validate_name(name)
        if expected_name is not None and name != expected_name:
            raise CertError(f"CSR is for {name!r}, expected {expected_name!r}")
        return self._build_leaf(name, public_key, lifetime, Role.CLIENT, router_id)

    def sign_bytes(self, data: bytes) -> bytes:
        """ECDSA-SHA256 (DER) signature over `data` with the CA key."""
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            # Imported CA without SKI: derive the same key id from its public key.
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    def _build_leaf(
        self, name: str, public_key: LeafPublicKey, lifetime: timedelta, role: Role,
        router_id: str | None,
    ) -> bytes:
        sans: list[x509.GeneralName] = [x509.DNSName(name)]
        if router_id is not None:
            sans.append(x509.UniformResourceIdentifier(
                ROUTER_URI_PREFIX + validate_router_id(router_id)))
        not_before = now_utc() - CLOCK_SKEW
        not_after: datetime = not_before + CLOCK_SKEW + lifetime
        # A leaf outliving its CA would just fail verification later; clamp it.
        not_after = min(not_after, self._cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # TLS 1.3 with ECDSA/Ed25519 keys only ever signs handshakes, so
            # digitalSignature is the one usage needed (no static ECDH/RSA kex).
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([role.value]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._authority_key_id(), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)
