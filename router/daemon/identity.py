"""Who this router is: its site name, router id, HELLO and TLS contexts.

Built from a site directory (`from_site`) or, for in-process tests, in memory
(`generate`: a fresh CA, router certificate and identity key; link credentials
are added with `add_link`).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import certs
from router.errors import VanError
from router.protocol import RENEW_FEATURE, Hello
from router.routing import Ed25519Signer
from router.routing.signing import router_id_for
from router.routing.summary import SUMMARY_FEATURE
from router.site.config import Limits
from router.site.directory import Site

# Early data offered to peers per flow (HELLO early_bytes): a request head and a small
# body travel with the OPEN instead of a round trip later; bounded like the window.
EARLY_BYTES = 64 * 1024

# (CA of the peer, our certificate from it, our key) for dialling the link NAME.
Credentials = tuple[bytes, bytes, bytes]
# Store a renewed certificate of link NAME: (name, cert, key, when).
SaveCredentials = Callable[[str, bytes, bytes, float], None]
SaveKeyPair = Callable[[certs.KeyPair], None]


@dataclass(eq=False)
class Identity:
    name: str
    ca: certs.CertificateAuthority
    keypair: certs.KeyPair  # the link port's server certificate
    signer: Ed25519Signer  # the routing identity key; the router id is its hash
    limits: Limits
    load_credentials: Callable[[str], Credentials] | None = None  # else `link_creds`
    save_credentials: SaveCredentials | None = None  # else in `link_creds` only
    save_keypair: SaveKeyPair | None = None  # where a renewed server certificate goes
    link_creds: dict[str, Credentials] = field(default_factory=dict)
    _server_ctx: ssl.SSLContext | None = field(default=None, repr=False)
    _client_ctx: dict[str, ssl.SSLContext] = field(default_factory=dict, repr=False)
    _client_info: dict[str, certs.LeafInfo] = field(default_factory=dict, repr=False)

    @classmethod
    def from_site(cls, site: Site, name: str, limits: Limits) -> Identity:
        return cls(name=name, ca=site.ca(), keypair=site.router_keypair(),
                   signer=Ed25519Signer(site.identity_key()), limits=limits,
                   load_credentials=site.link_credentials,
                   save_credentials=site.store_link_renewal,
                   save_keypair=site.save_router_keypair)

    @classmethod
    def generate(cls, name: str, limits: Limits | None = None) -> Identity:
        """A new identity in memory; `add_link` gives it credentials to dial with."""
        ca = certs.CertificateAuthority.generate(name)
        limits = limits or Limits()
        return cls(name=name, ca=ca, keypair=ca.issue(name,
                                                      lifetime_s=limits.link_cert_lifetime_s),
                   signer=Ed25519Signer.generate(), limits=limits)

    def add_link(self, link_name: str, issuer: Identity) -> None:
        """In memory, what redeeming a token of `issuer` does: a client certificate
        from its CA, bound to our name and router id."""
        pair = issuer.ca.issue(self.name, role=certs.Role.CLIENT, router_id=self.router_id,
                               lifetime_s=issuer.limits.link_cert_lifetime_s)
        self.link_creds[link_name] = (issuer.ca.cert_pem, pair.cert_pem, pair.key_pem)
        self.forget_link(link_name)

    @property
    def router_id(self) -> str:
        return router_id_for(self.signer.public_key)

    def hello(self) -> Hello:
        return Hello(router_id=self.router_id, site=self.name,
                     max_frame_bytes=self.limits.max_frame_bytes,
                     keepalive_interval=self.limits.keepalive_interval_s,
                     early_bytes=min(EARLY_BYTES, self.limits.flow_window_bytes),
                     features=(SUMMARY_FEATURE, RENEW_FEATURE))

    def server_context(self) -> ssl.SSLContext:
        if self._server_ctx is None:
            self._server_ctx = certs.server_context(
                cert_pem=self.keypair.cert_pem, key_pem=self.keypair.key_pem,
                ca_pem=self.ca.cert_pem, require_client_cert=False)
        return self._server_ctx

    def set_server_keypair(self, keypair: certs.KeyPair) -> None:
        """A renewed server certificate: presented from the next accept, and stored. It is
        in use even if storing fails (SiteError): the start renews one that is missing."""
        self.keypair = keypair
        self._server_ctx = None
        if self.save_keypair is not None:
            self.save_keypair(keypair)

    def credentials(self, link_name: str) -> Credentials:
        load = self.load_credentials or self.link_creds.__getitem__
        return load(link_name)

    def client_context(self, link_name: str) -> ssl.SSLContext:
        ctx = self._client_ctx.get(link_name)
        if ctx is None:
            ca_pem, cert_pem, key_pem = self.credentials(link_name)
            ctx = certs.client_context(cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca_pem)
            self._client_ctx[link_name] = ctx
        return ctx

    def client_cert_info(self, link_name: str) -> certs.LeafInfo | None:
        """Our certificate for dialling link NAME (cached), or None if unreadable."""
        info = self._client_info.get(link_name)
        if info is None:
            try:
                info = certs.leaf_info(self.credentials(link_name)[1])
            except (VanError, certs.CertError, OSError, KeyError):
                return None
            self._client_info[link_name] = info
        return info

    def credential_problem(self, link_name: str) -> str | None:
        """Why dialling link NAME cannot work (our certificate expired), or None."""
        info = self.client_cert_info(link_name)
        if info is None or info.expires.timestamp() > time.time():
            return None
        when = info.expires.strftime("%Y-%m-%d %H:%M:%S UTC")
        return (f"this site's certificate for link {link_name} expired at {when} (the "
                "router was stopped for longer than its lifetime, so it could not be "
                "renewed); get a new token from the peer site, then `sitectl link delete "
                f"{link_name}` and `sitectl link create TOKEN`")

    def store_renewed(self, link_name: str, cert_pem: bytes, key_pem: bytes,
                      now: float) -> None:
        """A renewed certificate for link NAME: stored, then used from the next dial."""
        if self.save_credentials is not None:
            self.save_credentials(link_name, cert_pem, key_pem, now)
        else:
            self.link_creds[link_name] = (self.link_creds[link_name][0], cert_pem, key_pem)
        self.forget_link(link_name)

    def forget_link(self, link_name: str) -> None:
        """The link's credentials changed or went: load them again when next needed."""
        self._client_ctx.pop(link_name, None)
        self._client_info.pop(link_name, None)
