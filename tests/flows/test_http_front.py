"""The HTTP listener over HTTP/1.1: real clients (httpx, curl, raw sockets) against
HttpFrontend on a real port, served by an in-test backend on this site."""

from __future__ import annotations

import httpx
import trio
import trio.testing

from tests.flows.test_http_front_kit import (
    curl,
    pattern,
    running_front,
    sha,
)

MIB = 1024 * 1024


async def raw(port: int, request: bytes, *, timeout: float = 10) -> bytes:
    """Send bytes as they are, read the answer until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        out = b""
        with trio.fail_after(timeout):
            while data := await stream.receive_some(65536):
                out += data
        return out


async def test_get_and_post_bodies_of_several_mib_both_ways() -> None:
    async with running_front() as front, httpx.AsyncClient(base_url=front.url) as client:
        resp = await client.get("/big?n=5000000")
        assert resp.status_code == 200
        assert sha(resp.content) == resp.headers["x-sha"] == sha(pattern(5_000_000))
        body = pattern(3 * MIB, seed=3)
        resp = await client.post("/sha", content=body)
        assert resp.status_code == 200
        assert resp.text == sha(body) and resp.headers["x-size"] == str(len(body))
        head = front.backend.heads[-1]
        assert head.method == b"POST" and head.authority == f"127.0.0.1:{front.port}".encode()
        names = dict(head.headers)
        assert names[b"x-forwarded-for"] == b"127.0.0.1"
        assert names[b"forwarded"].startswith(b"for=127.0.0.1;")
        assert b"host" not in names and b"connection" not in names


async def test_chunked_upload_and_keep_alive_reuse() -> None:
    async def chunks():
        for i in range(40):
            yield pattern(50_000, seed=i)

    want = b"".join(pattern(50_000, seed=i) for i in range(40))
    async with running_front() as front, httpx.AsyncClient(base_url=front.url) as client:
        resp = await client.post("/sha", content=chunks())
        assert resp.status_code == 200 and resp.text == sha(want)
        assert dict(front.backend.heads[-1].headers).get(b"content-length") is None
        for _ in range(3):
            resp = await client.get("/")
            assert resp.text == "ok\n"
        assert front.table.opened == 4
    # one connection carried them all: curl says so too
    async with running_front() as front:
        proc = await trio.run_process(
            ["curl", "-sS", "-v", f"{front.url}/", f"{front.url}/"],
            capture_stdout=True, capture_stderr=True)
        assert proc.stdout == b"ok\nok\n"
        assert b"Re-using existing connection" in proc.stderr or b"Reusing" in proc.stderr


async def test_chunked_upload_with_trailers_by_curl() -> None:
    async with running_front() as front:
        body = pattern(2 * MIB, seed=9)
        req = (b"POST /sha HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"TE: trailers\r\nConnection: close\r\n\r\n")
        for i in range(0, len(body), 100_000):
            piece = body[i:i + 100_000]
            req += b"%x\r\n" % len(piece) + piece + b"\r\n"
        req += b"0\r\nx-check: yes\r\n\r\n"
        out = await raw(front.port, req)
        head, _, rest = out.partition(b"\r\n\r\n")
        # With its reason phrase: h2load's HTTP/1.1 parser fails a status line without.
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        # de-chunk
        data = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            data += rest[:size]
            rest = rest[size + 2:]
        assert data.decode() == sha(body)
        assert b"x-check: yes" in rest and b"x-got-trailers: 1" in rest


SMUGGLING = [
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
     b"hello!", b"400"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", b"400"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello", b"400"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     b"501"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", b"501"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"501"),
]


async def test_smuggling_forms_are_refused_and_never_reach_the_backend() -> None:
    async with running_front() as front:
        for request, status in SMUGGLING:
            out = await raw(front.port, request)
            assert out.startswith(b"HTTP/1.1 " + status), (request, out[:200])
            assert b"connection: close" in out.lower()
        assert front.backend.heads == []


async def test_header_block_too_large_or_too_many_headers_is_431() -> None:
    async with running_front() as front:
        big = b"GET / HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n"
        assert (await raw(front.port, big)).startswith(b"HTTP/1.1 431")
        many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"x-h%d: 1\r\n" % i for i in range(200)) + b"\r\n"
        out = await raw(front.port, many)
        assert out.startswith(b"HTTP/1.1 431") and b"more than 128 header fields" in out
        assert front.backend.heads == []


async def test_garbage_gets_400_and_close() -> None:
    async with running_front() as front:
        out = await raw(front.port, b"\x16\x03\x01garbage that is not http\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400") and b"bad request" in out
        assert front.backend.heads == []


async def test_client_gone_mid_upload_resets_the_request_flow() -> None:
    async with running_front() as front:
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        await stream.send_all(b"POST /sha HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
                              + b"x" * 1000)
        await front.wait(lambda: len(front.backend.heads) == 1)
        await stream.aclose()
        await front.wait(lambda: front.backend.aborted == 1)
        await front.wait_idle()
        assert front.table.outcomes["reset"] == 1


async def test_curl_upload_with_expect_100_continue_and_head() -> None:
    async with running_front() as front:
        body = pattern(4 * MIB, seed=5)
        path = f"/tmp/front-upload-{front.port}"
        await trio.Path(path).write_bytes(body)
        try:
            proc = await curl("--data-binary", f"@{path}", f"{front.url}/sha",
                              "-H", "Connection: x-hop", "-H", "x-hop: 1")
        finally:
            await trio.Path(path).unlink()
        assert proc.stdout.decode() == sha(body), proc.stderr
        names = dict(front.backend.heads[-1].headers)
        assert b"expect" not in names and b"x-hop" not in names
        proc = await curl("-I", f"{front.url}/big?n=1000")
        assert proc.stdout.startswith(b"HTTP/1.1 200") and b"content-length: 1000" in proc.stdout


async def test_a_slow_head_gets_408_and_an_idle_connection_closes(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running_front() as front:
        start = trio.current_time()
        out = await raw(front.port, b"GET / HTTP/1.1\r\nHost: x\r\n", timeout=100)
        assert out.startswith(b"HTTP/1.1 408") and b"no complete request head in 60 s" in out
        assert trio.current_time() - start >= 60
        assert await raw(front.port, b"", timeout=100) == b""  # silent: closed the same
        out = await raw(front.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=100)
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"ok\n")  # ...then closed
