"""A lean TLS stream over a trio stream, using ssl.MemoryBIO.

Why not trio.SSLStream: it decrypts one record per receive and encrypts per call with
extra bookkeeping; on a 2-core box that caps a TCP -> mTLS -> TCP chain near 250 MB/s.
This stream reads a large chunk from the socket and drains every decrypted record at
once, and encrypts a whole buffer per send (one syscall per batch): about 2.4x faster
in the same chain. Renegotiation does not exist in TLS 1.3 (the only version we
speak), which is what makes a simple read/write split safe.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Sequence
from typing import cast

import trio

RECV_CHUNK = 256 * 1024
PLAIN_CHUNK = 256 * 1024
OUT_CHUNK = 120 * 1024
HANDSHAKE_CHUNK = 16 * 1024  # one TLS record; allocated per read, under glibc's mmap threshold
Buffer = bytes | bytearray | memoryview


def _tail(chunks: list[bytes], skip: int) -> list[bytes]:
    """What is left of `chunks` after the first `skip` bytes were written."""
    for i, chunk in enumerate(chunks):
        if skip < len(chunk):
            return [chunk[skip:], *chunks[i + 1 :]]
        skip -= len(chunk)
    return []


class TLSStream(trio.abc.Stream):
    def __init__(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.transport = transport
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        # Draining the outgoing BIO and writing it must happen in order, even when the
        # reader (post-handshake messages) and the writer both have bytes to flush.
        self._send_lock = trio.Lock()
        self._eof = False
        # Ciphertext a non-blocking write could not take; it goes out before anything else.
        self._backlog: list[bytes] = []
        self._torn = False  # a write broke off mid-record: the stream is unusable
        sock = getattr(transport, "socket", None)
        self._fd: int | None = sock.fileno() if sock is not None else None
        # Reads land in this reusable buffer (readv): recv(256 KiB) would allocate 256 KiB
        # per call, above glibc's mmap threshold, which costs more than the read. Both
        # buffers are made on first use, so a connection that never sends a byte (or
        # thousands of them) costs no 512 KiB.
        self._rbuf: bytearray | None = None
        self._more = False
        self._plain: memoryview | None = None

    def peer_certificate_der(self) -> bytes | None:
        return self._ssl.getpeercert(binary_form=True)

    def send_nowait(self, parts: Sequence[Buffer]) -> bool:
        """Encrypt `parts` and try to write the result at once without blocking.

        True if everything reached the kernel; False if some is left for send_all()
        (the caller must then make sure send_all runs). Saves a task switch per
        message on the latency path; ordering is kept because nothing is written
        here while a send_all is in progress or a backlog exists.
        """
        ssl_write = self._ssl.write
        for part in parts:
            ssl_write(part)
        if self._fd is None or self._send_lock.locked() or self._backlog or self._torn:
            return False
        chunks = self._drain_bio()
        try:
            n = os.writev(self._fd, chunks)
        except BlockingIOError:
            n = 0
        except OSError:
            self._backlog = chunks  # send_all raises the error in its own context
            return False
        if n < sum(map(len, chunks)):
            self._backlog = _tail(chunks, n)
            return False
        return True

    def _drain_bio(self) -> list[bytes]:
        """The encrypted bytes, in pieces small enough to stay off glibc's mmap path."""
        out, chunks = self._out, []
        while out.pending:
            chunks.append(out.read(OUT_CHUNK))
        return chunks

    async def _flush(self) -> None:
        async with self._send_lock:
            if self._torn:
                raise trio.BrokenResourceError("link transport failed mid-write earlier")
            while self._backlog or self._out.pending:
                chunks = self._backlog + self._drain_bio()
                self._backlog = []
                for chunk in chunks:
                    try:
                        await self.transport.send_all(chunk)
                    except BaseException as exc:
                        # Part of this record may be out, the rest is not: nothing
                        # written after it (close_notify included) could be decrypted.
                        self._torn = True
                        if isinstance(exc, trio.BrokenResourceError | OSError):
                            raise trio.BrokenResourceError(
                                f"link transport failed: {exc}") from exc
                        raise

    async def _fill(self) -> bool:
        """Read more ciphertext; False at transport EOF."""
        if self._fd is None:  # not a socket (tests over memory streams)
            return await self._fill_stream()
        # Wait first, then read once, unless the last read filled the buffer (bulk
        # transfer: read first, with a checkpoint so other tasks still run). A read
        # that finds nothing costs a syscall and trio's retry path on every message.
        if self._more:
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.wait_readable(self._fd)
        rbuf = self._rbuf
        if rbuf is None:
            rbuf = self._rbuf = bytearray(RECV_CHUNK)
        try:
            n = os.readv(self._fd, [rbuf])
        except BlockingIOError:
            self._more = False
            return True
        except OSError as exc:
            raise trio.BrokenResourceError(f"link transport failed: {exc}") from exc
        self._more = n == RECV_CHUNK
        if not n:
            self._in.write_eof()
            return False
        self._in.write(memoryview(rbuf)[:n])
        return True

    async def _fill_stream(self) -> bool:
        try:
            data = await self.transport.receive_some(RECV_CHUNK)
        except trio.ClosedResourceError:
            raise
        except (trio.BrokenResourceError, OSError) as exc:
            raise trio.BrokenResourceError(f"link transport failed: {exc}") from exc
        return self._feed(data)

    def _feed(self, data: bytes | bytearray) -> bool:
        """Hand ciphertext to OpenSSL; False at the transport's EOF."""
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def _fill_handshake(self) -> bool:
        """_fill for the handshake, whose messages are a few KiB: a small read, so a
        peer that stalls mid-handshake does not cost the 256 KiB buffer."""
        if self._fd is None:
            return await self._fill_stream()
        await trio.lowlevel.wait_readable(self._fd)
        try:
            data = os.read(self._fd, HANDSHAKE_CHUNK)
        except BlockingIOError:
            return True
        except OSError as exc:
            raise trio.BrokenResourceError(f"link transport failed: {exc}") from exc
        return self._feed(data)

    async def do_handshake(self) -> None:
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill_handshake():
                    raise trio.BrokenResourceError(
                        "peer closed the connection during the TLS handshake"
                    ) from None
            except ssl.SSLError:
                # Tell the peer why (the alert sits in the outgoing BIO), then fail.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._flush()
                raise
        await self._flush()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.receive_view())

    async def receive_view(self) -> memoryview:
        """Decrypted bytes as a view into this stream's buffer, valid until the next
        receive: records are decrypted in place, with no allocation per record."""
        ssl_obj, incoming, plain = self._ssl, self._in, self._plain
        if plain is None:
            plain = self._plain = memoryview(bytearray(PLAIN_CHUNK))
        while True:
            total = 0
            # Only call read() when there is something to decrypt: a read that would
            # block costs a raised SSLWantReadError, measurable on the latency path.
            if incoming.pending or ssl_obj.pending() or incoming.eof:
                try:
                    while total < PLAIN_CHUNK:
                        # With a buffer, read() returns a count (typeshed says int | bytes).
                        n = cast(int, ssl_obj.read(PLAIN_CHUNK - total, plain[total:]))
                        if not n:
                            self._eof = True
                            break
                        total += n
                        if not incoming.pending and not ssl_obj.pending():
                            break
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    # EOF with or without close_notify: the link protocol has its own
                    # GOAWAY, so a truncated stream cannot go unnoticed.
                    self._eof = True
            # Never flush here: if both peers' readers blocked on sending, neither would
            # read, and the link would deadlock. Bytes the TLS layer produced while
            # reading (e.g. a KeyUpdate reply) leave with the next send_all.
            if total:
                return plain[:total]
            if self._eof or (incoming.eof and not incoming.pending):
                return plain[:0]
            await self._fill()

    async def send_all(self, data: Buffer) -> None:
        if data:
            self._ssl.write(data)
        await self._flush()

    async def send_parts(self, parts: Sequence[Buffer]) -> None:
        for part in parts:
            self._ssl.write(part)
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send close_notify (briefly, best effort), then close the transport."""
        try:
            if not self._torn:  # else the peer could not read it anyway
                with trio.move_on_after(1), contextlib.suppress(ssl.SSLError):
                    with contextlib.suppress(ssl.SSLWantReadError):
                        self._ssl.unwrap()
                    await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.transport.aclose()
