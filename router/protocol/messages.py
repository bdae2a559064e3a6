"""Control messages carried as msgpack maps in HELLO, OPEN, ACCEPT, REFUSE, RESET, GOAWAY.

Constructing a message validates it (``ValueError`` for local mistakes); ``from_wire``
validates the same way and turns any problem into ``ProtocolError(BAD_MESSAGE)``. Unknown
keys are ignored so that a newer peer may add fields; missing keys are errors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import msgpack

from .errors import ErrorCode, FlowCode, ProtocolError

__all__ = [
    "MAX_NAME_CHARS",
    "MAX_REASON_CHARS",
    "MAX_TRACE_HOPS",
    "MAX_WINDOW",
    "Accept",
    "GoAway",
    "Hello",
    "Open",
    "Refuse",
    "Reset",
    "printable",
    "truncate_reason",
]

MAX_NAME_CHARS = 256  # router ids, site names, routing keys, addresses
MAX_REASON_CHARS = 1024  # human-readable reasons in REFUSE/RESET/GOAWAY
MAX_CODE = 0xFFFF  # REFUSE/RESET codes: FlowCode, room for more
MAX_TRACE_HOPS = 64  # routers an OPEN may have passed through
MAX_WINDOW = 2**31 - 1  # credit windows are signed-31-bit like HTTP/2's
MIN_FRAME_BYTES = 1024  # below this, framing overhead would dominate
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_KEEPALIVE_SECONDS = 3600.0
MAX_EARLY_BYTES = 1024 * 1024  # early DATA a router may offer to hold per flow
MAX_FEATURES = 32  # names in a HELLO's features
MAX_FEATURE_CHARS = 64

_SPACE = re.compile(r"\s")  # what str.isspace() calls a space (per request: no loop)
_MSGPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


def printable(text: str) -> str:
    """`text` with every character a terminal or a log would act on (controls such as ESC
    and newline, bidi and other format characters) written as its escape, e.g. ``\\x1b``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def truncate_reason(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


def _check_str(
    name: str, value: object, *, cap: int, nonempty: bool = False, ident: bool = True
) -> None:
    """An ident (a name, key, router id or address) ends up in logs and `sitectl status`
    as it is, so it may hold no control, format or space character; a reason is text for
    people and is made printable instead (see `_Reasoned`)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > cap:
        raise ValueError(f"{name} is {len(value)} characters, more than {cap}")
    if nonempty and not value:
        raise ValueError(f"{name} must not be empty")
    if ident and not (value.isprintable() and _SPACE.search(value) is None):
        raise ValueError(f"{name} {value[:40]!r} has a control, format or space "
                         "character")


def _check_int(name: str, value: object, *, lo: int, hi: int) -> None:
    # bool is an int subclass; a True window is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")


def _check_seconds(name: str, value: object, *, hi: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and 0.0 < value <= hi):
        raise ValueError(f"{name} must be in (0, {hi}] seconds, got {value}")


def _check_trace(trace: object, cap: int) -> None:
    if not isinstance(trace, tuple):
        raise ValueError(f"trace must be a list, got {type(trace).__name__}")
    if len(trace) > cap:
        raise ValueError(f"trace has {len(trace)} hops, more than {cap}")
    # Per flow on every router it crosses (OPEN and ACCEPT): the characters of all hops
    # are checked at once, and one hop at a time only to say which one is wrong.
    if all(isinstance(hop, str) and len(hop) <= MAX_NAME_CHARS for hop in trace):
        joined = "".join(trace)
        if joined.isprintable() and _SPACE.search(joined) is None:
            return
    for hop in trace:
        _check_str("trace entry", hop, cap=MAX_NAME_CHARS)


def _pack(body: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def _unpack(kind: str, data: bytes, required: tuple[str, ...],
            optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """Decode a msgpack map and pick out ``required`` keys (and ``optional`` ones that
    are there), ignoring any others."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except _MSGPACK_ERRORS as exc:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"{kind} body is not valid msgpack: {exc}"
        ) from exc
    if not isinstance(body, dict):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"{kind} body must be a map, got {type(body).__name__}"
        )
    for key in required:
        if key not in body:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{kind} message lacks field {key!r}")
    return {key: body[key] for key in (*required, *(k for k in optional if k in body))}


def _invalid(kind: str, exc: ValueError) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_MESSAGE, f"bad {kind} message: {exc}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """First frame on a link: who we are and how we want to be spoken to."""

    router_id: str
    site: str
    max_frame_bytes: int  # largest DATA payload we accept
    keepalive_interval: float  # seconds; we PING after this much send-idleness
    # DATA (and FIN) the peer may send on a flow it opens before our ACCEPT, so a short
    # request costs no round trip. Optional on the wire: a peer that does not name it
    # (an older router) takes none, and is sent none.
    early_bytes: int = 0
    # Optional messages the sender takes (e.g. "summary": traffic summaries in ROUTING
    # frames); a peer that names none (an older router) is sent none of them.
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_str("router_id", self.router_id, cap=MAX_NAME_CHARS, nonempty=True)
        _check_str("site", self.site, cap=MAX_NAME_CHARS, nonempty=True)
        _check_int("max_frame_bytes", self.max_frame_bytes, lo=MIN_FRAME_BYTES, hi=MAX_FRAME_BYTES)
        _check_seconds("keepalive_interval", self.keepalive_interval, hi=MAX_KEEPALIVE_SECONDS)
        _check_int("early_bytes", self.early_bytes, lo=0, hi=MAX_EARLY_BYTES)
        if not isinstance(self.features, tuple) or len(self.features) > MAX_FEATURES:
            raise ValueError(f"features must be a list of at most {MAX_FEATURES}")
        for feature in self.features:
            _check_str("feature", feature, cap=MAX_FEATURE_CHARS, nonempty=True)

    def to_wire(self) -> bytes:
        return _pack(
            {
                "router_id": self.router_id,
                "site": self.site,
                "max_frame_bytes": self.max_frame_bytes,
                "keepalive_interval": self.keepalive_interval,
                "early_bytes": self.early_bytes,
                "features": list(self.features),
            }
        )

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        f = _unpack("HELLO", data, ("router_id", "site", "max_frame_bytes", "keepalive_interval"),
                    optional=("early_bytes", "features"))
        if isinstance(f.get("features"), list):
            f["features"] = tuple(f["features"])
        interval = f["keepalive_interval"]
        if isinstance(interval, int) and not isinstance(interval, bool):
            f["keepalive_interval"] = float(interval)
        try:
            return cls(**f)
        except ValueError as exc:
            raise _invalid("HELLO", exc) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Open:
    """Request to open a flow towards the service named by ``routing_key``."""

    routing_key: str
    origin_site: str
    origin_router: str
    dest_router: str
    client_addr: str
    trace: tuple[str, ...]  # router ids this request passed through, for loop detection
    window: int  # initial credit the opener grants for data flowing back to it

    def __post_init__(self) -> None:
        _check_str("routing_key", self.routing_key, cap=MAX_NAME_CHARS, nonempty=True)
        _check_str("origin_site", self.origin_site, cap=MAX_NAME_CHARS)
        _check_str("origin_router", self.origin_router, cap=MAX_NAME_CHARS)
        _check_str("dest_router", self.dest_router, cap=MAX_NAME_CHARS)
        _check_str("client_addr", self.client_addr, cap=MAX_NAME_CHARS)
        _check_trace(self.trace, MAX_TRACE_HOPS)
        _check_int("window", self.window, lo=0, hi=MAX_WINDOW)

    def to_wire(self) -> bytes:
        return _pack(
            {
                "routing_key": self.routing_key,
                "origin_site": self.origin_site,
                "origin_router": self.origin_router,
                "dest_router": self.dest_router,
                "client_addr": self.client_addr,
                "trace": list(self.trace),
                "window": self.window,
            }
        )

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        f = _unpack(
            "OPEN",
            data,
            (
                "routing_key",
                "origin_site",
                "origin_router",
                "dest_router",
                "client_addr",
                "trace",
                "window",
            ),
        )
        if isinstance(f["trace"], list):
            f["trace"] = tuple(f["trace"])
        try:
            return cls(**f)
        except ValueError as exc:
            raise _invalid("OPEN", exc) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    window: int  # initial credit the acceptor grants the opener
    # For the opener's flow record, so the listener site holds the whole record with no
    # frame of its own: the routers the OPEN passed, the serving one last, and the
    # target it reached (host:port). Optional on the wire: an older router sends
    # neither, and transit routers pass both on unchanged.
    trace: tuple[str, ...] = ()
    server: str = ""

    def __post_init__(self) -> None:
        _check_int("window", self.window, lo=0, hi=MAX_WINDOW)
        _check_trace(self.trace, MAX_TRACE_HOPS + 1)  # the OPEN's, and the acceptor
        _check_str("server", self.server, cap=MAX_NAME_CHARS)

    def to_wire(self) -> bytes:
        body: dict[str, Any] = {"window": self.window}
        if self.trace:
            body["trace"] = list(self.trace)
        if self.server:
            body["server"] = self.server
        return _pack(body)

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        f = _unpack("ACCEPT", data, ("window",), optional=("trace", "server"))
        if isinstance(f.get("trace"), list):
            f["trace"] = tuple(f["trace"])
        try:
            return cls(**f)
        except ValueError as exc:
            raise _invalid("ACCEPT", exc) from exc


def _check_reason(reason: object) -> None:
    _check_str("reason", reason, cap=MAX_REASON_CHARS, ident=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Reasoned:
    """A control message that carries only a human-readable reason."""

    reason: str
    KIND: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _check_reason(self.reason)
        # A peer's reason is logged, shown by `sitectl status` and passed on to other
        # routers in their RESETs: no escape sequence or newline survives it. Escaping
        # may lengthen it past the cap; cut it back.
        object.__setattr__(self, "reason", truncate_reason(printable(self.reason)))

    def to_wire(self) -> bytes:
        return _pack({"reason": self.reason})

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        f = _unpack(cls.KIND, data, ("reason",))
        try:
            return cls(**f)
        except ValueError as exc:
            raise _invalid(cls.KIND, exc) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class _Coded:
    """REFUSE and RESET: a code a program can act on, and the reason for people."""

    code: FlowCode
    reason: str
    KIND: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not isinstance(self.code, FlowCode):
            raise ValueError(f"code must be a FlowCode, got {type(self.code).__name__}")
        _check_reason(self.reason)
        object.__setattr__(self, "reason", truncate_reason(printable(self.reason)))

    def to_wire(self) -> bytes:
        return _pack({"code": int(self.code), "reason": self.reason})

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        f = _unpack(cls.KIND, data, ("code", "reason"))
        code = f["code"]
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= MAX_CODE:
            raise _invalid(cls.KIND, ValueError(f"code must be an integer from 0 to {MAX_CODE}"))
        f["code"] = FlowCode.of(code)  # a code from a newer peer reads as UNKNOWN
        try:
            return cls(**f)
        except ValueError as exc:
            raise _invalid(cls.KIND, exc) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse(_Coded):
    KIND: ClassVar[str] = "REFUSE"


@dataclass(frozen=True, slots=True, kw_only=True)
class Reset(_Coded):
    KIND: ClassVar[str] = "RESET"


@dataclass(frozen=True, slots=True, kw_only=True)
class GoAway(_Reasoned):
    KIND: ClassVar[str] = "GOAWAY"
