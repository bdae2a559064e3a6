"""Dialling through an HTTP CONNECT proxy: the exchange (sans-IO, h11) and its trio driver.

    -> CONNECT peer:port HTTP/1.1, Host, Proxy-Authorization: Basic ... (from the URL)
    <- HTTP/1.1 200 Connection established      then TLS to the peer inside the tunnel

The proxy is as untrusted as the network: its answer is parsed by h11 and capped in size
(a proxy that sends a gigabyte of headers is cut off at MAX_ANSWER_BYTES), and the caller
bounds the time (a proxy that never answers). A refusal is one line with the proxy's
status and reason. `ConnectExchange` is shared with sitectl's blocking redemption client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import h11
import trio

from router.endpoint import Endpoint
from router.errors import VanError
from router.net.errors import connect_reason
from router.protocol import printable
from router.site.proxyconf import ProxyURL

MAX_ANSWER_BYTES = 16 * 1024  # a CONNECT answer is a status line and a few headers
MAX_REASON_CHARS = 100
READ_CHUNK = 4096
ConnectFn = Callable[[str, int], Awaitable[trio.abc.Stream]]


class ProxyError(VanError):
    """Dialling through the proxy failed; the message says why in one line."""


class ProxyRefused(ProxyError):
    """The proxy answered CONNECT with a status that is not 2xx."""


class ConnectExchange:
    """One CONNECT: `request()` is what to send, then `receive(data)` each chunk the
    proxy sends until it returns True (the tunnel is open) or raises ProxyError."""

    def __init__(self, proxy: ProxyURL, host: str, port: int,
                 max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.proxy = proxy
        self.target = str(Endpoint(host, port))  # [v6]:port, as CONNECT wants it
        self._cap = max_answer_bytes
        self._received = 0
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_answer_bytes)

    @property
    def where(self) -> str:
        return f"proxy {self.proxy.endpoint}"

    def request(self) -> bytes:
        headers = [("Host", self.target), ("User-Agent", "vanrouter")]
        auth = self.proxy.authorization()
        if auth is not None:
            headers.append(("Proxy-Authorization", auth))
        data = self._conn.send(h11.Request(method="CONNECT", target=self.target,
                                           headers=headers))
        assert data is not None
        return data

    def receive(self, data: bytes) -> bool:
        """Feed what the proxy sent (b"" when it closed); True once the tunnel is open."""
        self._received += len(data)
        if self._received > self._cap:
            raise ProxyError(f"{self.where} sent an answer of over {self._cap} bytes "
                             "to CONNECT")
        self._conn.receive_data(data)
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                if not data:
                    raise ProxyError(f"{self.where} closed the connection without "
                                     f"answering CONNECT {self.target}") from None
                raise ProxyError(f"{self.where} answered CONNECT with something that is "
                                 f"not HTTP ({printable(str(exc))[:MAX_REASON_CHARS]})"
                                 ) from None
            if event is h11.NEED_DATA:
                if not data:
                    raise ProxyError(f"{self.where} closed the connection without "
                                     f"answering CONNECT {self.target}")
                return False
            if isinstance(event, h11.InformationalResponse):
                continue  # 1xx: the real answer follows (the byte cap bounds how many)
            if isinstance(event, h11.Response):
                return self._answer(event)
            raise ProxyError(f"{self.where} answered CONNECT unexpectedly ({type(event).__name__})")

    def _answer(self, response: h11.Response) -> bool:
        reason = printable(response.reason.decode("latin-1"))[:MAX_REASON_CHARS]
        if not 200 <= response.status_code < 300:
            raise ProxyRefused(f"{self.where} refused CONNECT: "
                               f"{response.status_code} {reason}".rstrip())
        leftover, _ = self._conn.trailing_data
        if leftover:
            # The TLS server inside speaks only after our ClientHello: this is the proxy's.
            raise ProxyError(f"{self.where} sent data into the tunnel before it was used")
        return True


async def open_via_proxy(connect: ConnectFn, proxy: ProxyURL, host: str, port: int, *,
                         timeout: float) -> trio.abc.Stream:
    """A stream to host:port tunnelled through `proxy` (reached with `connect`), the
    whole of it (TCP to the proxy, CONNECT, its answer) within `timeout` seconds."""
    exchange = ConnectExchange(proxy, host, port)
    deadline = trio.current_time() + timeout
    try:
        with trio.fail_at(deadline):
            stream = await connect(proxy.host, proxy.port)
    except (OSError, trio.TooSlowError) as exc:
        raise ProxyError(f"cannot connect to {exchange.where}: {connect_reason(exc)}") from None
    try:
        with trio.fail_at(deadline):
            await stream.send_all(exchange.request())
            while not exchange.receive(bytes(await stream.receive_some(READ_CHUNK))):
                pass
    except BaseException as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            raise ProxyError(f"{exchange.where} did not answer CONNECT {exchange.target} "
                             f"within {timeout:g} s") from None
        if isinstance(exc, trio.BrokenResourceError | OSError):
            raise ProxyError(f"{exchange.where} broke the connection during CONNECT: "
                             f"{connect_reason(exc)}") from None
        raise
    return stream
