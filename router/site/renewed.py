"""Certificates renewed by a router whose site dir is not its to write (a Kubernetes Secret
mounted read-only, with $SITECTL_DATA_DIR set): kept in the data dir instead.

    <data-dir>/renewed/router.json       the router's server certificate and key
    <data-dir>/renewed/links/NAME.json   the client certificate and key of link NAME

Each record names the mounted certificate it descends from (its fingerprint). The renewed
copy is used in place of the mounted one only while that one is still mounted: credentials
mounted anew (a link created again from a new token, a Secret applied again) win, and the
copy left from the old ones is ignored. A record that does not hold together (cut short,
edited by hand, a key not matching its certificate, a certificate from another CA) is
ignored too: the mounted certificate is what the site started with, and a renewal that
cannot be used costs at worst a new token, never a router that does not start.

One file per credential, written atomically (0600: it holds the key), so a crash never
leaves a certificate without its key.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import certs
from router.site.atomic import read_regular, write_atomic

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 64 * 1024  # a certificate and a key: about 2 KiB
_FIELDS = {"base", "renewed", "cert", "key"}


@dataclass(frozen=True, slots=True)
class Renewed:
    cert_pem: bytes
    key_pem: bytes
    renewed: float  # when (epoch s)


def save(path: Path, *, mounted_cert_pem: bytes, cert_pem: bytes, key_pem: bytes,
         now: float) -> None:
    """Record a renewal of the credentials whose mounted certificate is `mounted_cert_pem`.
    OSError if it cannot be written."""
    doc = {"base": certs.fingerprint(mounted_cert_pem), "renewed": now,
           "cert": cert_pem.decode("ascii"), "key": key_pem.decode("ascii")}
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(doc).encode(), mode=0o600)


def load(path: Path, *, mounted_cert_pem: bytes, ca_pem: bytes) -> Renewed | None:
    """The renewal recorded at `path` if it descends from the mounted certificate and holds
    together (its key matches, `ca_pem` issued it); else None, saying why in the log
    unless there is simply none."""
    try:
        raw = read_regular(path, MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s: ignored: %s", path, exc.strerror or exc)
        return None
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or set(doc) != _FIELDS:
            raise ValueError(f"expected the fields {sorted(_FIELDS)}")
        base, renewed, cert, key = doc["base"], doc["renewed"], doc["cert"], doc["key"]
        if not all(isinstance(v, str) for v in (base, cert, key)) or isinstance(renewed, bool) \
                or not isinstance(renewed, int | float):
            raise ValueError("a field has the wrong type")
        if base != certs.fingerprint(mounted_cert_pem):
            return None  # new credentials were mounted since: they win
        cert_pem, key_pem = cert.encode("ascii"), key.encode("ascii")
        if not certs.key_matches(cert_pem, key_pem):
            raise ValueError("its key does not match its certificate")
        if not certs.issued_by(cert_pem, ca_pem):
            raise ValueError("its certificate is not from the expected CA")
    except (ValueError, UnicodeError, RecursionError, certs.CertError) as exc:
        log.warning("%s: ignored (the mounted certificate is used): %s", path, exc)
        return None
    return Renewed(cert_pem=cert_pem, key_pem=key_pem, renewed=float(renewed))
