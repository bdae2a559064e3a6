"""Real mTLS handshakes over memory streams with certificates from the certs package."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

import certs
from certs import CertificateAuthority, KeyPair, Role

# ---------------------------------------------------------------- real mTLS handshakes


@dataclass
class Outcome:
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    server_peer: object = None
    client_peer_der: bytes | None = None
    received: dict[str, bytes | bytearray] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None


async def _mtls(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> Outcome:
    client_raw, server_raw = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_raw, server_ctx, server_side=True)
    client = trio.SSLStream(client_raw, client_ctx, server_hostname=hostname)
    out = Outcome()

    async def run_server() -> None:
        try:
            await server.do_handshake()
            out.server_peer = server.getpeercert()
            out.received["server"] = await server.receive_some(100)
            await server.send_all(b"pong")
        except trio.BrokenResourceError as exc:
            out.server_error = exc
            # Close the transport so the peer sees EOF instead of hanging.
            await trio.aclose_forcefully(server)

    async def run_client() -> None:
        try:
            await client.do_handshake()
            out.client_peer_der = client.getpeercert(binary_form=True)
            # In TLS 1.3 the server checks our cert after our handshake ends,
            # so a rejection only shows up on the first read.
            await client.send_all(b"ping")
            out.received["client"] = await client.receive_some(100)
        except trio.BrokenResourceError as exc:
            out.client_error = exc
            await trio.aclose_forcefully(client)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server)
            nursery.start_soon(run_client)
    return out


def _contexts(
    ca: CertificateAuthority,
    server_kp: KeyPair,
    client_kp: KeyPair | None,
    *,
    require_client_cert: bool = True,
    strict: bool = False,
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    srv = certs.server_context(
        cert_pem=server_kp.cert_pem,
        key_pem=server_kp.key_pem,
        ca_pem=ca.cert_pem,
        require_client_cert=require_client_cert,
    )
    cli = certs.client_context(
        cert_pem=client_kp.cert_pem if client_kp else None,
        key_pem=client_kp.key_pem if client_kp else None,
        ca_pem=ca.cert_pem,
    )
    if strict:
        # Python 3.13+ sets this by default; make sure our certs survive it.
        srv.verify_flags |= ssl.VERIFY_X509_STRICT
        cli.verify_flags |= ssl.VERIFY_X509_STRICT
    return srv, cli


@pytest.mark.parametrize("strict", [False, True])
async def test_mtls_same_ca_succeeds(ca: CertificateAuthority, strict: bool) -> None:
    srv, cli = _contexts(ca, ca.issue("west"), ca.issue("east", role=Role.CLIENT), strict=strict)
    out = await _mtls(srv, cli, "west")
    assert out.ok, (out.server_error, out.client_error)
    assert out.received == {"server": b"ping", "client": b"pong"}
    assert out.client_peer_der is not None
    assert certs.peer_common_name(out.client_peer_der) == "west"
    assert out.server_peer  # verified client certificate dict


async def test_mtls_with_csr_and_ed25519_strict(ca: CertificateAuthority) -> None:
    # A signed CSR is a client certificate (what a redeemer gets), here for an Ed25519 key.
    ed_key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "east_1")])
    ed_csr = (x509.CertificateSigningRequestBuilder().subject_name(subject)
              .sign(ed_key, None).public_bytes(serialization.Encoding.PEM))
    ed_pem = ed_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    client = KeyPair(key_pem=ed_pem, cert_pem=ca.sign_csr(ed_csr, expected_name="east_1"))
    srv, cli = _contexts(ca, ca.issue("west"), client, strict=True)
    out = await _mtls(srv, cli, "west")
    assert out.ok, (out.server_error, out.client_error)
    assert out.received == {"server": b"ping", "client": b"pong"}


async def test_mtls_foreign_client_cert_fails(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    srv, cli = _contexts(ca, ca.issue("west"), None)
    # Client trusts our CA but presents a cert from a foreign CA.
    foreign = other_ca.issue("east", role=Role.CLIENT)
    cli = certs.client_context(
        cert_pem=foreign.cert_pem, key_pem=foreign.key_pem, ca_pem=ca.cert_pem
    )
    out = await _mtls(srv, cli, "west")
    assert out.server_error is not None
    assert "certificate verify failed" in str(out.server_error.__cause__)
    assert out.client_error is not None
    assert "server" not in out.received


async def test_mtls_foreign_client_cert_fails_even_if_optional(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    foreign = other_ca.issue("east", role=Role.CLIENT)
    srv, _ = _contexts(ca, ca.issue("west"), None, require_client_cert=False)
    cli = certs.client_context(
        cert_pem=foreign.cert_pem, key_pem=foreign.key_pem, ca_pem=ca.cert_pem
    )
    out = await _mtls(srv, cli, "west")
    assert out.server_error is not None
    assert "server" not in out.received


async def test_mtls_missing_client_cert_fails_when_required(ca: CertificateAuthority) -> None:
    srv, cli = _contexts(ca, ca.issue("west"), None)
    out = await _mtls(srv, cli, "west")
    assert out.server_error is not None
    assert "server" not in out.received


async def test_mtls_foreign_server_cert_fails(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    srv, cli = _contexts(ca, other_ca.issue("west"), ca.issue("east", role=Role.CLIENT))
    out = await _mtls(srv, cli, "west")
    assert out.client_error is not None
    assert "certificate verify failed" in str(out.client_error.__cause__)


async def test_mtls_hostname_mismatch_fails(ca: CertificateAuthority) -> None:
    srv, cli = _contexts(ca, ca.issue("west"), ca.issue("east", role=Role.CLIENT))
    out = await _mtls(srv, cli, "south")
    assert out.client_error is not None
    assert "Hostname mismatch" in str(out.client_error.__cause__)
    assert out.received == {}


async def test_mtls_optional_server_accepts_no_client_cert(ca: CertificateAuthority) -> None:
    srv, cli = _contexts(ca, ca.issue("west"), None, require_client_cert=False, strict=True)
    out = await _mtls(srv, cli, "west")
    assert out.ok, (out.server_error, out.client_error)
    assert not out.server_peer  # None or {}: no client identity
    assert out.received == {"server": b"ping", "client": b"pong"}


async def test_mtls_optional_server_still_identifies_client(ca: CertificateAuthority) -> None:
    srv, cli = _contexts(ca, ca.issue("west"), ca.issue("east", role=Role.CLIENT),
                         require_client_cert=False)
    out = await _mtls(srv, cli, "west")
    assert out.ok, (out.server_error, out.client_error)
    assert isinstance(out.server_peer, dict)
    assert out.server_peer["subject"] == ((("commonName", "east"),),)
