"""TLSStream alone: 1-byte round trip, bulk throughput, and memory per idle stream.

Both ends in one trio process over real loopback TCP with the project's mTLS contexts,
so the numbers isolate the stream itself (no routers, no flows). For A/B runs of a
change to router/net/tls.py: run this before and after, alternating, a few times.

    .venv/bin/python bench/tls_stream.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import time
import tracemalloc

import trio
import trio.testing

import certs
from router.net.tls import TLSStream

PINGS = 5000
BULK_BYTES = 256 * 1024 * 1024
CHUNK = 64 * 1024
IDLE_STREAMS = 1000


def _contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = certs.CertificateAuthority.generate("west")
    west, east = ca.issue("west"), ca.issue("east")
    srv = certs.server_context(cert_pem=west.cert_pem, key_pem=west.key_pem,
                               ca_pem=ca.cert_pem)
    cli = certs.client_context(cert_pem=east.cert_pem, key_pem=east.key_pem,
                               ca_pem=ca.cert_pem)
    return srv, cli


async def _pair() -> tuple[TLSStream, TLSStream]:
    srv_ctx, cli_ctx = _contexts()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client_sock = await trio.open_tcp_stream("127.0.0.1", port)
    server_sock = await listeners[0].accept()
    await listeners[0].aclose()
    server = TLSStream(server_sock, srv_ctx, server_side=True)
    client = TLSStream(client_sock, cli_ctx, server_side=False, server_hostname="west")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


async def rtt_us(server: TLSStream, client: TLSStream) -> float:
    async def echo() -> None:
        for _ in range(PINGS):
            await server.send_all(await server.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        start = time.perf_counter()
        for _ in range(PINGS):
            await client.send_all(b"x")
            await client.receive_some()
        elapsed = time.perf_counter() - start
    return elapsed / PINGS * 1e6


async def throughput_mbps(server: TLSStream, client: TLSStream) -> float:
    payload = bytes(CHUNK)

    async def sink() -> None:
        got = 0
        while got < BULK_BYTES:
            got += len(await server.receive_view())

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink)
        for _ in range(BULK_BYTES // CHUNK):
            await client.send_all(payload)
    return BULK_BYTES / (time.perf_counter() - start) / 1e6


def idle_kib() -> float:
    """Python heap per TLSStream that has not received anything yet."""
    srv_ctx, _ = _contexts()
    pairs = [trio.testing.memory_stream_pair() for _ in range(IDLE_STREAMS)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    streams = [TLSStream(a, srv_ctx, server_side=True) for a, _ in pairs]
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del streams
    return used / IDLE_STREAMS / 1024


async def one_round() -> tuple[float, float]:
    server, client = await _pair()
    rtt = await rtt_us(server, client)
    mbps = await throughput_mbps(server, client)
    await client.aclose()
    await server.aclose()
    return rtt, mbps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    samples = [trio.run(one_round) for _ in range(args.rounds)]
    result = {
        "rtt_us_median": round(statistics.median(s[0] for s in samples), 1),
        "throughput_mbps_median": round(statistics.median(s[1] for s in samples), 1),
        "idle_stream_kib": round(idle_kib(), 1),
        "samples": samples,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
