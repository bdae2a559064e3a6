"""In-memory certificate handling for site CAs, link certificates and TLS contexts.

Pure functions over PEM/DER bytes; the only file I/O is save_pem/load_pem (and
the short-lived private temp file ssl needs inside the context builders).
"""

from certs.authority import CertificateAuthority, KeyPair, make_csr
from certs.errors import CertError
from certs.info import (
    cert_common_name,
    cert_not_after,
    fingerprint,
    identity_mismatch,
    peer_common_name,
    verify_signature,
)
from certs.store import load_pem, save_pem
from certs.tls import client_context, server_context

__all__ = [
    "CertError",
    "CertificateAuthority",
    "KeyPair",
    "cert_common_name",
    "cert_not_after",
    "client_context",
    "fingerprint",
    "identity_mismatch",
    "load_pem",
    "make_csr",
    "peer_common_name",
    "save_pem",
    "server_context",
    "verify_signature",
]
