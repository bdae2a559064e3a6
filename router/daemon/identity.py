"""Who this router is: its site name, router id, HELLO and TLS contexts.

Built from a site directory (`from_site`) or, for in-process tests, in memory
(`generate`: a fresh CA, router certificate and identity key; link credentials
are added with `add_link`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import certs
from router.protocol import Hello
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


@dataclass(eq=False)
class Identity:
    name: str
    ca: certs.CertificateAuthority
    keypair: certs.KeyPair  # the link port's server certificate
    signer: Ed25519Signer  # the routing identity key; the router id is its hash
    limits: Limits
    load_credentials: Callable[[str], Credentials] | None = None  # else `credentials`
    credentials: dict[str, Credentials] = field(default_factory=dict)
    _server_ctx: ssl.SSLContext | None = field(default=None, repr=False)
    _client_ctx: dict[str, ssl.SSLContext] = field(default_factory=dict, repr=False)

    @classmethod
    def from_site(cls, site: Site, name: str, limits: Limits) -> Identity:
        return cls(name=name, ca=site.ca(), keypair=site.router_keypair(),
                   signer=Ed25519Signer(site.identity_key()), limits=limits,
                   load_credentials=site.link_credentials)

    @classmethod
    def generate(cls, name: str, limits: Limits | None = None) -> Identity:
        """A new identity in memory; `add_link` gives it credentials to dial with."""
        ca = certs.CertificateAuthority.generate(name)
        return cls(name=name, ca=ca, keypair=ca.issue(name), signer=Ed25519Signer.generate(),
                   limits=limits or Limits())

    def add_link(self, link_name: str, issuer: Identity) -> None:
        """In memory, what redeeming a token of `issuer` does: a client certificate
        from its CA, bound to our name and router id."""
        pair = issuer.ca.issue(self.name, role=certs.Role.CLIENT, router_id=self.router_id)
        self.credentials[link_name] = (issuer.ca.cert_pem, pair.cert_pem, pair.key_pem)
        self.forget_link(link_name)

    @property
    def router_id(self) -> str:
        return router_id_for(self.signer.public_key)

    def hello(self) -> Hello:
        return Hello(router_id=self.router_id, site=self.name,
                     max_frame_bytes=self.limits.max_frame_bytes,
                     keepalive_interval=self.limits.keepalive_interval_s,
                     early_bytes=min(EARLY_BYTES, self.limits.flow_window_bytes),
                     features=(SUMMARY_FEATURE,))

    def server_context(self) -> ssl.SSLContext:
        if self._server_ctx is None:
            self._server_ctx = certs.server_context(
                cert_pem=self.keypair.cert_pem, key_pem=self.keypair.key_pem,
                ca_pem=self.ca.cert_pem, require_client_cert=False)
        return self._server_ctx

    def client_context(self, link_name: str) -> ssl.SSLContext:
        ctx = self._client_ctx.get(link_name)
        if ctx is None:
            load = self.load_credentials or self.credentials.__getitem__
            ca_pem, cert_pem, key_pem = load(link_name)
            ctx = certs.client_context(cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca_pem)
            self._client_ctx[link_name] = ctx
        return ctx

    def forget_link(self, link_name: str) -> None:
        """The link's credentials changed or went: load them again when next needed."""
        self._client_ctx.pop(link_name, None)
