"""Two linked real routers and a hostile peer authenticated to one of them: shared by the
tests that attack a router from inside a link (floods, fake routers, escapes)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import trio

import certs
from router.net.handshake import tls_handshake
from router.net.tls import TLSStream
from router.protocol import Hello, LinkConnection, LinkLimits, Role
from tests.support.services import EchoServer
from tests.support.sites import Site, free_port, link, site_env, start_sites, wait_for


class LinkedPair:
    """West and east, running and linked (east dialled west); `prepare` may edit west's
    site directory before its router starts."""

    def __init__(self, workdir: Path, prepare: Callable[[Site], None] | None = None) -> None:
        env = site_env(workdir)
        self.west = Site(workdir, "west", env).init()
        if prepare is not None:
            prepare(self.west)
        self.east = Site(workdir, "east", env).init()
        start_sites(self.west, self.east)
        link(self.west, self.east, workdir)

    def stop(self) -> None:
        self.east.stop()
        self.west.stop()

    def assert_serves(self, key: str) -> None:
        """The link between the two is up and a new flow over it carries bytes."""
        assert self.east.link_up("west")
        echo, port = EchoServer(), free_port()
        try:
            self.west.sitectl("connector", "create", key, f"127.0.0.1:{echo.port}")
            self.east.sitectl("listener", "create", key, str(port))
            wait_for(lambda: self.east.key_reachable(key), what=f"{key} reachable")
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                sock.sendall(b"still here")
                assert sock.recv(100) == b"still here"
        finally:
            echo.close()


async def authenticated_peer(site: Site, name: str,
                             features: tuple[str, ...] = ()) -> TLSStream:
    """A link peer with a certificate from the site's own CA, past HELLO; it never reads.
    `features` go in its HELLO ("summary": it is sent traffic summaries)."""
    ca = certs.CertificateAuthority.from_pem(certs.load_pem(site.dir / "ca.crt"),
                                             certs.load_pem(site.dir / "ca.key"))
    pair = ca.issue(name, role=certs.Role.CLIENT)
    ctx = certs.client_context(cert_pem=pair.cert_pem, key_pem=pair.key_pem, ca_pem=ca.cert_pem)
    sock = await trio.open_tcp_stream("127.0.0.1", site.link_port)
    stream = TLSStream(sock, ctx, server_side=False, server_hostname=site.name)
    await tls_handshake(stream)
    conn = LinkConnection(
        role=Role.DIALER,
        hello=Hello(router_id=f"r{name}", site=name, max_frame_bytes=256 * 1024,
                    keepalive_interval=1.0, features=features),
        limits=LinkLimits(), now=trio.current_time())
    await stream.send_all(conn.data_to_send())
    return stream
