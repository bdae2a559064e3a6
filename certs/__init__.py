"""In-memory certificate handling for site CAs, link certificates and TLS contexts.

Pure functions over PEM/DER bytes; the only file I/O is save_pem/load_pem (and
the short-lived private temp file ssl needs inside the context builders).
"""

from certs.authority import CertificateAuthority, KeyPair, Role, make_csr
from certs.errors import CertError
from certs.info import (
    cert_common_name,
    cert_not_after,
    fingerprint,
    identity_mismatch,
    peer_common_name,
    verify_signature,
)
from certs.lifetime import (
    LeafInfo,
    csr_key_sha256,
    issued_by,
    key_matches,
    leaf_info,
    leaf_info_der,
)
from certs.store import load_pem, save_pem
from certs.tls import client_context, server_context
from certs.verify import check_issued_leaf, peer_router_id, router_id_of

__all__ = [
    "CertError",
    "CertificateAuthority",
    "KeyPair",
    "LeafInfo",
    "Role",
    "cert_common_name",
    "cert_not_after",
    "check_issued_leaf",
    "client_context",
    "csr_key_sha256",
    "fingerprint",
    "identity_mismatch",
    "issued_by",
    "key_matches",
    "leaf_info",
    "leaf_info_der",
    "load_pem",
    "make_csr",
    "peer_common_name",
    "peer_router_id",
    "router_id_of",
    "save_pem",
    "server_context",
    "verify_signature",
]
