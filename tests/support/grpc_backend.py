"""A grpcio backend for end-to-end tests: service test.Echo over raw bytes (no protoc), one
process, so a test can run one per site and kill it.

    python -m tests.support.grpc_backend --port P --name west

/test.Echo/Unary         echoes the request; initial metadata x-served-by and x-echo (the
                         request's x-echo), trailing metadata x-trailer (= "t-" + x-echo)
                         and x-bin-bin (binary); sets x-forwarded-for-seen
/test.Echo/Status        request b"CODE DETAILS": aborts with that grpc status code and
                         details (with trailing metadata x-why); b"raise" raises
/test.Echo/Sha           sha256 hex of the request
/test.Echo/Bytes         request b"N": N bytes of `pattern(N)`
/test.Echo/Ticks         server streaming, request b"N GAP_MS": N messages b"tick I",
                         GAP_MS apart
/test.Echo/Collect       client streaming: b"COUNT SHA256HEX" of the concatenated messages
/test.Echo/PingPong      bidirectional: each b"ping I" answered with b"pong I" at once
/test.Echo/Slow          sleeps up to request b"SECONDS", ending early if the call ends
/test.Echo/Stats         b"started=S cancelled=C" for Slow calls
Prints "ready PORT" on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from tests.support.httpd import pattern

SERVICE = "test.Echo"
MAX_MESSAGE = 64 * 1024 * 1024
OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE),
           ("grpc.max_send_message_length", MAX_MESSAGE)]


class Echo:
    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.started = 0
        self.cancelled = 0

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        meta = dict(context.invocation_metadata())
        echo = str(meta.get("x-echo", ""))
        context.send_initial_metadata((("x-served-by", self.name), ("x-echo", echo),
                                       ("x-forwarded-for-seen",
                                        str(meta.get("x-forwarded-for", "")))))
        context.set_trailing_metadata((("x-trailer", "t-" + echo),
                                       ("x-bin-bin", bytes(range(256)))))
        return request

    def status(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"raise":
            raise RuntimeError("the application failed")
        code_text, _, details = request.decode().partition(" ")
        code = next(c for c in grpc.StatusCode if c.value[0] == int(code_text))
        context.set_trailing_metadata((("x-why", "asked for " + code_text),))
        context.abort(code, details)
        raise AssertionError("abort returns only by raising")

    def sha(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return hashlib.sha256(request).hexdigest().encode()

    def bytes_(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return pattern(int(request))

    def ticks(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        count, gap_ms = (int(x) for x in request.split())
        for i in range(count):
            if i:
                time.sleep(gap_ms / 1000)
            yield f"tick {i}".encode()

    def collect(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        digest, count = hashlib.sha256(), 0
        for message in requests:
            digest.update(message)
            count += 1
        return f"{count} {digest.hexdigest()}".encode()

    def ping_pong(self, requests: Iterator[bytes],
                  context: grpc.ServicerContext) -> Iterator[bytes]:
        for message in requests:
            yield message.replace(b"ping", b"pong", 1)

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.started += 1
        deadline = time.monotonic() + float(request)
        while time.monotonic() < deadline:
            if not context.is_active():  # the client's cancel or deadline reached us
                with self.lock:
                    self.cancelled += 1
                return b""
            time.sleep(0.02)
        return b"done"

    def stats(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            return f"started={self.started} cancelled={self.cancelled}".encode()

    def handler(self) -> grpc.GenericRpcHandler:
        unary: dict[str, Callable[..., Any]] = {
            "Unary": self.unary, "Status": self.status, "Sha": self.sha,
            "Bytes": self.bytes_, "Slow": self.slow, "Stats": self.stats}
        methods = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in unary.items()}
        methods["Ticks"] = grpc.unary_stream_rpc_method_handler(self.ticks)
        methods["Collect"] = grpc.stream_unary_rpc_method_handler(self.collect)
        methods["PingPong"] = grpc.stream_stream_rpc_method_handler(self.ping_pong)
        return grpc.method_handlers_generic_handler(SERVICE, methods)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=OPTIONS)
    server.add_generic_rpc_handlers((Echo(args.name).handler(),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"ready {port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=0.5).wait()


if __name__ == "__main__":
    main()
