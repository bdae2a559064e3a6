"""One HTTP message in a flow's bytes: the vocabulary and its codec (pure, sans-IO).

A request is one flow on the links. The listener's router writes the request into the
flow (HEAD, then BODY chunks as they arrive, TRAILERS if any, END); the connector's
router writes the response back the same way on the same flow. Transit routers only
see DATA, so multi-hop, credit and reset need nothing new. Both HTTP/1.1 and HTTP/2
are translated into this vocabulary, so either side may speak either version.

A request that proposes a protocol switch (`Upgrade`, or `CONNECT`) may become a
tunnel: when its response says yes (101 to an upgrade, 2xx to a CONNECT), each
direction goes on after its END with RAW records, opaque bytes, until the flow's
half-close in that direction (see `tunnel.py`).

Wire: each record is type (u8), length (u32, big-endian), payload. HEAD and TRAILERS
are msgpack; BODY and RAW are raw bytes; END is empty. Every size is checked against
`MessageLimits` before a payload is buffered, and a bad record is a `MessageError`
(the flow is reset; the link is fine).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol, TypeAlias

import msgpack

from router.errors import VanError
from router.protocol import FlowCode

Headers: TypeAlias = tuple[tuple[bytes, bytes], ...]  # lower-case names, in order
_RECORD = struct.Struct(">BI")


class RecordType(IntEnum):
    HEAD = 1
    BODY = 2
    TRAILERS = 3
    END = 4
    RAW = 5  # tunnel bytes, only after END of a message that switched protocols


class MessageError(VanError):
    """A record that breaks the message format or a limit; the message says which."""


@dataclass(frozen=True, slots=True)
class MessageLimits:
    """What a record between routers may hold. Above what a listener accepts from a
    client (`[limits]` http_max_head_bytes up to 64 KiB, http_max_headers up to 1000):
    `forwarded` repeats the authority and two headers are added on the way."""

    max_head_bytes: int = 256 * 1024  # an encoded head or trailers
    max_headers: int = 1024
    max_body_record_bytes: int = 256 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestHead:
    method: bytes
    target: bytes  # path and query ("*" for OPTIONS *, authority for CONNECT)
    authority: bytes
    scheme: bytes = b"http"
    headers: Headers = ()
    client: str = ""  # host:port of the client, for x-forwarded-for


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseHead:
    status: int
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes


@dataclass(frozen=True, slots=True)
class Trailers:
    headers: Headers


@dataclass(frozen=True, slots=True)
class End:
    pass


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes of a tunnel: after the END of a message whose exchange switched protocols."""

    data: bytes


Head: TypeAlias = RequestHead | ResponseHead
Part: TypeAlias = Head | Body | Trailers | End | Raw


def proposes_tunnel(head: RequestHead) -> bool:
    """The request asks for a protocol switch: CONNECT, or an `upgrade` header (which
    a listener keeps only for a switch it lets through; see `hop.tunnel_upgrade`)."""
    return head.method == b"CONNECT" or any(n == b"upgrade" for n, _ in head.headers)


def switches(request: RequestHead, status: int) -> bool:
    """A response of `status` to `request` turns the exchange into a tunnel: 101 to an
    upgrade, a 2xx to a CONNECT (RFC 9110 9.3.6, 15.2.2)."""
    if request.method == b"CONNECT":
        return 200 <= status < 300
    return status == 101 and proposes_tunnel(request)


def encode(part: Part) -> bytes:
    """The record for one part of a message."""
    if isinstance(part, Body):
        return _RECORD.pack(RecordType.BODY, len(part.data)) + part.data
    if isinstance(part, End):
        return _RECORD.pack(RecordType.END, 0)
    if isinstance(part, Raw):
        return _RECORD.pack(RecordType.RAW, len(part.data)) + part.data
    if isinstance(part, Trailers):
        return _record(RecordType.TRAILERS, [list(h) for h in part.headers])
    if isinstance(part, RequestHead):
        return _record(RecordType.HEAD, {
            "method": part.method, "target": part.target, "authority": part.authority,
            "scheme": part.scheme, "headers": [list(h) for h in part.headers],
            "client": part.client})
    return _record(RecordType.HEAD, {"status": part.status,
                                     "headers": [list(h) for h in part.headers]})


def _record(kind: RecordType, doc: Any) -> bytes:
    payload: bytes = msgpack.packb(doc, use_bin_type=True)
    return _RECORD.pack(kind, len(payload)) + payload


@dataclass
class MessageReader:
    """Feed a flow's bytes in, get the message's parts out; `request` says which head
    to expect. A message is HEAD, BODY*, TRAILERS?, END, and nothing after END but
    RAW records when the exchange may switch protocols: a request that proposes it,
    or a switching response to the request named by `expect_tunnel`."""

    request: bool
    limits: MessageLimits = field(default_factory=MessageLimits)
    _buf: bytearray = field(default_factory=bytearray)
    _seen_head: bool = False
    _seen_trailers: bool = False
    ended: bool = False
    tunnel: bool = False  # RAW records may follow END
    _proposal: RequestHead | None = None  # the request a response answers

    def expect_tunnel(self, request: RequestHead) -> None:
        """(A response reader) the request proposed a switch: a response that accepts
        it may go on with RAW records."""
        self._proposal = request

    def feed(self, data: bytes) -> list[Part]:
        self._buf += data
        parts: list[Part] = []
        while len(self._buf) >= _RECORD.size:
            kind, length = _RECORD.unpack_from(self._buf)
            self._check_size(kind, length)
            if len(self._buf) < _RECORD.size + length:
                break
            payload = bytes(self._buf[_RECORD.size:_RECORD.size + length])
            del self._buf[:_RECORD.size + length]
            parts.append(self._part(kind, payload))
        return parts

    def _check_size(self, kind: int, length: int) -> None:
        if self.ended and not (self.tunnel and kind == RecordType.RAW):
            raise MessageError("data after the end of the message")
        if kind == RecordType.RAW and not self.ended:
            raise MessageError("RAW before the end of the message")
        if kind in (RecordType.BODY, RecordType.RAW):
            cap = self.limits.max_body_record_bytes
        elif kind in (RecordType.HEAD, RecordType.TRAILERS):
            cap = self.limits.max_head_bytes
        elif kind == RecordType.END:
            cap = 0
        else:
            raise MessageError(f"unknown record type {kind}")
        if length > cap:
            raise MessageError(f"{RecordType(kind).name} record of {length} bytes exceeds "
                               f"{cap}")

    def _part(self, kind: int, payload: bytes) -> Part:
        if kind == RecordType.HEAD:
            if self._seen_head:
                raise MessageError("a second HEAD in one message")
            self._seen_head = True
            head = self._head(_unpack(payload))
            if isinstance(head, RequestHead):
                self.tunnel = proposes_tunnel(head)
            else:
                self.tunnel = (self._proposal is not None
                               and switches(self._proposal, head.status))
            return head
        if not self._seen_head:
            raise MessageError(f"{RecordType(kind).name} before HEAD")
        if kind == RecordType.BODY:
            if self._seen_trailers:
                raise MessageError("BODY after TRAILERS")
            return Body(payload)
        if kind == RecordType.TRAILERS:
            if self._seen_trailers:
                raise MessageError("a second TRAILERS in one message")
            self._seen_trailers = True
            return Trailers(self._headers(_unpack(payload)))
        if kind == RecordType.RAW:
            return Raw(payload)
        self.ended = True
        return End()

    def _head(self, doc: object) -> Head:
        if not isinstance(doc, dict):
            raise MessageError("HEAD is not a map")
        headers = self._headers(doc.get("headers"))
        if self.request:
            method, target, authority, scheme = (
                _bytes(doc, k) for k in ("method", "target", "authority", "scheme"))
            if not method:
                raise MessageError("request HEAD has an empty method")
            client = doc.get("client", "")
            return RequestHead(method=method, target=target, authority=authority,
                               scheme=scheme, headers=headers,
                               client=client if isinstance(client, str) else "")
        status = doc.get("status")
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
            raise MessageError(f"response HEAD has a bad status {status!r:.20}")
        return ResponseHead(status=status, headers=headers)

    def _headers(self, value: object) -> Headers:
        if not isinstance(value, list) or len(value) > self.limits.max_headers:
            raise MessageError(f"headers must be a list of at most {self.limits.max_headers}")
        out = []
        for pair in value:
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(x, bytes) for x in pair)):
                raise MessageError("a header is not a (name, value) pair of bytes")
            out.append((pair[0], pair[1]))
        return tuple(out)


def _bytes(doc: dict[Any, Any], key: str) -> bytes:
    value = doc.get(key)
    if not isinstance(value, bytes):
        raise MessageError(f"request HEAD lacks {key}")
    return value


def _unpack(payload: bytes) -> object:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise MessageError(f"record is not msgpack ({type(exc).__name__})") from None


class MessagePeer(Protocol):
    """The other end of one HTTP exchange, remote (a flow: `flowmsg.MessageFlow`) or on
    this site (`connector.LocalExchange`): parts go out with `send`, come in with
    `receive` (None after the peer's message ended and it half-closed)."""

    async def send(self, part: Part, *, more: bool = False) -> None: ...
    async def receive(self) -> Part | None: ...
    def ready(self) -> bool:
        """`receive` would return without waiting."""
    def finish(self) -> None: ...
    def abort(self, code: FlowCode, reason: str) -> None: ...
    async def wait_lost(self) -> str: ...
