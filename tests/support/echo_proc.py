"""An asyncio TCP echo server run as its own process (`python -m tests.support.echo_proc
PORT`), for tests that hold more connections than a thread per connection allows, or
than the test process's descriptors would hold on both ends.

It raises its soft open-files limit to the hard limit, answers each byte as it comes,
and closes a connection when its client half-closes."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool | None:
        self.transport.close()
        return None


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096,
                                      reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
