"""The site directory: where a site's config, keys, links and grants live.

    <site-dir>/site.toml           config (human-editable)
    <site-dir>/ca.crt, ca.key      the site's CA (issues link certificates to redeemers)
    <site-dir>/router.crt/.key     this router's server certificate, signed by its CA
    <site-dir>/identity.key        Ed25519 key; the router id is derived from it
    <site-dir>/links/NAME.toml     a link this site dials, with NAME.crt/.key/-ca.crt
    <site-dir>/grants.json         token grants this site issued (code hashes, uses left)
    <site-dir>/run/                control socket and pid file while the router runs
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
import stat
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import certs
from router.endpoint import Endpoint, parse_endpoint
from router.names import NAME_RE, InvalidName, validate_name, validate_router_id
from router.site.atomic import read_regular, write_atomic
from router.site.config import (
    ConfigError,
    SiteConfig,
    dump_config,
    load_config,
    parse_config,
    save_config,
)

FIRST_LINK_PORT = 55671
# An offline edit holds the edit lock for milliseconds and a starting router for about
# a second; a live call under it is bounded by sitectl's own timeout.
EDIT_LOCK_WAIT_S = 45.0
SHARED_SOCKET_BASE = Path("/tmp")  # control sockets of site dirs too long for AF_UNIX
ENV_SITE_DIR = "SITECTL_SITE_DIR"


class SiteError(Exception):
    """A site directory problem, with a message for the user."""


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


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A link this site dials: where, which CA to trust, which cert to present."""

    name: str
    peer_site: str
    endpoints: tuple[tuple[str, int], ...]
    cost: int
    # The issuer's router id, from its claim reply, when known: the dialler pins it.
    peer_router_id: str | None = None


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root

    # ---- paths
    @property
    def config_path(self) -> Path:
        return self.root / "site.toml"

    @property
    def links_dir(self) -> Path:
        return self.root / "links"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def grants_path(self) -> Path:
        return self.root / "grants.json"

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
        return certs.KeyPair(
            key_pem=certs.load_pem(self.root / "router.key"),
            cert_pem=certs.load_pem(self.root / "router.crt"),
        )

    def identity_key(self) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key(
            certs.load_pem(self.root / "identity.key"), password=None
        )
        if not isinstance(key, Ed25519PrivateKey):
            raise SiteError(f"{self.root / 'identity.key'}: not an Ed25519 key")
        return key

    # ---- links
    def link_files(self, name: str) -> tuple[Path, Path, Path, Path]:
        """NAME.toml, NAME-ca.crt, NAME.crt, NAME.key: only for a valid name, and only
        inside links/ (a planted symlink pointing elsewhere is refused too)."""
        try:
            validate_name(name, "link name")
        except InvalidName as exc:
            raise SiteError(str(exc)) from None
        d = self.links_dir
        paths = d / f"{name}.toml", d / f"{name}-ca.crt", d / f"{name}.crt", d / f"{name}.key"
        inside = d.resolve()
        for path in paths:
            if path.resolve().parent != inside:
                raise SiteError(f"{path} is not inside {d}: refusing to use it")
        return paths

    def link_clash(self, name: str) -> str | None:
        """Another link whose files `name`'s would overwrite (link x's x-ca.crt is
        link x-ca's certificate), or None."""
        mine = set(self.link_files(name))
        for other in self.link_names():
            if other != name and mine & set(self.link_files(other)):
                return other
        return None

    def save_link(self, spec: LinkSpec, *, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
        """Write a link's four files all or nothing; it exists once its toml does.

        Everything is written and synced in a private directory inside links/ first,
        then renamed into place, the toml last; on any error nothing new is left.
        """
        toml_path, ca_path, cert_path, key_path = self.link_files(spec.name)
        clash = self.link_clash(spec.name)
        if clash is not None:
            raise SiteError(f"link name {spec.name} clashes with the files of link {clash}")
        try:
            doc = _link_doc(spec)
            _link_from(spec.name, doc)  # what is written must load back
        except InvalidName as exc:
            raise SiteError(f"link {spec.name}: {exc}") from None
        text = tomli_w.dumps(doc).encode()
        placed: list[Path] = []
        existed = toml_path.exists()
        try:
            self.links_dir.mkdir(mode=0o700, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.links_dir, prefix=".new-") as tmp:
                files = ((ca_path, ca_pem, 0o644), (cert_path, cert_pem, 0o644),
                         (key_path, key_pem, 0o600), (toml_path, text, 0o644))
                for path, data, mode in files:
                    _write_synced(Path(tmp) / path.name, data, mode)
                for path, _, _ in files:
                    os.replace(Path(tmp) / path.name, path)
                    placed.append(path)
            _fsync_dir(self.links_dir)
        except BaseException as exc:
            if not existed:
                for path in placed:
                    path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise SiteError(f"cannot save link {spec.name} in {self.links_dir}: "
                                f"{exc.strerror or exc}") from None
            raise

    def load_link(self, name: str) -> LinkSpec:
        try:
            toml_path = self.link_files(name)[0]
        except SiteError as exc:
            raise ConfigError(str(exc)) from None
        try:
            doc = tomllib.loads(read_regular(toml_path, MAX_LINK_FILE_BYTES).decode())
            return _link_from(name, doc)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path}: bad link file: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        except (tomllib.TOMLDecodeError, InvalidName, RecursionError) as exc:
            raise ConfigError(f"{toml_path}: bad link file: {exc}") from None

    def link_credentials(self, name: str) -> tuple[bytes, bytes, bytes]:
        _, ca_path, cert_path, key_path = self.link_files(name)
        for path in (ca_path, cert_path, key_path):
            # Opening a FIFO would block the router's event loop until a writer came.
            if path.exists() and not path.is_file():
                raise SiteError(f"{path} is not a regular file")
        return certs.load_pem(ca_path), certs.load_pem(cert_path), certs.load_pem(key_path)

    def link_names(self) -> list[str]:
        """Complete links only: a valid name, and the toml with all three PEM files."""
        if not self.links_dir.is_dir():
            return []
        names = []
        for path in self.links_dir.glob("*.toml"):
            try:
                files = self.link_files(path.stem)
            except SiteError:
                continue  # not a name this site could have written
            if all(f.is_file() for f in files):
                names.append(path.stem)
        return sorted(names)

    def delete_link(self, name: str) -> None:
        toml_path, *others = self.link_files(name)
        toml_path.unlink(missing_ok=True)  # first: a half-deleted link is no link
        for path in others:
            path.unlink(missing_ok=True)


_LINK_FIELDS = {"peer_site", "endpoints", "cost", "peer_router_id"}
MAX_LINK_FILE_BYTES = 64 * 1024  # a link's toml is a few hundred bytes
MAX_LINK_COST = 1_000_000


def _link_doc(spec: LinkSpec) -> dict[str, object]:
    doc: dict[str, object] = {
        "peer_site": spec.peer_site,
        "endpoints": [Endpoint(h, p).stored() for h, p in spec.endpoints],
        "cost": spec.cost,
    }
    if spec.peer_router_id is not None:
        doc["peer_router_id"] = spec.peer_router_id
    return doc


def _link_from(name: str, doc: dict[str, object]) -> LinkSpec:
    """A link file's table, every field checked (InvalidName says which is wrong)."""
    unknown = sorted(set(doc) - _LINK_FIELDS)
    if unknown:
        raise InvalidName(f"unknown field {unknown[0]!r}")
    if "peer_site" not in doc or "endpoints" not in doc:
        raise InvalidName("peer_site and endpoints are required")
    endpoints = doc["endpoints"]
    if not isinstance(endpoints, list) or not endpoints:
        raise InvalidName("endpoints must be a non-empty list of \"HOST:PORT\"")
    cost = doc.get("cost", 1)
    if type(cost) is not int or not 1 <= cost <= MAX_LINK_COST:
        raise InvalidName(f"cost must be an integer from 1 to {MAX_LINK_COST}")
    router_id = doc.get("peer_router_id")
    return LinkSpec(
        name=name, peer_site=validate_name(doc["peer_site"], "peer site name"),
        endpoints=tuple(parse_endpoint(ep) for ep in endpoints), cost=cost,
        peer_router_id=None if router_id is None else validate_router_id(router_id),
    )


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0" if host in ("", "0.0.0.0") else host, port))
        except OSError:
            return False
    return True


def _registry() -> Path:
    """Every site dir this user created, wherever it lives (one path per line)."""
    return data_home().parent / "known-sites"


def _registry_lines() -> list[str]:
    try:
        data = read_regular(_registry(), MAX_REGISTRY_BYTES)
    except OSError as exc:
        raise SiteError(f"cannot read {_registry()}: {exc.strerror or exc}") from None
    return data.decode(errors="replace").splitlines()


MAX_REGISTRY_BYTES = 1024 * 1024


def _remember(root: Path) -> None:
    registry = _registry()
    registry.parent.mkdir(parents=True, exist_ok=True)
    known = _registry_lines() if registry.exists() else []
    alive = [p for p in known if (Path(p) / "site.toml").exists() and p != str(root)]
    write_atomic(registry, ("\n".join([*alive, str(root)]) + "\n").encode())


def claimed_ports() -> dict[int, Path]:
    """Link ports the user's other sites already claim (running or not), with the
    site dir that claims each."""
    ports: dict[int, Path] = {}
    paths = set(data_home().glob("*/site.toml"))
    if _registry().exists():
        paths |= {Path(p) / "site.toml" for p in _registry_lines() if p}
    for cfg in sorted(paths):
        if not cfg.exists():
            continue
        try:
            ports.setdefault(load_config(cfg).link_port, cfg.parent)
        except ConfigError:
            continue
    return ports


def pick_link_port(bind: str) -> int:
    claimed = claimed_ports()
    for port in range(FIRST_LINK_PORT, FIRST_LINK_PORT + 1000):
        if port not in claimed and _port_free(bind, port):
            return port
    raise SiteError(f"no free link port in {FIRST_LINK_PORT}-{FIRST_LINK_PORT + 999}")


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
    _remember(root)
    return site
