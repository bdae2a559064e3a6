"""The site's listener ports: one accept loop each, every client handed to the
adaptor of the listener's protocol (TCP, HTTP)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import trio

from router.flows.table import FlowTable
from router.net.accept import FdReserve, serve_listeners
from router.site.config import ListenerConfig, SiteConfig

Serve = Callable[[ListenerConfig, trio.abc.Stream], Awaitable[None]]


class Listeners:
    def __init__(self, *, serve: Mapping[str, Serve], table: FlowTable, reserve: FdReserve,
                 config: Callable[[], SiteConfig]) -> None:
        self._serve = serve  # by listener protocol
        self._config = config  # the current one: options and rules change live
        self._table = table
        self._reserve = reserve
        self._scopes: dict[tuple[str, int], trio.CancelScope] = {}
        self.errors: dict[tuple[str, int], str] = {}  # why a configured listener is down

    async def start(self, lst: ListenerConfig, nursery: trio.Nursery) -> None:
        """Listen (ValueError saying why if the port cannot be had), then accept in
        `nursery` until `stop`."""
        serve = self._serve.get(lst.protocol)
        if serve is None:
            raise ValueError(f"listener {lst.key}: this router has no {lst.protocol} adaptor")
        try:
            sockets = await trio.open_tcp_listeners(lst.port, host=lst.host)
        except OSError as exc:
            raise ValueError(f"cannot listen on {lst.host}:{lst.port}: {exc.strerror}") from exc
        scope = trio.CancelScope()
        self._scopes[(lst.host, lst.port)] = scope
        nursery.start_soon(self._accept, lst, serve, sockets, scope)

    def stop(self, lst: ListenerConfig) -> None:
        self.errors.pop((lst.host, lst.port), None)
        scope = self._scopes.pop((lst.host, lst.port), None)
        if scope is not None:
            scope.cancel()  # its accept loop closes the sockets

    def stop_all(self) -> None:
        for scope in self._scopes.values():
            scope.cancel()

    async def _accept(self, lst: ListenerConfig, serve: Serve,
                      sockets: list[trio.SocketListener], scope: trio.CancelScope) -> None:
        def client(stream: trio.abc.Stream) -> Awaitable[None]:
            # Not a coroutine: the task awaits serve's own, one frame less per client.
            return serve(self._current(lst), stream)

        with scope:
            await serve_listeners(client, sockets, what=f"client of {lst.key}",
                                  name=f"listener {lst.key}",
                                  handler_nursery=self._table.nursery, reserve=self._reserve)

    def _current(self, lst: ListenerConfig) -> ListenerConfig:
        """The listener's config as it is now (`listener set` changes it live)."""
        for now in self._config().listeners:
            if (now.host, now.port) == (lst.host, lst.port):
                return now
        return lst
