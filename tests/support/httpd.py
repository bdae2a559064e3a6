"""A small HTTP backend for end-to-end tests: HTTP/1.1 (h11) and, with --h2, h2c prior
knowledge (h2), one process, so a test can run one per site and kill it.

    python -m tests.support.httpd --port P --name west [--h2]

GET /whoami           -> the name (which site served), header x-served-by
POST /sha (any body)  -> sha256 hex of the body, streamed in as it arrives
GET /bytes/N          -> N bytes of `pattern(N)`, streamed
GET /sse/N            -> N server-sent events, 0.2 s apart, each flushed as written
GET /status/CODE      -> that status, body "status CODE"
GET /count            -> how many requests this process served (counting this one)
GET /sleep/S          -> 200 after S seconds
GET /failon/NAME      -> 500 from the backend named NAME, 200 from the others
POST /crash           -> reads the body, then drops the connection without answering
GET /crashes          -> how many /crash requests arrived
GET /ws (Upgrade: websocket) -> 101, then every message echoed (tests/support/ws.py)
GET /ws/refuse (Upgrade)     -> 426, and the connection goes on as HTTP/1.1
CONNECT 127.0.0.1:PORT       -> 200, then the bytes spliced to that port (a forward
                                proxy for this host only; any other host: 403)
Upgrade elsewhere is ignored (an ordinary answer). HTTP/1.1 only.
Every response carries x-served-by and x-request-count. Prints "ready PORT" on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
import trio

from tests.support import ws

CHUNK = 64 * 1024
SSE_GAP_S = 0.2


UNIT = hashlib.sha256(b"vanrouter test pattern").digest() * 2048  # 64 KiB


def pattern(n: int) -> bytes:
    """Deterministic bytes (UNIT repeated) a test can hash without downloading twice."""
    return (UNIT * (n // len(UNIT) + 1))[:n]


class Crash(Exception):
    """Drop the connection without an answer (the backend failed mid-request)."""


class App:
    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.crashes = 0

    async def handle(self, method: str, path: str, body: AsyncIterator[bytes],
                     respond: Callable[[int, list[tuple[bytes, bytes]]], Awaitable[None]],
                     send: Callable[[bytes], Awaitable[None]]) -> None:
        """Answer one request: `respond(status, headers)` once, then `send` chunks."""
        self.count += 1
        common = [(b"x-served-by", self.name.encode()),
                  (b"x-request-count", str(self.count).encode())]
        parts = path.split("?")[0].strip("/").split("/")
        if method == "POST" and parts == ["sha"]:
            digest = hashlib.sha256()
            async for chunk in body:
                digest.update(chunk)
            text = digest.hexdigest().encode()
            await respond(200, [*common, (b"content-length", str(len(text)).encode())])
            await send(text)
            return
        async for _ in body:  # other requests: the body is read and dropped
            pass
        if method == "POST" and parts == ["crash"]:
            self.crashes += 1
            raise Crash
        if parts == ["whoami"]:
            await respond(200, [*common, (b"content-length", str(len(self.name)).encode())])
            await send(self.name.encode())
        elif parts[0] == "bytes" and len(parts) == 2 and parts[1].isdigit():
            n = int(parts[1])
            await respond(200, [*common, (b"content-length", str(n).encode())])
            left = n
            while left:
                chunk = UNIT[:min(left, len(UNIT))]
                await send(chunk)
                left -= len(chunk)
        elif parts[0] == "sse" and len(parts) == 2 and parts[1].isdigit():
            await respond(200, [*common, (b"content-type", b"text/event-stream"),
                                (b"cache-control", b"no-cache")])
            for i in range(int(parts[1])):
                await send(f"data: event {i}\n\n".encode())
                await trio.sleep(SSE_GAP_S)
        elif parts[0] == "status" and len(parts) == 2 and parts[1].isdigit():
            text = f"status {parts[1]}".encode()
            await respond(int(parts[1]), [*common, (b"content-length", str(len(text)).encode())])
            await send(text)
        elif parts[0] == "failon" and len(parts) == 2:
            status = 500 if parts[1] == self.name else 200
            await respond(status, [*common, (b"content-length", b"2")])
            await send(b"ok" if status == 200 else b"no")
        elif parts[0] == "sleep" and len(parts) == 2 and parts[1].isdigit():
            await trio.sleep(int(parts[1]))
            await respond(200, [*common, (b"content-length", b"5")])
            await send(b"slept")
        elif parts in (["count"], ["crashes"]):
            text = str(self.count if parts == ["count"] else self.crashes).encode()
            await respond(200, [*common, (b"content-length", str(len(text)).encode())])
            await send(text)
        else:
            await respond(404, [*common, (b"content-length", b"9")])
            await send(b"not found")


def _header(request: h11.Request, name: bytes) -> bytes:
    return b", ".join(v for n, v in request.headers if n == name)


async def _switch(app: App, conn: h11.Connection, stream: trio.SocketStream,
                  request: h11.Request) -> bool:
    """A WebSocket upgrade or a CONNECT, if `request` is one this backend takes: served
    to its end (True: the connection is done), or declined with an answer (False)."""
    async def answer(status: int, text: bytes, *extra: tuple[bytes, bytes]) -> None:
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
            *common, *extra, (b"content-length", str(len(text)).encode())])) or b"")
        await stream.send_all(conn.send(h11.Data(data=text)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

    path = request.target.decode()
    upgrade = b"websocket" in _header(request, b"upgrade").lower()
    if request.method != b"CONNECT" and not (upgrade and path.startswith("/ws")):
        return False
    app.count += 1
    common = [(b"x-served-by", app.name.encode()), (b"x-request-count", str(app.count).encode())]
    while not isinstance(event := conn.next_event(), h11.EndOfMessage):  # no body here
        if event is not h11.NEED_DATA:
            raise ws.WsError(f"unexpected {event!r} before a switch")
        conn.receive_data(await stream.receive_some(CHUNK))
    if request.method == b"CONNECT":
        host, _, port = request.target.decode().rpartition(":")
        if host not in ("127.0.0.1", "localhost") or not port.isdigit():
            await answer(403, b"only this host")
            return False
        target = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=common)) or b"")
        await _splice(stream, target, bytes(conn.trailing_data[0]))
        return True
    if path != "/ws":
        await answer(426, b"no websocket here", (b"upgrade", b"websocket"))
        return False
    key = _header(request, b"sec-websocket-key")
    await stream.send_all(conn.send(h11.InformationalResponse(status_code=101, headers=[
        *common, (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", ws.accept_key(key))])) or b"")
    sock = ws.WebSocket(stream, client=False, leftover=bytes(conn.trailing_data[0]))
    while (message := await sock.receive()) is not None:
        await sock.send(message[1], opcode=message[0])
    return True


async def _splice(a: trio.SocketStream, b: trio.SocketStream, first: bytes) -> None:
    """Both ways, with half-close, until both ended."""
    async def one(src: trio.SocketStream, dst: trio.SocketStream, data: bytes) -> None:
        while True:
            if data:
                await dst.send_all(data)
            data = await src.receive_some(CHUNK)
            if not data:
                await dst.send_eof()
                return

    async with b, trio.open_nursery() as nursery:
        nursery.start_soon(one, a, b, first)
        nursery.start_soon(one, b, a, b"")


async def serve_h1(app: App, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)

    async def next_event() -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(CHUNK))
                continue
            return event

    async with stream:
        while True:
            event = await next_event()
            if not isinstance(event, h11.Request):
                return
            request = event
            if await _switch(app, conn, stream, request):
                return
            if conn.our_state is h11.DONE:  # declined: answered already
                conn.start_next_cycle()
                continue

            async def body() -> AsyncIterator[bytes]:
                while True:
                    ev = await next_event()
                    if isinstance(ev, h11.Data):
                        yield bytes(ev.data)
                    elif not isinstance(ev, h11.Event | type) or isinstance(
                            ev, h11.EndOfMessage | h11.ConnectionClosed):
                        return

            async def respond(status: int, headers: list[tuple[bytes, bytes]]) -> None:
                chunked = not any(k == b"content-length" for k, _ in headers)
                extra = [(b"transfer-encoding", b"chunked")] if chunked else []
                await stream.send_all(conn.send(h11.Response(status_code=status,
                                                             headers=headers + extra)) or b"")

            async def send(data: bytes) -> None:
                await stream.send_all(conn.send(h11.Data(data=data)) or b"")

            await app.handle(request.method.decode(), request.target.decode(), body(),
                             respond, send)
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()


async def serve_h2(app: App, stream: trio.SocketStream) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    lock = trio.Lock()
    bodies: dict[int, trio.MemorySendChannel[bytes | None]] = {}
    window_open: dict[int, trio.Event] = {}

    async def flush() -> None:
        async with lock:
            if data := conn.data_to_send():
                await stream.send_all(data)

    async def run_stream(sid: int, method: str, path: str,
                         inbox: trio.MemoryReceiveChannel[bytes | None]) -> None:
        async def body() -> AsyncIterator[bytes]:
            async for chunk in inbox:
                if chunk is None:
                    return
                yield chunk

        async def respond(status: int, headers: list[tuple[bytes, bytes]]) -> None:
            conn.send_headers(sid, [(b":status", str(status).encode()), *headers])
            await flush()

        async def send(data: bytes) -> None:
            view = memoryview(data)
            while view:
                size = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size,
                           len(view))
                if size <= 0:
                    window_open[sid] = trio.Event()
                    await window_open[sid].wait()
                    continue
                conn.send_data(sid, bytes(view[:size]))
                view = view[size:]
                await flush()

        await app.handle(method, path, body(), respond, send)
        conn.end_stream(sid)
        await flush()

    async with stream, trio.open_nursery() as nursery:
        await flush()
        while data := await stream.receive_some(CHUNK):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    head = dict(event.headers)
                    send_ch, recv_ch = trio.open_memory_channel[bytes | None](1 << 16)
                    bodies[event.stream_id] = send_ch
                    nursery.start_soon(run_stream, event.stream_id,
                                       head[b":method"].decode(), head[b":path"].decode(),
                                       recv_ch)
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
                    bodies[event.stream_id].send_nowait(event.data)
                elif isinstance(event, h2.events.StreamEnded):
                    bodies.pop(event.stream_id).send_nowait(None)
                elif isinstance(event, h2.events.WindowUpdated):
                    for waiter in window_open.values():
                        waiter.set()
            await flush()
        nursery.cancel_scope.cancel()


async def main(port: int, name: str, h2_mode: bool) -> None:
    app = App(name)
    handler = serve_h2 if h2_mode else serve_h1
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print(f"ready {listeners[0].socket.getsockname()[1]}", flush=True)

    async def guarded(stream: trio.SocketStream) -> None:
        try:
            await handler(app, stream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError,
                 h2.exceptions.ProtocolError, Crash, ws.WsError, OSError):
            pass  # a client that went away or spoke garbage, or /crash: its connection only

    await trio.serve_listeners(guarded, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", required=True)
    parser.add_argument("--h2", action="store_true")
    args = parser.parse_args()
    try:
        trio.run(main, args.port, args.name, args.h2)
    except KeyboardInterrupt:
        sys.exit(0)
