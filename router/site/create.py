"""`sitectl init`: check the arguments, then create a site directory (CA, router
certificate, identity key, config last) without ever touching an existing one."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import certs
from router.names import NAME_RE
from router.site.config import ADMIN_BIND, Limits, SiteConfig, dump_config, parse_config
from router.site.directory import Site
from router.site.errors import SiteError
from router.site.registry import (
    FIRST_ADMIN_PORT,
    FIRST_LINK_PORT,
    claimed_ports,
    pick_port,
    remember,
)

# What init writes; any of them without site.toml is a half-made or foreign site.
SITE_FILES = ("site.toml", "ca.key", "ca.crt", "router.key", "router.crt", "identity.key",
              "links", "grants.json", "issued.json", "revoked.json", "run")


def check_init_args(root: Path, name: str, *, host: str, link_port: int | None, bind: str,
                    advertise: tuple[str, ...] = (), admin_port: int | None = None,
                    admin_bind: str = ADMIN_BIND) -> None:
    """Refuse bad arguments to init (SiteError or ConfigError) before anything is
    written; the caller may report these as usage errors."""
    if not NAME_RE.fullmatch(name):
        raise SiteError(f"{name!r} is not a valid site name (letters, digits, '.', '_', '-')")
    for flag, port in (("--link-port", link_port), ("--admin-port", admin_port)):
        if port is not None and not 1 <= port <= 65535:
            raise SiteError(f"{flag} {port} is not a valid port")
    if link_port is not None and link_port == admin_port:
        raise SiteError(f"--admin-port {admin_port} is the same as --link-port")
    parse_config(Site(root).config_path, dump_config(  # bad --host/--bind/--advertise
        SiteConfig(name=name, host=host, link_port=link_port or FIRST_LINK_PORT, bind=bind,
                   admin_port=admin_port or 0, admin_bind=admin_bind, advertise=advertise)))
    claimed = claimed_ports()
    for flag, port in (("--link-port", link_port), ("--admin-port", admin_port)):
        owner, what = claimed.get(port or 0, (None, ""))
        if owner is not None and owner.resolve() != root.resolve():
            raise SiteError(f"{flag} {port} is already the {what} port of the site in {owner}")


def _check_site_dir(root: Path) -> None:
    """The site dir must be new, or an empty directory: never overwrite or mix in."""
    if Site(root).exists():
        raise SiteError(f"a site already exists at {root}; refusing to overwrite it")
    if root.exists() and not root.is_dir():
        raise SiteError(f"{root} exists and is not a directory; refusing to create a site there")
    stray = [n for n in SITE_FILES if (root / n).exists()] if root.is_dir() else []
    if stray:
        raise SiteError(f"{root} holds {', '.join(stray)} but no site.toml (a half-made or "
                        f"foreign site); refusing to overwrite: remove them or choose another "
                        f"directory")


def init_site(root: Path, name: str, *, host: str, link_port: int | None, bind: str,
              advertise: tuple[str, ...] = (), admin_port: int | None = None,
              admin_bind: str = ADMIN_BIND) -> Site:
    """Create a new site directory; refuses to touch an existing one. Ports not given
    are picked: the first free one no other site of this user claims."""
    check_init_args(root, name, host=host, link_port=link_port, bind=bind, advertise=advertise,
                    admin_port=admin_port, admin_bind=admin_bind)
    _check_site_dir(root)
    site = Site(root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = link_port or pick_port("link", FIRST_LINK_PORT, bind, taken={admin_port or 0})
    admin = admin_port or pick_port("admin", FIRST_ADMIN_PORT, admin_bind, taken={port})
    ca = certs.CertificateAuthority.generate(name)
    # The site's only server certificate; the router renews it (router.daemon.servercert).
    router = ca.issue(name, role=certs.Role.SERVER,
                      lifetime_s=Limits().link_cert_lifetime_s)
    certs.save_pem(root / "ca.key", ca.key_pem, private=True)
    certs.save_pem(root / "ca.crt", ca.cert_pem, private=False)
    certs.save_pem(root / "router.key", router.key_pem, private=True)
    certs.save_pem(root / "router.crt", router.cert_pem, private=False)
    identity = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    certs.save_pem(root / "identity.key", identity, private=True)
    # The config goes last: a site "exists" only once everything it needs is there.
    site.save_config(SiteConfig(name=name, host=host, link_port=port, bind=bind,
                                admin_port=admin, admin_bind=admin_bind, advertise=advertise))
    remember(root)
    return site
