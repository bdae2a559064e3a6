"""The site directory: where a site's config, keys, links and grants live.

    <site-dir>/site.toml           config (human-editable)
    <site-dir>/ca.crt, ca.key      the site's CA (issues link certificates to redeemers)
    <site-dir>/router.crt/.key     this router's server certificate, signed by its CA
    <site-dir>/identity.key        Ed25519 key; the router id is derived from it
    <site-dir>/links/NAME.toml     a link this site dials, with NAME.crt/.key/-ca.crt
    <data-dir>/grants.json         token grants this site issued (code hashes, uses left)
    <data-dir>/issued.json         unexpired link certificates its CA signed (certrecords)
    <data-dir>/revoked.json        the sites it revoked, for good (certrecords)
    <data-dir>/renewed/            with a data dir of its own, the certificates the router
                                   renewed (router.site.renewed)
    <site-dir>/run/                control socket and pid file while the router runs

A site directory may be read-only (a Kubernetes Secret and ConfigMap): then
$SITECTL_RUN_DIR holds what run/ would and $SITECTL_DATA_DIR (<data-dir>, else the site
dir) what the router writes (grants, issued certificates, revocations), each a directory
of one site, e.g. an emptyDir (a PersistentVolumeClaim to keep them across restarts).
Renewed certificates go there too (router.site.renewed), and are used in place of the
mounted ones they were renewed from.

Here: the paths, the edit lock, loading the config and keys. Links: `linkfiles`;
creating a site: `create`; picking its link port: `registry`; grants: `tokens`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import certs
from router.site import renewed
from router.site.atomic import write_atomic
from router.site.config import SiteConfig, load_config, save_config
from router.site.errors import SiteError
from router.site.linkfiles import LinkFiles

# An offline edit holds the edit lock for milliseconds and a starting router for about
# a second; a live call under it is bounded by sitectl's own timeout.
EDIT_LOCK_WAIT_S = 45.0
SHARED_SOCKET_BASE = Path("/tmp")  # control sockets of site dirs too long for AF_UNIX
ENV_SITE_DIR = "SITECTL_SITE_DIR"
ENV_RUN_DIR = "SITECTL_RUN_DIR"  # instead of <site-dir>/run
ENV_DATA_DIR = "SITECTL_DATA_DIR"  # instead of <site-dir> for the files the router writes


def data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vanrouter" / "sites"


def resolve_site_dir(site_dir: str | None, site_name: str | None) -> Path:
    """--site-dir, then $SITECTL_SITE_DIR, then --site NAME under the XDG data dir."""
    if site_dir:
        return Path(site_dir).expanduser().resolve()
    env = os.environ.get(ENV_SITE_DIR)
    if env:
        return Path(env).expanduser().resolve()
    home = data_home()
    if site_name:
        return home / site_name
    existing = sorted(p.name for p in home.glob("*") if (p / "site.toml").exists())
    if len(existing) == 1:
        return home / existing[0]
    if not existing:
        raise SiteError("no site given and none exists: run `sitectl init NAME` first")
    raise SiteError(f"several sites exist ({', '.join(existing)}): choose one with --site NAME")


class Site(LinkFiles):
    """A site directory: its paths, the edit lock, its config and keys (and, from
    LinkFiles, its links)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        run, data = os.environ.get(ENV_RUN_DIR), os.environ.get(ENV_DATA_DIR)
        self.run_dir = Path(run) if run else root / "run"
        self.data_dir = Path(data) if data else root

    # ---- paths
    @property
    def config_path(self) -> Path:
        return self.root / "site.toml"

    @property
    def grants_path(self) -> Path:
        return self.data_dir / "grants.json"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "router.pid"

    @property
    def control_path(self) -> Path:
        """The control socket; AF_UNIX paths are capped near 108 bytes, so long
        site paths get a short per-user path keyed by a hash of the site dir."""
        path = self.run_dir / "control.sock"
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return SHARED_SOCKET_BASE / f"vanrouter-{os.getuid()}" / f"{digest}.sock"

    def check_control_dir(self, *, create: bool) -> bool:
        """When the control socket lives in /tmp (long site paths), its directory must
        be ours: a real directory (not a symlink), owned by this user, closed to others.
        Another local user who pre-created /tmp/vanrouter-UID could otherwise swap the
        router's socket for theirs and answer `sitectl token issue` with their token.
        Creates it (0700) when `create`; False if it does not exist. SiteError if unsafe."""
        directory = self.control_path.parent
        if directory == self.run_dir:
            return True  # inside the site dir, which is the user's own
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            return False
        why = None
        if not stat.S_ISDIR(st.st_mode):
            why = "is not a directory (a symlink?)"
        elif st.st_uid != os.getuid():
            why = f"belongs to uid {st.st_uid}, not to this user ({os.getuid()})"
        elif st.st_mode & 0o077:
            why = f"is open to other users (mode {stat.S_IMODE(st.st_mode):o})"
        if why is not None:
            raise SiteError(f"{directory} {why}: refusing to use a control socket there "
                            f"(remove it, or use a shorter site directory path)")
        return True

    @contextlib.contextmanager
    def edit_lock(self, wait: float = EDIT_LOCK_WAIT_S) -> Iterator[None]:
        """Serialize changes to the site's files: an offline edit holds it from reading
        site.toml (and links/) to saving, a starting router from reading them until its
        control socket answers. So an edit either reaches site.toml before a router reads
        it, or finds the router answering and goes through it; none is lost to another
        edit's or the router's save of what it read before."""
        fd = self._open_edit_lock()
        if fd is None:  # nobody can write here, so no edit can be lost either
            yield
            return
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise SiteError(f"site {self.root} is busy (another sitectl or a "
                                        f"starting router holds {self.run_dir}/edit.lock "
                                        f"for over {wait:g} s); try again") from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # drops the lock

    def _open_edit_lock(self) -> int | None:
        try:
            self.run_dir.mkdir(mode=0o700, exist_ok=True)
            return os.open(self.run_dir / "edit.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                           0o600)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                return None
            raise

    def exists(self) -> bool:
        return self.config_path.exists()

    def require(self) -> None:
        if not self.exists():
            raise SiteError(f"no site at {self.root} (run `sitectl init NAME` first)")

    # ---- config and identity
    def config(self) -> SiteConfig:
        self.require()
        return load_config(self.config_path)

    def save_config(self, config: SiteConfig) -> None:
        try:
            save_config(self.config_path, config)
        except OSError as exc:  # disk full, read-only, a directory in the way
            raise SiteError(f"cannot save {self.config_path}: {exc.strerror or exc}; "
                            "nothing was changed") from None

    def ca(self) -> certs.CertificateAuthority:
        return certs.CertificateAuthority.from_pem(
            certs.load_pem(self.root / "ca.crt"), certs.load_pem(self.root / "ca.key")
        )

    def router_keypair(self) -> certs.KeyPair:
        """The link port's server certificate: the mounted one, or its renewal kept in
        the data dir (router.site.renewed)."""
        mounted = certs.KeyPair(key_pem=certs.load_pem(self.root / "router.key"),
                                cert_pem=certs.load_pem(self.root / "router.crt"))
        renewal = renewed.load(self.renewed_router_path, mounted_cert_pem=mounted.cert_pem,
                               ca_pem=certs.load_pem(self.root / "ca.crt"))
        if renewal is None:
            return mounted
        return certs.KeyPair(key_pem=renewal.key_pem, cert_pem=renewal.cert_pem)

    @property
    def renewed_router_path(self) -> Path:
        return self.data_dir / "renewed" / "router.json"

    def save_router_keypair(self, keypair: certs.KeyPair) -> None:
        """A renewed server certificate, kept where the router writes: with a data dir of
        its own, there (one atomic file); else as router.key and router.crt, two atomic
        writes, the key first: a crash between them leaves a key that does not match the
        certificate, which the router's start notices and repairs by issuing a new one
        (it holds the CA)."""
        separate = self.data_dir != self.root
        try:
            if separate:
                renewed.save(self.renewed_router_path,
                             mounted_cert_pem=certs.load_pem(self.root / "router.crt"),
                             cert_pem=keypair.cert_pem, key_pem=keypair.key_pem,
                             now=time.time())
            else:
                write_atomic(self.root / "router.key", keypair.key_pem, mode=0o600)
                write_atomic(self.root / "router.crt", keypair.cert_pem, mode=0o644)
        except OSError as exc:
            where = self.renewed_router_path.parent if separate else self.root
            raise SiteError(f"cannot save the renewed router certificate in {where}: "
                            f"{exc.strerror or exc}") from None

    @property
    def issued_path(self) -> Path:
        return self.data_dir / "issued.json"

    @property
    def revoked_path(self) -> Path:
        return self.data_dir / "revoked.json"

    def identity_key(self) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key(
            certs.load_pem(self.root / "identity.key"), password=None
        )
        if not isinstance(key, Ed25519PrivateKey):
            raise SiteError(f"{self.root / 'identity.key'}: not an Ed25519 key")
        return key

