"""Certificates a hostile issuer could send, built with cryptography directly (the certs
package would refuse to make most of them), and a digest of a directory tree."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import CertificateAuthority

ROUTER_URI = "urn:vanrouter:router:"


def public_key_of(key_pem: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.public_key()


def public_key_of_csr(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    key = x509.load_pem_x509_csr(csr_pem).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def forge_leaf(
    ca: CertificateAuthority, public_key: ec.EllipticCurvePublicKey, *, name: str,
    router_id: str | None, eku: Sequence[x509.ObjectIdentifier] = (
        ExtendedKeyUsageOID.CLIENT_AUTH,),
    is_ca: bool = False, valid: tuple[timedelta, timedelta] = (
        timedelta(minutes=-5), timedelta(days=1)),
    sans: Sequence[x509.GeneralName] | None = None,
) -> bytes:
    """A leaf signed by `ca`; by default exactly what an honest issuer would send."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    if sans is None:
        sans = [x509.DNSName(name)]
        if router_id is not None:
            sans.append(x509.UniformResourceIdentifier(ROUTER_URI + router_id))
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + valid[0])
        .not_valid_after(now + valid[1])
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def tree_digest(root: Path) -> str:
    """SHA-256 over every relative path, its type and mode, and file contents (or symlink
    target) under `root`; run/ is excluded: the router's socket, pid and lock files are
    runtime state that comes and goes."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == "run":
            continue
        st = path.lstat()
        h.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if path.is_symlink():
            h.update(os.readlink(path).encode())
        elif path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()
