"""TLS 1.3 mutual-auth SSLContexts built from in-memory PEM."""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile

from cryptography import x509

from certs._x509util import load_cert, load_private_key
from certs.errors import CertError


def server_context(
    *, cert_pem: bytes, key_pem: bytes, ca_pem: bytes, require_client_cert: bool = True
) -> ssl.SSLContext:
    """Server side of a link: presents cert_pem, trusts only ca_pem for clients.

    With require_client_cert=False a client may omit its certificate (token
    redemption), but one that is presented is still verified against ca_pem.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common_setup(ctx, ca_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    _load_chain(ctx, cert_pem, key_pem)
    return ctx


def client_context(
    *, cert_pem: bytes | None, key_pem: bytes | None, ca_pem: bytes
) -> ssl.SSLContext:
    """Client side of a link: verifies the server against ca_pem and its SAN.

    Connect with server_hostname=<peer site name>. cert_pem/key_pem may both be
    None to connect without a client certificate.
    """
    if (cert_pem is None) != (key_pem is None):
        raise CertError("client cert_pem and key_pem must both be given or both be None")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _common_setup(ctx, ca_pem)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert_pem is not None and key_pem is not None:
        _load_chain(ctx, cert_pem, key_pem)
    return ctx


def _common_setup(ctx: ssl.SSLContext, ca_pem: bytes) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # Validate first so a bad CA gives a CertError, not an opaque SSLError.
    ca = load_cert(ca_pem, "CA certificate")
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CertError("trust anchor lacks basicConstraints; not a CA") from None
    if not bc.ca:
        raise CertError("trust anchor is not a CA certificate")
    try:
        # The site CA is the only trust anchor: no system store is ever loaded.
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise CertError(f"cannot load CA certificate: {exc}") from exc


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    load_cert(cert_pem)  # parse up front for a clear error message
    load_private_key(key_pem)
    # The ssl module only loads certificates/keys from files. Write them to a
    # 0600 file inside a fresh 0700 directory and remove it straight after.
    try:
        tmpdir = tempfile.mkdtemp(prefix="certs-")
    except OSError as exc:
        raise CertError(f"cannot create private temp dir for ssl: {exc}") from exc
    try:
        path = os.path.join(tmpdir, "chain.pem")
        with open(path, "xb", opener=_private_opener) as f:
            f.write(key_pem.rstrip(b"\n") + b"\n" + cert_pem)
        try:
            # A password callback that returns b"" means an encrypted key fails
            # instead of OpenSSL prompting on the terminal.
            ctx.load_cert_chain(certfile=path, password=lambda: b"")
        except ssl.SSLError as exc:
            raise CertError(f"cannot load certificate/key: {exc.reason or exc}") from exc
    except OSError as exc:
        raise CertError(f"cannot stage certificate for ssl: {exc}") from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _private_opener(path: str, flags: int) -> int:
    # Mode 0600 from creation: the key is never readable by anyone else.
    return os.open(path, flags | os.O_CLOEXEC, 0o600)
