"""`sitectl init`: check the arguments, then create a site directory (CA, router
certificate, identity key, config last) without ever touching an existing one."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import certs
from router.names import NAME_RE
from router.site.config import SiteConfig, dump_config, parse_config
from router.site.directory import Site
from router.site.errors import SiteError
from router.site.registry import FIRST_LINK_PORT, claimed_ports, pick_link_port, remember

# What init writes; any of them without site.toml is a half-made or foreign site.
SITE_FILES = ("site.toml", "ca.key", "ca.crt", "router.key", "router.crt", "identity.key",
              "links", "grants.json", "run")


def check_init_args(root: Path, name: str, *, host: str, link_port: int | None, bind: str,
                    advertise: tuple[str, ...] = ()) -> None:
    """Refuse bad arguments to init (SiteError or ConfigError) before anything is
    written; the caller may report these as usage errors."""
    if not NAME_RE.fullmatch(name):
        raise SiteError(f"{name!r} is not a valid site name (letters, digits, '.', '_', '-')")
    if link_port is not None and not 1 <= link_port <= 65535:
        raise SiteError(f"--link-port {link_port} is not a valid port")
    parse_config(Site(root).config_path, dump_config(  # bad --host/--bind/--advertise
        SiteConfig(name=name, host=host, link_port=link_port or FIRST_LINK_PORT, bind=bind,
                   advertise=advertise)))
    owner = claimed_ports().get(link_port or 0)
    if owner is not None and owner.resolve() != root.resolve():
        raise SiteError(f"--link-port {link_port} is already the link port of the site "
                        f"in {owner}")


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
              advertise: tuple[str, ...] = ()) -> Site:
    """Create a new site directory; refuses to touch an existing one."""
    check_init_args(root, name, host=host, link_port=link_port, bind=bind, advertise=advertise)
    _check_site_dir(root)
    site = Site(root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = link_port if link_port is not None else pick_link_port(bind)
    ca = certs.CertificateAuthority.generate(name)
    router = ca.issue(name, role=certs.Role.SERVER)  # the site's only server certificate
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
                                advertise=advertise))
    remember(root)
    return site
