"""Experimental: the TLSStream interface on a non-blocking ssl.SSLSocket.

TLSStream (router/net/tls.py) runs OpenSSL over two MemoryBIOs, which costs one
memcpy per direction (BIO.write of received ciphertext, BIO.read of produced
ciphertext). Here OpenSSL reads from and writes to the kernel itself, on a dup of the
transport's fd, so both copies disappear. The price: OpenSSL does its own socket I/O
one TLS record at a time (without read-ahead, which Python does not expose, SSL_read
issues two read() calls per record: 5-byte header, then body; SSL_write issues one
send() per 16 KiB record), where TLSStream does one readv/writev per 120-256 KiB.

Design notes
------------
* The fd. ``ctx.wrap_socket`` needs a stdlib socket; it takes over (detaches) the
  socket it is given. We give it ``socket.socket(fileno=os.dup(fd))``, so the
  SSLSocket owns the dup and the trio transport owns the original: each object
  closes only its own fd. Our own readiness waits use the dup, so they never collide
  with the transport's own waits on the original fd. On close we call
  trio.lowlevel.notify_closing(dup) first, which also removes it from trio's epoll set
  (epoll keys registrations by file description, which the original keeps open).
  The socket must be switched to non-blocking *before* wrapping: SSLSocket copies the
  Python-level timeout of the wrapped object (None = blocking) and would clear
  O_NONBLOCK on the shared file description, under trio's feet.

* One waiter per direction. Trio allows one task in wait_readable(fd) and one in
  wait_writable(fd) (else BusyResourceError). Normally the reader waits readable and
  the (lock-holding) writer waits writable, but OpenSSL can turn that around: SSL_read
  may need to write (WantWrite; TLS 1.3 KeyUpdate reply) and SSL_write may need to
  read (WantRead; renegotiation, which TLS 1.3 does not have). So every wait goes
  through _wait_readable/_wait_writable: the first task waits on the fd, any other
  task waiting for the same direction waits on an Event the first one sets when it
  wakes (or is cancelled). Every wait is followed by a retry of the SSL call, so a
  spurious wake-up (the first waiter was cancelled) only costs one retry.

* Reader WantWrite. OpenSSL will not hand out more application data until the
  post-handshake message it is writing (a KeyUpdate reply) is on the wire, so the
  reader has no choice but to wait for writability and retry the read. It returns
  whatever it already decrypted first. Why this cannot deadlock in practice: the
  reader only waits for room in our kernel send buffer, i.e. for the peer to read.
  The peer's reader (the link reader always reads) can only itself be blocked on
  writing while answering a KeyUpdate(update_requested) from us, and we never send
  one: CPython has no API for SSL_key_update and OpenSSL does not start key updates by
  itself on TLS-over-TCP. A TLSStream peer never blocks its reader on writes at all.
  (TLSStream avoids the question by leaving such bytes in its BIO until the next
  send_all; with an SSLSocket that option does not exist.)

* Writer WantRead. Not expected after a TLS 1.3 handshake, but handled: the writer
  (holding the send lock) waits readable through the shared waiter, never directly
  on the fd while the reader is waiting there, and afterwards sets _more so the
  reader tries SSL_read before waiting on the fd again (the writer's SSL_write may
  have pulled records into OpenSSL's buffer, where epoll cannot see them).

* Partial writes. CPython sets SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER but not
  SSL_MODE_ENABLE_PARTIAL_WRITE, so SSLSocket.send/_sslobj.write is all-or-nothing:
  it returns len(data), or raises SSLWantWriteError after OpenSSL has possibly
  consumed (encrypted, and partly sent) a prefix. The call must then be repeated with
  the same bytes (the object may move, the content may not). So the unit of backlog is
  plaintext: _pending is the part inside an unfinished SSL_write, _backlog the parts
  not yet given to OpenSSL. TLSStream's send_nowait encrypts at once, so a caller may
  reuse its buffers as soon as send_nowait returns; to keep that, any mutable part
  (bytearray, memoryview) that is left over is copied to bytes (only on the
  "socket full" path). Nothing is written by send_nowait while the send lock is held
  or anything is pending, so bytes leave in call order.

* Cancellation. A send_all cancelled while waiting for writability leaves its data in
  _pending/_backlog (snapshotted to bytes), and the next send_* carries on from there:
  the TLS stream stays intact. (TLSStream loses the rest of the chunk it was handing
  to transport.send_all, which breaks the stream; here it is no worse, arguably
  better.) A cancelled receive loses nothing: no data is taken out of OpenSSL without
  being returned.

* Errors. OSError from the socket (ECONNRESET, EPIPE, ...) becomes
  trio.BrokenResourceError("link transport failed: ..."); handshake SSLErrors
  propagate unchanged (SSLCertVerificationError on verify failures); EOF with or
  without close_notify gives an empty result; alerts received after the handshake
  propagate as ssl.SSLError from receive_*, as with TLSStream.

* Speed: the hot loops call the SSLSocket's internal ``_sslobj`` (the _ssl object
  behind SSLSocket.recv_into/send) directly, skipping ~1 us of Python wrapper checks
  per record. Semantics are the same; we do the ragged-EOF mapping ourselves.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any

import trio

PLAIN_CHUNK = 256 * 1024
MAX_RECORD = 16384  # TLS 1.3 maximum plaintext per record
Buffer = bytes | bytearray | memoryview


def _transport_error(exc: BaseException) -> trio.BrokenResourceError:
    return trio.BrokenResourceError(f"link transport failed: {exc}")


def _own(part: Buffer) -> Buffer:
    """An immutable copy of a part the caller might reuse (bytes are kept as they are)."""
    return part if type(part) is bytes else bytes(part)


class SocketTLSStream(trio.abc.Stream):
    def __init__(
        self,
        transport: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.transport = transport
        dup = os.dup(transport.socket.fileno())
        try:
            raw = socket.socket(fileno=dup)
        except BaseException:
            os.close(dup)
            raise
        try:
            raw.setblocking(False)  # before wrapping: see the module docstring
            self._ssl: ssl.SSLSocket = context.wrap_socket(
                raw,
                server_side=server_side,
                server_hostname=server_hostname,
                do_handshake_on_connect=False,
                suppress_ragged_eofs=True,
            )
        except BaseException:
            raw.close()
            raise
        self._fd = self._ssl.fileno()
        self._sslobj: Any = self._ssl._sslobj  # type: ignore[attr-defined]
        self._send_lock = trio.Lock()
        self._pending: Buffer | None = None  # inside an unfinished SSL_write
        self._backlog: deque[Buffer] = deque()  # not yet given to OpenSSL
        self._want_read = False  # the unfinished SSL_write needs the socket readable
        self._broken: BaseException | None = None
        self._closed = False
        self._eof = False
        self._more = False  # try SSL_read before waiting on the fd
        self._rwait: trio.Event | None = None
        self._wwait: trio.Event | None = None
        self._plain = memoryview(bytearray(PLAIN_CHUNK))

    @property
    def ssl_object(self) -> ssl.SSLSocket:
        return self._ssl

    def peer_certificate_der(self) -> bytes | None:
        return self._sslobj.getpeercert(True)  # type: ignore[no-any-return]

    # ------------------------------------------------------------ fd waits
    async def _wait_readable(self) -> None:
        ev = self._rwait
        if ev is not None:  # another task is on the fd; share its wake-up
            await ev.wait()
            self._check_open()
            return
        ev = self._rwait = trio.Event()
        try:
            await trio.lowlevel.wait_readable(self._fd)
        finally:
            self._rwait = None
            ev.set()

    async def _wait_writable(self) -> None:
        ev = self._wwait
        if ev is not None:
            await ev.wait()
            self._check_open()
            return
        ev = self._wwait = trio.Event()
        try:
            await trio.lowlevel.wait_writable(self._fd)
        finally:
            self._wwait = None
            ev.set()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream is closed")

    # ------------------------------------------------------------ handshake
    async def do_handshake(self) -> None:
        self._check_open()
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._wait_readable()
            except ssl.SSLWantWriteError:
                await self._wait_writable()
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                raise trio.BrokenResourceError(
                    "peer closed the connection during the TLS handshake"
                ) from None
            except ssl.SSLError:
                raise  # OpenSSL already wrote the alert to the socket
            except OSError as exc:
                raise _transport_error(exc) from exc
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------ receive
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.receive_view())

    async def receive_view(self) -> memoryview:
        """Decrypted bytes as a view into this stream's buffer, valid until the next
        receive; an empty view at EOF."""
        self._check_open()
        plain = self._plain
        read = self._sslobj.read
        if self._eof:
            await trio.lowlevel.checkpoint()
            return plain[:0]
        # Wait first unless there may be data already (the last read filled the buffer,
        # a record is half consumed, or a writer pulled records into OpenSSL).
        if self._more or self._sslobj.pending():
            await trio.lowlevel.checkpoint()
        else:
            await self._wait_readable()
        while True:
            self._more = False
            total = 0
            try:
                while total < PLAIN_CHUNK:
                    n = read(PLAIN_CHUNK - total, plain[total:])
                    if not n:  # close_notify
                        self._eof = True
                        break
                    total += n
                    # A short record ends what the peer wrote in one go: return now
                    # instead of paying a read() that fails plus a raised WantRead.
                    if n < MAX_RECORD and not self._sslobj.pending():
                        break
                else:
                    self._more = True
            except ssl.SSLWantReadError:
                if not total:
                    await self._wait_readable()
                    continue
            except ssl.SSLWantWriteError:
                # See the module docstring: OpenSSL is writing a post-handshake reply.
                if not total:
                    await self._wait_writable()
                    continue
                self._more = True
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
            except ssl.SSLError:
                raise
            except OSError as exc:
                if self._closed:
                    raise trio.ClosedResourceError("the TLS stream is closed") from None
                raise _transport_error(exc) from exc
            return plain[:total]

    # ------------------------------------------------------------ send
    def _write_some(self) -> bool:
        """Feed _pending, then the backlog, to SSL_write. True when all is written;
        False when the socket is full (then _want_read says which way to wait)."""
        if self._broken is not None:
            raise _transport_error(self._broken) from self._broken
        write = self._sslobj.write
        backlog = self._backlog
        while True:
            part = self._pending
            if part is None:
                if not backlog:
                    return True
                part = self._pending = backlog.popleft()
            try:
                write(part)
            except ssl.SSLWantWriteError:
                self._want_read = False
                return False
            except ssl.SSLWantReadError:
                self._want_read = True
                return False
            except (ssl.SSLError, OSError) as exc:
                self._broken = exc
                raise _transport_error(exc) from exc
            self._pending = None

    def _snapshot(self) -> None:
        """Copy what is still queued, so the caller may reuse its buffers."""
        if self._pending is not None:
            self._pending = _own(self._pending)
        if self._backlog:
            self._backlog = deque(map(_own, self._backlog))

    def send_nowait(self, parts: Sequence[Buffer]) -> bool:
        """Encrypt and write `parts` as far as the socket takes them without blocking.

        True if everything reached the kernel; False if some is left for send_all()
        (the caller must then make sure send_all runs). Nothing is written here while a
        send_all is in progress or a backlog exists, so ordering is kept.
        """
        if self._closed or self._broken is not None:
            self._backlog.extend(map(_own, parts))
            return False
        if self._send_lock.locked() or self._pending is not None or self._backlog:
            self._backlog.extend(map(_own, parts))
            return False
        write = self._sslobj.write
        for i, part in enumerate(parts):
            if not part:
                continue
            try:
                write(part)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError) as exc:
                self._want_read = isinstance(exc, ssl.SSLWantReadError)
                self._pending = _own(part)
                self._backlog.extend(map(_own, parts[i + 1 :]))
                return False
            except (ssl.SSLError, OSError) as exc:
                # send_all raises it in its own context, as TLSStream does.
                self._broken = exc
                return False
        return True

    async def _flush(self) -> None:
        async with self._send_lock:
            self._check_open()
            try:
                while not self._write_some():
                    if self._want_read:
                        await self._wait_readable()
                        self._more = True
                    else:
                        await self._wait_writable()
            except BaseException:
                self._snapshot()
                raise

    async def send_all(self, data: Buffer) -> None:
        if data:
            self._backlog.append(data)
        await self._flush()

    async def send_parts(self, parts: Sequence[Buffer]) -> None:
        self._backlog.extend(p for p in parts if p)
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    # ------------------------------------------------------------ close
    async def aclose(self) -> None:
        """Flush, send close_notify (briefly, best effort), then close both fds."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            with trio.move_on_after(1):
                await self._flush()
                while True:
                    try:
                        self._sslobj.shutdown()
                        break
                    except ssl.SSLWantReadError:
                        break  # close_notify is out; we do not wait for the peer's
                    except ssl.SSLWantWriteError:
                        await self._wait_writable()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        finally:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            with contextlib.suppress(OSError):
                self._ssl.close()
            await self.transport.aclose()
