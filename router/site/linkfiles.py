"""The links a site dials: LinkSpec and its files under links/.

    links/NAME.toml          peer site, endpoints, cost, the peer's pinned router id, the
                             proxy to dial through, when its certificate was last renewed
    links/NAME-ca.crt        the peer's CA, which its server certificate must chain to
    links/NAME.crt, .key     the client certificate the peer's CA issued to this site

With a data dir of its own ($SITECTL_DATA_DIR), the router writes no link file: a renewed
certificate goes to <data-dir>/renewed/links/NAME.json (router.site.renewed) and is used
in place of links/NAME.crt and .key while those are the ones it was renewed from.

A name becomes four file names, so it is checked (names.validate_name) and every path kept
inside links/; a link is saved all or nothing and exists once its toml does.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomli_w

import certs
from router.endpoint import Endpoint, parse_endpoint
from router.names import InvalidName, validate_name, validate_router_id
from router.site import renewed
from router.site.atomic import read_regular
from router.site.errors import ConfigError, SiteError
from router.site.proxyconf import PROXY_FROM_ENV, check_proxy_setting, parse_proxy_url


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A link this site dials: where, which CA to trust, which cert to present."""

    name: str
    peer_site: str
    endpoints: tuple[tuple[str, int], ...]
    cost: int
    # The issuer's router id, from its claim reply, when known: the dialler pins it.
    peer_router_id: str | None = None
    # An HTTP CONNECT proxy URL, or "env" (router.site.proxyconf); None: dial directly.
    # Not in the repr: the URL may hold the proxy's password.
    proxy: str | None = field(default=None, repr=False)
    # When the certificate was last renewed over the link (epoch s); None: never.
    renewed: float | None = None


class LinkFiles:
    """The link methods of a Site (mixed into router.site.directory.Site)."""

    root: Path
    data_dir: Path

    @property
    def links_dir(self) -> Path:
        return self.root / "links"

    def renewed_link_path(self, name: str) -> Path:
        self.link_files(name)  # the name is checked
        return self.data_dir / "renewed" / "links" / f"{name}.json"

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
                         (key_path, key_pem, 0o600), (toml_path, text, _toml_mode(spec)))
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
            spec = _link_from(name, doc)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path}: bad link file: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        except (tomllib.TOMLDecodeError, InvalidName, RecursionError) as exc:
            raise ConfigError(f"{toml_path}: bad link file: {exc}") from None
        if not self.renewed_link_path(name).exists():
            return spec  # the usual case: no renewal kept apart, nothing more to read
        try:
            renewal = self._link_renewal(name, *self._mounted_credentials(name)[:2])
        except (SiteError, OSError, certs.CertError):
            return spec  # unreadable credentials: dialling says why
        return spec if renewal is None else replace(spec, renewed=renewal.renewed)

    def link_credentials(self, name: str) -> tuple[bytes, bytes, bytes]:
        """(the peer's CA, our certificate, our key) for dialling link NAME: the mounted
        ones, or their renewal kept in the data dir."""
        ca_pem, cert_pem, key_pem = self._mounted_credentials(name)
        renewal = self._link_renewal(name, ca_pem, cert_pem)
        if renewal is None:
            return ca_pem, cert_pem, key_pem
        return ca_pem, renewal.cert_pem, renewal.key_pem

    def store_link_renewal(self, name: str, cert_pem: bytes, key_pem: bytes,
                           now: float) -> None:
        """A certificate renewed over link NAME, kept where the router writes: in the
        link's files, or with a data dir of its own, in the data dir."""
        toml_path, ca_path, cert_path, _ = self.link_files(name)
        if not toml_path.exists():
            raise SiteError(f"link {name} was deleted meanwhile")
        if self.data_dir == self.root:
            self.save_link(replace(self.load_link(name), renewed=now),
                           ca_pem=certs.load_pem(ca_path), cert_pem=cert_pem, key_pem=key_pem)
            return
        path = self.renewed_link_path(name)
        try:
            renewed.save(path, mounted_cert_pem=certs.load_pem(cert_path), cert_pem=cert_pem,
                         key_pem=key_pem, now=now)
        except OSError as exc:
            raise SiteError(f"cannot save the renewed certificate of link {name} in "
                            f"{path.parent}: {exc.strerror or exc}") from None

    def _mounted_credentials(self, name: str) -> tuple[bytes, bytes, bytes]:
        _, ca_path, cert_path, key_path = self.link_files(name)
        for path in (ca_path, cert_path, key_path):
            # Opening a FIFO would block the router's event loop until a writer came.
            if path.exists() and not path.is_file():
                raise SiteError(f"{path} is not a regular file")
        return certs.load_pem(ca_path), certs.load_pem(cert_path), certs.load_pem(key_path)

    def _link_renewal(self, name: str, ca_pem: bytes,
                      cert_pem: bytes) -> renewed.Renewed | None:
        return renewed.load(self.renewed_link_path(name), mounted_cert_pem=cert_pem,
                            ca_pem=ca_pem)

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
        with contextlib.suppress(OSError):  # a read-only data dir: the copy is ignored
            self.renewed_link_path(name).unlink(missing_ok=True)  # once new ones come


_LINK_FIELDS = {"peer_site", "endpoints", "cost", "peer_router_id", "proxy", "renewed"}
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
    if spec.proxy is not None:
        doc["proxy"] = spec.proxy
    if spec.renewed is not None:
        doc["renewed"] = spec.renewed
    return doc


def _toml_mode(spec: LinkSpec) -> int:
    """A proxy password makes the link's toml a secret."""
    if spec.proxy is None or spec.proxy == PROXY_FROM_ENV:
        return 0o644
    return 0o600 if parse_proxy_url(spec.proxy).password else 0o644


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
    router_id, proxy, renewed = doc.get("peer_router_id"), doc.get("proxy"), doc.get("renewed")
    if renewed is not None and (isinstance(renewed, bool) or not isinstance(renewed, int | float)
                                or not 0 <= renewed < 1e11):
        raise InvalidName("renewed must be a time (seconds since 1970)")
    return LinkSpec(
        name=name, peer_site=validate_name(doc["peer_site"], "peer site name"),
        endpoints=tuple(parse_endpoint(ep) for ep in endpoints), cost=cost,
        peer_router_id=None if router_id is None else validate_router_id(router_id),
        proxy=None if proxy is None else check_proxy_setting(proxy),
        renewed=None if renewed is None else float(renewed),
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
