"""Tests for the certs package: CA, leaves, CSRs, signatures, PEM files, contexts.

Real mTLS handshakes with these certificates are in test_certs_mtls.py."""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import stat
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

import certs
from certs import CertError, CertificateAuthority, KeyPair, Role

# ---------------------------------------------------------------- helpers


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _pem(der: bytes, label: str) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"\n".join(
        [f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----".encode(), b""]
    )


def _ext(
    cert: x509.Certificate, cls: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


# ---------------------------------------------------------------- CA


def test_ca_generation_extensions(ca: CertificateAuthority) -> None:
    cert = _cert(ca.cert_pem)
    assert cert.subject.rfc4514_string() == "CN=west CA"
    assert cert.issuer == cert.subject
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]

    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=True, path_length=0)

    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature  # type: ignore[attr-defined]
    assert not ku.value.key_encipherment  # type: ignore[attr-defined]

    ski = _ext(cert, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())

    cert.verify_directly_issued_by(cert)  # self-signed
    now = datetime.now(UTC)
    assert cert.not_valid_before_utc <= now - timedelta(minutes=4)
    assert cert.not_valid_after_utc > now + timedelta(days=3649)
    assert b"BEGIN PRIVATE KEY" in ca.key_pem  # PKCS8, unencrypted


def test_ca_from_pem_round_trip(ca: CertificateAuthority) -> None:
    again = CertificateAuthority.from_pem(ca.cert_pem, ca.key_pem)
    assert again.cert_pem == ca.cert_pem
    leaf = _cert(again.issue("east").cert_pem)
    leaf.verify_directly_issued_by(_cert(ca.cert_pem))


def test_ca_from_pem_refuses_bad_input(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    with pytest.raises(CertError, match="does not match"):
        CertificateAuthority.from_pem(ca.cert_pem, other_ca.key_pem)
    leaf = ca.issue("east")
    with pytest.raises(CertError, match="not a CA"):
        CertificateAuthority.from_pem(leaf.cert_pem, leaf.key_pem)
    with pytest.raises(CertError, match="certificate"):
        CertificateAuthority.from_pem(b"garbage", ca.key_pem)
    with pytest.raises(CertError, match="private key"):
        CertificateAuthority.from_pem(ca.cert_pem, b"garbage")


@pytest.mark.parametrize("bad", ["", "-west", "we st", "west\n", "é", "a" * 64, "a/b", "x:1"])
def test_invalid_names_refused(ca: CertificateAuthority, bad: str) -> None:
    with pytest.raises(CertError, match="invalid name"):
        ca.issue(bad)
    with pytest.raises(CertError, match="invalid name"):
        certs.make_csr(bad)
    with pytest.raises(CertError, match="invalid name"):
        CertificateAuthority.generate(bad)


def test_ca_name_too_long_for_cn() -> None:
    with pytest.raises(CertError, match="too long"):
        CertificateAuthority.generate("a" * 63)


def test_valid_days_must_be_positive(ca: CertificateAuthority) -> None:
    with pytest.raises(CertError, match="valid_days"):
        ca.issue("east", valid_days=0)
    with pytest.raises(CertError, match="valid_days"):
        CertificateAuthority.generate("x", valid_days=-1)


def test_repr_does_not_leak_key(ca: CertificateAuthority) -> None:
    kp = ca.issue("east")
    assert b"PRIVATE" not in repr(kp).encode()
    assert "PRIVATE" not in repr(ca)


# ---------------------------------------------------------------- leaves


def _check_leaf(leaf_pem: bytes, ca: CertificateAuthority, name: str,
                role: Role = Role.SERVER) -> x509.Certificate:
    leaf = _cert(leaf_pem)
    ca_cert = _cert(ca.cert_pem)
    assert leaf.issuer == ca_cert.subject
    assert leaf.subject.rfc4514_string() == f"CN={name}"
    leaf.verify_directly_issued_by(ca_cert)

    bc = _ext(leaf, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=False, path_length=None)
    ku = _ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature  # type: ignore[attr-defined]
    assert not ku.value.key_cert_sign  # type: ignore[attr-defined]
    eku = _ext(leaf, x509.ExtendedKeyUsage).value
    assert list(eku) == [role.value]  # type: ignore[call-overload]
    ski = _ext(leaf, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    aki = _ext(leaf, x509.AuthorityKeyIdentifier).value
    ca_ski = _ext(ca_cert, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest  # type: ignore[attr-defined]
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [name]  # type: ignore[attr-defined]

    now = datetime.now(UTC)
    assert now - timedelta(minutes=6) < leaf.not_valid_before_utc <= now - timedelta(minutes=4)
    return leaf


def _verify_chain(ca: CertificateAuthority, leaf_pem: bytes, name: str,
                  role: Role = Role.SERVER) -> None:
    # cryptography's RFC 5280 verifier is stricter than OpenSSL's defaults.
    store = verification.Store([_cert(ca.cert_pem)])
    builder = verification.PolicyBuilder().store(store)
    if role is Role.SERVER:
        builder.build_server_verifier(x509.DNSName(name)).verify(_cert(leaf_pem), [])
    else:
        builder.build_client_verifier().verify(_cert(leaf_pem), [])


@pytest.mark.parametrize("role", list(Role))
def test_issue_and_verify_chain(ca: CertificateAuthority, role: Role) -> None:
    kp = ca.issue("east-1", role=role)
    assert isinstance(kp, KeyPair)
    leaf = _check_leaf(kp.cert_pem, ca, "east-1", role)
    key = serialization.load_pem_private_key(kp.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == leaf.public_key()
    _verify_chain(ca, kp.cert_pem, "east-1", role)


def test_issue_serials_are_random(ca: CertificateAuthority) -> None:
    a, b = _cert(ca.issue("east").cert_pem), _cert(ca.issue("east").cert_pem)
    assert a.serial_number != b.serial_number


def test_leaf_clamped_to_ca_lifetime() -> None:
    short = CertificateAuthority.generate("short", valid_days=10)
    leaf = _cert(short.issue("east").cert_pem)
    assert leaf.not_valid_after_utc == _cert(short.cert_pem).not_valid_after_utc


def test_foreign_ca_chain_fails(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    with pytest.raises(verification.VerificationError):
        _verify_chain(ca, other_ca.issue("west").cert_pem, "west")


# ---------------------------------------------------------------- CSRs


def test_sign_csr_round_trip(ca: CertificateAuthority) -> None:
    key_pem, csr_pem = certs.make_csr("east")
    assert b"BEGIN CERTIFICATE REQUEST" in csr_pem
    cert_pem = ca.sign_csr(csr_pem, expected_name="east", valid_days=30)
    leaf = _check_leaf(cert_pem, ca, "east", Role.CLIENT)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == leaf.public_key()
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(days=30, minutes=5)
    _verify_chain(ca, cert_pem, "east", Role.CLIENT)


def test_sign_csr_ed25519(ca: CertificateAuthority) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = _build_csr(key, [x509.NameAttribute(NameOID.COMMON_NAME, "edsite")])
    leaf = _check_leaf(ca.sign_csr(csr), ca, "edsite", Role.CLIENT)
    assert isinstance(leaf.public_key(), ed25519.Ed25519PublicKey)


def _build_csr(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
    attrs: list[x509.NameAttribute[str]],
    extensions: Sequence[x509.ExtensionType] = (),
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algo).public_bytes(serialization.Encoding.PEM)


def test_sign_csr_bad_signature(ca: CertificateAuthority) -> None:
    _, csr_pem = certs.make_csr("east")
    der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"east", b"eves", 1)  # signed content changes, signature does not
    assert tampered != der
    with pytest.raises(CertError, match=r"^CSR signature does not verify$"):
        ca.sign_csr(_pem(tampered, "CERTIFICATE REQUEST"))


def test_sign_csr_wrong_expected_name(ca: CertificateAuthority) -> None:
    _, csr_pem = certs.make_csr("east")
    with pytest.raises(CertError, match="CSR is for 'east', expected 'west'"):
        ca.sign_csr(csr_pem, expected_name="west")


def test_sign_csr_oversized(ca: CertificateAuthority) -> None:
    big = b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * 17000
    with pytest.raises(CertError, match="CSR too large"):
        ca.sign_csr(big)


def test_sign_csr_missing_cn(ca: CertificateAuthority) -> None:
    csr = _build_csr(
        ec.generate_private_key(ec.SECP256R1()),
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme")],
    )
    with pytest.raises(CertError, match="CSR has no common name"):
        ca.sign_csr(csr)


def test_sign_csr_garbage(ca: CertificateAuthority) -> None:
    with pytest.raises(CertError, match="not a valid PEM"):
        ca.sign_csr(b"hello")


def test_sign_csr_invalid_cn_refused(ca: CertificateAuthority) -> None:
    csr = _build_csr(
        ec.generate_private_key(ec.SECP256R1()),
        [x509.NameAttribute(NameOID.COMMON_NAME, "evil.example/../x")],
    )
    with pytest.raises(CertError, match="invalid name"):
        ca.sign_csr(csr)


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_sign_csr_other_ec_curves_refused(
    ca: CertificateAuthority, curve: ec.EllipticCurve
) -> None:
    csr = _build_csr(ec.generate_private_key(curve), [x509.NameAttribute(NameOID.COMMON_NAME, "e")])
    with pytest.raises(CertError, match="EC P-256 or Ed25519"):
        ca.sign_csr(csr)


def test_sign_csr_rsa_refused(ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = _build_csr(key, [x509.NameAttribute(NameOID.COMMON_NAME, "east")])
    with pytest.raises(CertError, match="EC P-256 or Ed25519"):
        ca.sign_csr(csr)


def test_sign_csr_ignores_requested_extensions(ca: CertificateAuthority) -> None:
    csr = _build_csr(
        ec.generate_private_key(ec.SECP256R1()),
        [x509.NameAttribute(NameOID.COMMON_NAME, "east")],
        [
            x509.BasicConstraints(ca=True, path_length=None),
            x509.SubjectAlternativeName([x509.DNSName("west"), x509.DNSName("*.example")]),
        ],
    )
    # asserts ca=False, SAN == ["east"]
    leaf = _check_leaf(ca.sign_csr(csr), ca, "east", Role.CLIENT)
    assert len(leaf.extensions) == 6


# ---------------------------------------------------------------- signatures and info


def test_sign_bytes_and_verify(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    data = b"link-token:east:12345"
    sig = ca.sign_bytes(data)
    assert certs.verify_signature(ca.cert_pem, data, sig) is True
    assert certs.verify_signature(ca.cert_pem, data + b"x", sig) is False
    assert certs.verify_signature(other_ca.cert_pem, data, sig) is False
    assert certs.verify_signature(ca.cert_pem, data, sig[:-1] + bytes([sig[-1] ^ 1])) is False


@pytest.mark.parametrize(
    ("ca_pem", "sig"),
    [(b"garbage", b"sig"), (b"", b""), (None, b"sig"), (b"ok", None)],
)
def test_verify_signature_never_raises(
    ca: CertificateAuthority, ca_pem: bytes | None, sig: bytes | None
) -> None:
    real_ca = ca.cert_pem if ca_pem == b"ok" else ca_pem
    assert certs.verify_signature(real_ca, b"data", sig) is False  # type: ignore[arg-type]
    assert certs.verify_signature(ca.cert_pem, b"data", b"\x30\x00") is False


def test_verify_signature_wrong_cert_is_false(ca: CertificateAuthority) -> None:
    # A cert with a different key (here a leaf) cannot have made the signature.
    kp = ca.issue("east")
    assert certs.verify_signature(kp.cert_pem, b"d", ca.sign_bytes(b"d")) is False


def test_fingerprint_format(ca: CertificateAuthority) -> None:
    fp = certs.fingerprint(ca.cert_pem)
    der = _cert(ca.cert_pem).public_bytes(serialization.Encoding.DER)
    assert fp == "sha256:" + hashlib.sha256(der).hexdigest()
    assert fp.startswith("sha256:") and len(fp) == 7 + 64 and fp == fp.lower()
    with pytest.raises(CertError):
        certs.fingerprint(b"nope")


def test_common_names_and_not_after(ca: CertificateAuthority) -> None:
    kp = ca.issue("east", valid_days=10)
    assert certs.cert_common_name(kp.cert_pem) == "east"
    assert certs.cert_common_name(ca.cert_pem) == "west CA"
    der = _cert(kp.cert_pem).public_bytes(serialization.Encoding.DER)
    assert certs.peer_common_name(der) == "east"
    with pytest.raises(CertError, match="DER"):
        certs.peer_common_name(b"\x30\x03junk")
    expiry = certs.cert_not_after(kp.cert_pem)
    assert expiry.utcoffset() == timedelta(0)
    assert abs(expiry - (datetime.now(UTC) + timedelta(days=10))) < timedelta(minutes=1)


# ---------------------------------------------------------------- PEM files


def test_save_pem_private_permissions_and_atomic(tmp_path: Path, ca: CertificateAuthority) -> None:
    target = tmp_path / "site.key"
    certs.save_pem(target, ca.key_pem, private=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == ca.key_pem
    certs.save_pem(target, b"-----BEGIN X-----\n-----END X-----\n", private=True)
    assert target.read_bytes().startswith(b"-----BEGIN X")
    assert os.listdir(tmp_path) == ["site.key"]  # no temp files left behind


def test_save_pem_public_mode_ignores_umask(tmp_path: Path, ca: CertificateAuthority) -> None:
    old = os.umask(0o077)
    try:
        certs.save_pem(tmp_path / "ca.crt", ca.cert_pem, private=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ca.crt").stat().st_mode) == 0o644
    assert certs.load_pem(tmp_path / "ca.crt") == ca.cert_pem


def test_save_pem_failure_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.pem"
    certs.save_pem(target, b"old", private=True)

    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(CertError, match=r"cannot write .*a\.pem"):
        certs.save_pem(target, b"new", private=True)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.pem"]


def test_save_pem_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="nodir"):
        certs.save_pem(tmp_path / "nodir" / "x.pem", b"x", private=False)


def test_load_pem_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(CertError, match=r"missing\.pem"):
        certs.load_pem(missing)
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not pem at all")
    with pytest.raises(CertError, match=r"junk\.pem is not a PEM file"):
        certs.load_pem(junk)
    with pytest.raises(CertError, match="cannot read"):
        certs.load_pem(tmp_path)  # a directory


# ---------------------------------------------------------------- SSL contexts


def test_context_settings(ca: CertificateAuthority) -> None:
    kp = ca.issue("west")
    srv = certs.server_context(cert_pem=kp.cert_pem, key_pem=kp.key_pem, ca_pem=ca.cert_pem)
    assert srv.minimum_version == ssl.TLSVersion.TLSv1_3
    assert srv.verify_mode == ssl.CERT_REQUIRED
    opt = certs.server_context(
        cert_pem=kp.cert_pem, key_pem=kp.key_pem, ca_pem=ca.cert_pem, require_client_cert=False
    )
    assert opt.verify_mode == ssl.CERT_OPTIONAL
    cli = certs.client_context(cert_pem=None, key_pem=None, ca_pem=ca.cert_pem)
    assert cli.check_hostname and cli.verify_mode == ssl.CERT_REQUIRED
    assert cli.minimum_version == ssl.TLSVersion.TLSv1_3
    assert len(cli.get_ca_certs()) == 1  # our CA is the only trust anchor


def test_context_temp_files_removed(
    ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    kp = ca.issue("west")
    certs.server_context(cert_pem=kp.cert_pem, key_pem=kp.key_pem, ca_pem=ca.cert_pem)
    certs.client_context(cert_pem=kp.cert_pem, key_pem=kp.key_pem, ca_pem=ca.cert_pem)
    with pytest.raises(CertError):
        certs.server_context(cert_pem=kp.cert_pem, key_pem=ca.key_pem, ca_pem=ca.cert_pem)
    assert os.listdir(tmp_path) == []


def test_context_errors(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    kp, other = ca.issue("west"), other_ca.issue("west")
    with pytest.raises(CertError, match="both"):
        certs.client_context(cert_pem=kp.cert_pem, key_pem=None, ca_pem=ca.cert_pem)
    with pytest.raises(CertError, match="cannot load certificate/key"):
        certs.server_context(cert_pem=kp.cert_pem, key_pem=other.key_pem, ca_pem=ca.cert_pem)
    with pytest.raises(CertError, match="not a CA"):
        certs.server_context(cert_pem=kp.cert_pem, key_pem=kp.key_pem, ca_pem=kp.cert_pem)
    with pytest.raises(CertError, match="CA certificate"):
        certs.client_context(cert_pem=None, key_pem=None, ca_pem=b"junk")
