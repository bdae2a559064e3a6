"""The router's own server certificate (the one its link port presents): renewed from
the site's own CA, locally, two thirds of the way through its life, as the dialled links'
client certificates are renewed over the links. Connections already up keep their TLS
session; the next one accepted gets the new certificate."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

import certs
from router.daemon.identity import Identity
from router.errors import VanError

log = logging.getLogger(__name__)

MAX_SLEEP_S = 3600.0  # wake hourly anyway: the wall clock may jump
RETRY_S = 60.0  # after a renewal that could not be saved (disk full)


@dataclass(slots=True)
class ServerCertState:
    """What `status` shows of the server certificate."""

    renewed: float | None = None  # epoch of the last renewal in this run
    error: str | None = None


def _why_renew(identity: Identity, now: float, lifetime_s: float) -> str | None:
    """Why the server certificate must be renewed now, or None."""
    pair = identity.keypair
    if not certs.key_matches(pair.cert_pem, pair.key_pem):
        return "router.key does not match router.crt (a renewal cut short?)"
    if not certs.issued_by(pair.cert_pem, identity.ca.cert_pem):
        return None  # put there by hand, from another CA: not ours to replace
    info = certs.leaf_info(pair.cert_pem)
    if info.expires.timestamp() <= now:
        return f"it expired at {info.expires:%Y-%m-%d %H:%M:%S} UTC"
    if info.renew_at.timestamp() <= now:
        return "two thirds of its lifetime have passed"
    if info.expires.timestamp() - now > lifetime_s + 1:
        return "link_cert_lifetime_s is shorter than what it has left"
    return None


def renew_server_cert(identity: Identity, lifetime_s: float, state: ServerCertState,
                      now: float, why: str) -> None:
    pair = identity.ca.issue(identity.name, role=certs.Role.SERVER, lifetime_s=lifetime_s)
    identity.set_server_keypair(pair)
    state.renewed, state.error = now, None
    log.info("server certificate renewed (%s), valid until %s", why,
             f"{certs.leaf_info(pair.cert_pem).expires:%Y-%m-%d %H:%M:%S} UTC")


def check_at_start(identity: Identity, lifetime_s: float, state: ServerCertState) -> None:
    """Before the link port opens: a certificate that expired while the router was off
    (or does not match its key) is replaced at once; no network needed."""
    now = time.time()
    why = _why_renew(identity, now, lifetime_s)
    if why is not None:
        renew_server_cert(identity, lifetime_s, state, now, why)


async def keep_renewed(identity: Identity, lifetime_s: Callable[[], float],
                       state: ServerCertState, clock: Callable[[], float] = time.time) -> None:
    if not certs.issued_by(identity.keypair.cert_pem, identity.ca.cert_pem):
        log.warning("router.crt is not from this site's CA: it is not renewed")
        return
    while True:
        due = certs.leaf_info(identity.keypair.cert_pem).renew_at.timestamp()
        now = clock()
        if due > now:
            await trio.sleep(min(due - now, MAX_SLEEP_S))
            continue
        try:
            renew_server_cert(identity, lifetime_s(), state, clock(),
                              "two thirds of its lifetime have passed")
            # One cut short (by the CA's own expiry) is due at once: do not spin.
            await trio.sleep(1.0)
        except (VanError, certs.CertError) as exc:
            state.error = str(exc)
            log.error("server certificate renewal failed (retry in %g s): %s", RETRY_S, exc)
            await trio.sleep(RETRY_S)
