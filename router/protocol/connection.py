"""``LinkConnection``: the sans-IO link protocol endpoint.

Feed it bytes (``receive_data``), command it (``open_flow``, ``send_data``, ...), drain what
it wants sent (``data_to_send``), and call ``handle_timer`` at ``next_deadline()``. It does
no I/O and reads no clock: every time-dependent call takes ``now`` from the driver.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

from .errors import ErrorCode, FlowCode, FlowError, ProtocolError
from .events import (
    CreditGranted,
    DataReceived,
    Event,
    FlowAccepted,
    FlowFinished,
    FlowOpened,
    FlowRefused,
    FlowReset,
    HelloReceived,
    LinkClosedByPeer,
    LinkDead,
    PongReceived,
    RenewReceived,
    RoutingReceived,
)
from .flows import CAN_RECV_DATA, CAN_SEND_DATA, UNANSWERED, Flow, FlowInput, FlowState
from .frames import (
    CREDIT_BODY,
    HEADER,
    HEADER_SIZE,
    LINK_FRAMES,
    MAGIC,
    MAX_FLOW_ID,
    PING_BODY_SIZE,
    PREFACE,
    VERSION,
    FrameType,
)
from .limits import LinkLimits, Role
from .messages import (
    MAX_WINDOW,
    Accept,
    GoAway,
    Hello,
    Open,
    Refuse,
    Reset,
    truncate_reason,
)
from .outqueue import OutQueue

__all__ = ["LinkConnection", "LinkLimits", "Role"]

_DATA = int(FrameType.DATA)
_MAX_TYPE = max(FrameType)
_PING_SEQ = struct.Struct(">Q")
_MAX_PINGS_OUTSTANDING = 8  # unanswered PINGs remembered for RTT; older ones are forgotten


_Handler = Callable[[int, bytes, float], Event | None]


class LinkConnection:
    """One end of a link between two routers, multiplexing many flows."""

    def __init__(self, *, role: Role, hello: Hello, limits: LinkLimits, now: float) -> None:
        if hello.max_frame_bytes > limits.max_frame_bytes:
            # The peer would split DATA at the advertised size and we would reject it.
            raise ValueError(
                f"hello.max_frame_bytes ({hello.max_frame_bytes}) exceeds"
                f" limits.max_frame_bytes ({limits.max_frame_bytes})"
            )
        self._role = role
        self._hello = hello
        self._limits = limits
        self._peer_hello: Hello | None = None

        self._flows: dict[int, Flow] = {}
        self._next_id = 1 if role is Role.DIALER else 2
        self._peer_parity = 0 if role is Role.DIALER else 1
        self._last_peer_id = 0  # peer ids only grow, so anything at or below was seen

        self._buf = bytearray()
        self._held = False  # _buf holds input not parsed yet because of read_paused
        self._preface_seen = False
        self._out = OutQueue()

        self._closing = False  # we sent GOAWAY
        self._peer_closing = False  # peer sent GOAWAY
        self._error: ProtocolError | None = None
        self._dead = False

        self._last_recv = now
        self._last_send = now
        self._sent_since_tick = False  # commands carry no clock; stamp at the next tick
        self._ping_seq = 0
        self._pings: dict[bytes, float] = {}

        self._handlers: dict[int, _Handler] = {
            FrameType.HELLO: self._on_hello,
            FrameType.OPEN: self._on_open,
            FrameType.ACCEPT: self._on_accept,
            FrameType.REFUSE: self._on_refuse,
            FrameType.CREDIT: self._on_credit,
            FrameType.FIN: self._on_fin,
            FrameType.RESET: self._on_reset,
            FrameType.PING: self._on_ping,
            FrameType.PONG: self._on_pong,
            FrameType.ROUTING: self._on_routing,
            FrameType.GOAWAY: self._on_goaway,
            FrameType.RENEW: self._on_renew,
        }

        self._out.raw(PREFACE)
        self._queue(FrameType.HELLO, 0, hello.to_wire())
        self._sent_since_tick = False  # already stamped: _last_send is now

    # ------------------------------------------------------------------ inspection

    @property
    def role(self) -> Role:
        return self._role

    @property
    def hello(self) -> Hello:
        return self._hello

    @property
    def limits(self) -> LinkLimits:
        return self._limits

    @property
    def peer_hello(self) -> Hello | None:
        return self._peer_hello

    @property
    def _peer_early_bytes(self) -> int:
        return self._peer_hello.early_bytes if self._peer_hello is not None else 0

    def can_fin(self, flow_id: int) -> bool:
        """FIN may go out now (not before ACCEPT to a peer that takes no early data)."""
        flow = self._flows.get(flow_id)
        return flow is not None and flow.can(FlowInput.SEND_FIN) and (
            flow.state is not FlowState.OPENING or self._peer_early_bytes > 0)

    @property
    def outgoing_bytes(self) -> int:
        return self._out.size

    @property
    def unsent_control_bytes(self) -> int:
        """Bytes of non-DATA frames queued and not yet taken by data_to_send."""
        return self._out.control_size

    @property
    def read_paused(self) -> bool:
        """True while unsent control frames exceed ``max_unsent_control_bytes``:
        receive_data then parses nothing more (it keeps the input) until data_to_send
        took them. The driver should stop reading meanwhile, so a peer that sends but
        never reads is no longer read, rather than growing our queue of answers."""
        return self._out.control_size > self._limits.max_unsent_control_bytes

    @property
    def input_held(self) -> bool:
        """True while receive_data holds input it did not parse (it stopped at
        ``read_paused``): once no longer paused, ``receive_data(b"")`` goes on with it,
        before the driver waits for more from the peer."""
        return self._held

    @property
    def closing(self) -> bool:
        """True once either side sent GOAWAY: no new flows any more."""
        return self._closing or self._peer_closing

    def flow_ids(self) -> list[int]:
        return list(self._flows)

    def credit(self, flow_id: int) -> int:
        flow = self._flows.get(flow_id)
        if flow is None or flow.state not in CAN_SEND_DATA:
            return 0
        return flow.send_credit

    # ------------------------------------------------------------------ bytes in

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Parse whatever arrived; raise ProtocolError (after queueing GOAWAY) on violation.

        Parsing stops early once ``read_paused``: the rest stays buffered, and a later
        call (``b""`` once data_to_send was drained) goes on with it.
        """
        if self._error is not None:
            raise ProtocolError(self._error.code, self._error.message)
        if data:
            self._last_recv = now
        elif not self._held:
            return []
        self._stamp_send_clock(now)
        if self.read_paused:
            if data:
                self._buf += data
                self._held = True
            return []
        self._held = False
        # Parse straight from `data` when nothing is pending (the common case: no copy
        # of the whole read); only the tail of a partial frame is kept in _buf.
        if self._buf:
            self._buf += data
            source: bytes | bytearray | memoryview = self._buf
        else:
            source = data
        events: list[Event] = []
        try:
            consumed = self._parse(source, events, now)
            if source is self._buf:
                if consumed >= len(source):
                    self._buf.clear()
                elif consumed:
                    del self._buf[:consumed]
            elif consumed < len(source):
                self._buf = bytearray(source[consumed:])
        except ProtocolError as err:
            self._error = err
            self._buf = bytearray()
            self._held = False
            self._send_goaway(err.message)
            raise
        self._stamp_send_clock(now)  # replies queued while parsing (PONG, REFUSE) went now
        return events

    def _parse(self, buf: bytes | bytearray | memoryview, events: list[Event], now: float) -> int:
        """Parse whole frames from `buf`; returns how many bytes were consumed."""
        pos = 0
        if not self._preface_seen:
            pos = self._parse_preface(buf)
            if not self._preface_seen:
                return pos
        end = len(buf)
        max_data = self._limits.max_frame_bytes
        max_control = self._limits.max_control_bytes
        unpack = HEADER.unpack_from
        flows = self._flows
        handlers = self._handlers
        # Every PING queues a PONG and every surplus OPEN a REFUSE, so one large input
        # could queue replies without bound before the driver regains control. This
        # object bounds them itself rather than relying on how much a driver feeds at
        # once: the bound then holds for any driver and any test input, for one compare
        # per control frame. The unparsed rest waits in _buf (see receive_data), so a
        # peer that does read still gets every PING answered.
        out = self._out
        reply_budget = self._limits.max_unsent_control_bytes
        # DATA frames for one flow in a row become one DataReceived.
        run_id = -1
        run: list[memoryview] = []  # slices of the input: joined once, copied once
        with memoryview(buf) as view:
            while end - pos >= HEADER_SIZE:
                ftype, flags, flow_id, length = unpack(buf, pos)
                # Judge the declared length before waiting for (and buffering) the body.
                if ftype == _DATA:
                    limit = max_data
                elif 0 < ftype <= _MAX_TYPE:
                    limit = max_control
                else:
                    raise ProtocolError(ErrorCode.UNKNOWN_FRAME, f"unknown frame type {ftype}")
                if length > limit:
                    raise ProtocolError(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"frame of {length} bytes exceeds limit of {limit}",
                    )
                start = pos + HEADER_SIZE
                stop = start + length
                if stop > end:
                    break
                pos = stop
                if ftype == _DATA:
                    flow = flows.get(flow_id)
                    if (
                        flow is None
                        or flags
                        or flow.state not in CAN_RECV_DATA
                        or length > flow.recv_allowance
                    ):
                        # Raises, or returns None for a flow we already closed.
                        self._on_data_slow(flow_id, flags, length)
                        continue
                    flow.recv_allowance -= length
                    if not length:
                        continue
                    if flow_id != run_id:
                        if run:
                            events.append(DataReceived(flow_id=run_id, data=b"".join(run)))
                        run_id = flow_id
                        run = []
                    run.append(view[start:stop])
                    continue
                if run:
                    events.append(DataReceived(flow_id=run_id, data=b"".join(run)))
                    run_id = -1
                    run = []
                self._check_link_frame(ftype, flags, flow_id)
                event = handlers[ftype](flow_id, bytes(view[start:stop]), now)
                if event is not None:
                    events.append(event)
                if out.control_size > reply_budget:
                    self._held = pos < end
                    break
            if run:
                events.append(DataReceived(flow_id=run_id, data=b"".join(run)))
                run = []  # no slice may outlive the view (the caller resizes _buf)
        return pos

    def _parse_preface(self, buf: bytes | bytearray | memoryview) -> int:
        have = min(len(buf), len(MAGIC))
        if buf[:have] != MAGIC[:have]:
            raise ProtocolError(ErrorCode.BAD_PREFACE, "not a vanrouter link (bad preface)")
        if len(buf) < len(PREFACE):
            return 0
        version = buf[len(MAGIC)]
        if version != VERSION:
            raise ProtocolError(
                ErrorCode.VERSION,
                f"unsupported protocol version {version}; this router speaks {VERSION}",
            )
        self._preface_seen = True
        return len(PREFACE)

    def _check_link_frame(self, ftype: int, flags: int, flow_id: int) -> None:
        """Checks common to every non-DATA frame: flags, HELLO first, flow 0 usage."""
        name = FrameType(ftype).name
        if flags:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"{name} frame has flags {flags:#x}")
        if self._peer_hello is None:
            if ftype != FrameType.HELLO:
                raise ProtocolError(
                    ErrorCode.HELLO_EXPECTED, f"expected HELLO as first frame, got {name}"
                )
        elif ftype == FrameType.HELLO:
            raise ProtocolError(ErrorCode.BAD_FRAME, "HELLO sent twice")
        if ftype in LINK_FRAMES:
            if flow_id != 0:
                raise ProtocolError(
                    ErrorCode.BAD_FLOW_ID, f"{name} frame must use flow 0, not {flow_id}"
                )
        elif flow_id == 0:
            raise ProtocolError(ErrorCode.BAD_FLOW_ID, f"{name} frame must not use flow 0")

    # ------------------------------------------------------------------ frame handlers

    def _on_hello(self, flow_id: int, body: bytes, now: float) -> Event | None:
        hello = Hello.from_wire(body)
        self._peer_hello = hello
        return HelloReceived(hello=hello)

    def _on_data_slow(self, flow_id: int, flags: int, length: int) -> None:
        """Every DATA frame the fast path would not take: explain why, or drop it."""
        if flags:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"DATA frame has flags {flags:#x}")
        if self._peer_hello is None:
            raise ProtocolError(ErrorCode.HELLO_EXPECTED, "expected HELLO as first frame, got DATA")
        if flow_id == 0:
            raise ProtocolError(ErrorCode.BAD_FLOW_ID, "DATA frame must not use flow 0")
        flow = self._peer_flow(flow_id, "DATA")
        if flow is None:
            return  # we closed it while the peer was still sending; not the peer's fault
        if flow.state not in CAN_RECV_DATA:
            flow.on_peer(FlowInput.RECV_DATA, "DATA")
        raise ProtocolError(
            ErrorCode.FLOW_CONTROL,
            f"DATA of {length} bytes on flow {flow_id} exceeds its window of {flow.recv_allowance}",
        )

    def _on_open(self, flow_id: int, body: bytes, now: float) -> Event | None:
        if flow_id % 2 != self._peer_parity:
            raise ProtocolError(
                ErrorCode.BAD_FLOW_ID, f"peer opened flow {flow_id}, which has our parity"
            )
        if flow_id <= self._last_peer_id:
            raise ProtocolError(
                ErrorCode.BAD_FLOW_ID,
                f"peer opened flow {flow_id}, not above its last id {self._last_peer_id}",
            )
        if self._peer_closing:
            raise ProtocolError(ErrorCode.LINK_CLOSED, "peer opened a flow after its GOAWAY")
        request = Open.from_wire(body)
        self._last_peer_id = flow_id
        if self._closing or len(self._flows) >= self._limits.max_flows:
            # Flow counts race between the ends; refusing keeps the link up.
            reason = "link is closing" if self._closing else "too many flows on this link"
            refuse = Refuse(code=FlowCode.CAPACITY, reason=reason)
            self._queue(FrameType.REFUSE, flow_id, refuse.to_wire())
            return None
        # Until we answer, the peer may send what our HELLO offered as early data.
        flow = Flow(flow_id, FlowState.IDLE, request.window, self._hello.early_bytes)
        flow.on_peer(FlowInput.RECV_OPEN, "OPEN")
        self._flows[flow_id] = flow
        return FlowOpened(flow_id=flow_id, open=request)

    def _on_accept(self, flow_id: int, body: bytes, now: float) -> Event | None:
        accept = Accept.from_wire(body)
        flow = self._peer_flow(flow_id, "ACCEPT")
        if flow is None:
            return None
        flow.on_peer(FlowInput.RECV_ACCEPT, "ACCEPT")
        # The window counts from the OPEN: what we sent early is already in it.
        early_sent = self._peer_early_bytes - flow.send_credit
        flow.send_credit = max(0, accept.window - early_sent)
        return FlowAccepted(flow_id=flow_id, window=accept.window, trace=accept.trace,
                            server=accept.server)

    def _on_refuse(self, flow_id: int, body: bytes, now: float) -> Event | None:
        refuse = Refuse.from_wire(body)
        flow = self._peer_flow(flow_id, "REFUSE")
        if flow is None:
            return None
        flow.on_peer(FlowInput.RECV_REFUSE, "REFUSE")
        del self._flows[flow_id]
        return FlowRefused(flow_id=flow_id, code=refuse.code, reason=refuse.reason)

    def _on_credit(self, flow_id: int, body: bytes, now: float) -> Event | None:
        if len(body) != CREDIT_BODY.size:
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"CREDIT body is {len(body)} bytes, not {CREDIT_BODY.size}"
            )
        (amount,) = CREDIT_BODY.unpack(body)
        if amount == 0:
            raise ProtocolError(ErrorCode.FLOW_CONTROL, f"CREDIT of 0 on flow {flow_id}")
        flow = self._peer_flow(flow_id, "CREDIT")
        if flow is None:
            return None
        flow.on_peer(FlowInput.RECV_CREDIT, "CREDIT")
        if flow.send_credit + amount > MAX_WINDOW:
            raise ProtocolError(
                ErrorCode.FLOW_CONTROL,
                f"CREDIT of {amount} on flow {flow_id} overflows the window past {MAX_WINDOW}",
            )
        flow.send_credit += amount
        return CreditGranted(flow_id=flow_id, amount=amount)

    def _on_fin(self, flow_id: int, body: bytes, now: float) -> Event | None:
        if body:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"FIN body must be empty, got {len(body)}")
        flow = self._peer_flow(flow_id, "FIN")
        if flow is None:
            return None
        if flow.on_peer(FlowInput.RECV_FIN, "FIN") is FlowState.CLOSED:
            del self._flows[flow_id]
        return FlowFinished(flow_id=flow_id)

    def _on_reset(self, flow_id: int, body: bytes, now: float) -> Event | None:
        reset = Reset.from_wire(body)
        flow = self._peer_flow(flow_id, "RESET")
        if flow is None:
            return None
        flow.on_peer(FlowInput.RECV_RESET, "RESET")
        del self._flows[flow_id]
        return FlowReset(flow_id=flow_id, code=reset.code, reason=reset.reason)

    def _on_ping(self, flow_id: int, body: bytes, now: float) -> Event | None:
        if len(body) != PING_BODY_SIZE:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"PING body is {len(body)} bytes, not 8")
        self._queue(FrameType.PONG, 0, body)
        return None

    def _on_pong(self, flow_id: int, body: bytes, now: float) -> Event | None:
        if len(body) != PING_BODY_SIZE:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"PONG body is {len(body)} bytes, not 8")
        sent = self._pings.pop(body, None)
        if sent is None:
            return None  # unsolicited, or for a PING we stopped tracking
        return PongReceived(rtt=now - sent)

    def _on_routing(self, flow_id: int, body: bytes, now: float) -> Event | None:
        return RoutingReceived(payload=body)

    def _on_renew(self, flow_id: int, body: bytes, now: float) -> Event | None:
        return RenewReceived(payload=body)

    def _on_goaway(self, flow_id: int, body: bytes, now: float) -> Event | None:
        goaway = GoAway.from_wire(body)
        self._peer_closing = True
        return LinkClosedByPeer(reason=goaway.reason)

    def _peer_flow(self, flow_id: int, frame: str) -> Flow | None:
        """The flow a peer frame names; None if it existed once (frame raced our close)."""
        flow = self._flows.get(flow_id)
        if flow is not None:
            return flow
        if flow_id % 2 == self._peer_parity:
            seen = flow_id <= self._last_peer_id
        else:
            seen = flow_id < self._next_id
        if seen:
            return None
        raise ProtocolError(ErrorCode.BAD_FLOW_ID, f"{frame} frame for unknown flow {flow_id}")

    # ------------------------------------------------------------------ commands

    def open_flow(self, open: Open) -> int:
        """Allocate a flow id, queue OPEN, and return the id."""
        if self._error is not None or self.closing:
            raise FlowError("link is closing; no new flows")
        if len(self._flows) >= self._limits.max_flows:
            raise FlowError(f"link already carries {self._limits.max_flows} flows")
        flow_id = self._next_id
        if flow_id > MAX_FLOW_ID:
            raise FlowError("flow ids exhausted on this link")
        self._next_id += 2
        # Early data: the peer holds up to its early_bytes until it answers.
        flow = Flow(flow_id, FlowState.IDLE, self._peer_early_bytes, open.window)
        flow.on_local(FlowInput.SEND_OPEN)
        self._flows[flow_id] = flow
        self._queue(FrameType.OPEN, flow_id, open.to_wire())
        return flow_id

    def accept_flow(self, flow_id: int, window: int, *, trace: tuple[str, ...] = (),
                    server: str = "") -> None:
        """Accept the peer's OPEN; `trace` and `server` go back for its flow record."""
        # ValueError for a bad window or trace, before any change
        accept = Accept(window=window, trace=trace, server=server)
        flow = self._local_flow(flow_id)
        if window < flow.window:
            # The window counts from the OPEN and holds what arrived early; never below
            # the early offer, so the opener's credit cannot go negative.
            window = flow.window
            accept = Accept(window=window, trace=trace, server=server)
        flow.on_local(FlowInput.SEND_ACCEPT)
        flow.recv_allowance += window - flow.window
        flow.window = window
        self._queue(FrameType.ACCEPT, flow_id, accept.to_wire())

    def refuse_flow(self, flow_id: int, code: FlowCode, reason: str) -> None:
        flow = self._local_flow(flow_id)
        flow.on_local(FlowInput.SEND_REFUSE)
        del self._flows[flow_id]
        refuse = Refuse(code=code, reason=truncate_reason(reason))
        self._queue(FrameType.REFUSE, flow_id, refuse.to_wire())

    def send_data(self, flow_id: int, data: bytes | bytearray | memoryview) -> None:
        """Queue DATA frames; the whole of ``data`` must fit in the flow's credit."""
        flow = self._local_flow(flow_id)
        if flow.state not in CAN_SEND_DATA:
            flow.on_local(FlowInput.SEND_DATA)  # raises FlowError naming the state
        size = len(data)
        if size > flow.send_credit:
            raise FlowError(
                f"cannot send {size} bytes on flow {flow_id}: credit is {flow.send_credit}"
            )
        if not size:
            return
        flow.send_credit -= size
        peer = self._peer_hello
        self._out.data(flow_id, data, (peer or self._hello).max_frame_bytes)
        self._sent_since_tick = True

    def grant_credit(self, flow_id: int, n: int) -> None:
        """Record that ``n`` more bytes were consumed locally; no-op if the flow is gone.

        CREDIT goes out once a quarter of the window was consumed, not per call: a
        request/response flow then costs no CREDIT frames at all (and no wake-up of
        the peer), while a bulk sender never runs dry (3/4 of its window stays in
        flight while the grant travels).
        """
        if n < 0:
            raise ValueError(f"cannot grant negative credit {n}")
        flow = self._flows.get(flow_id)
        if flow is None or not n:
            return
        if flow.state in UNANSWERED:  # early data consumed: granted with the rest later
            flow.unacked += n
            return
        if not flow.can(FlowInput.SEND_CREDIT):
            return
        unacked = flow.unacked + n
        if unacked < (flow.window >> 2):
            flow.unacked = unacked
            return
        if flow.recv_allowance + unacked > MAX_WINDOW:
            raise FlowError(f"granting {n} bytes on flow {flow_id} exceeds window {MAX_WINDOW}")
        flow.unacked = 0
        flow.recv_allowance += unacked
        self._queue(FrameType.CREDIT, flow_id, CREDIT_BODY.pack(unacked))

    def send_fin(self, flow_id: int) -> None:
        flow = self._local_flow(flow_id)
        if flow.state is FlowState.OPENING and not self._peer_early_bytes:
            raise FlowError(f"cannot send fin on flow {flow_id} before it is accepted: "
                            "the peer takes no early data")
        if flow.on_local(FlowInput.SEND_FIN) is FlowState.CLOSED:
            del self._flows[flow_id]
        self._queue(FrameType.FIN, flow_id, b"")

    def reset_flow(self, flow_id: int, code: FlowCode, reason: str) -> None:
        flow = self._flows.pop(flow_id, None)
        if flow is None:
            return
        flow.on_local(FlowInput.SEND_RESET)
        reset = Reset(code=code, reason=truncate_reason(reason))
        self._queue(FrameType.RESET, flow_id, reset.to_wire())

    def send_routing(self, payload: bytes) -> None:
        if len(payload) > self._limits.max_control_bytes:
            raise ValueError(
                f"routing payload of {len(payload)} bytes exceeds {self._limits.max_control_bytes}"
            )
        self._queue(FrameType.ROUTING, 0, payload)

    def send_renew(self, payload: bytes) -> None:
        """A certificate renewal message; only to a peer whose HELLO has RENEW_FEATURE."""
        if len(payload) > self._limits.max_control_bytes:
            raise ValueError(
                f"renew payload of {len(payload)} bytes exceeds {self._limits.max_control_bytes}"
            )
        self._queue(FrameType.RENEW, 0, payload)

    def close(self, reason: str) -> None:
        """Queue GOAWAY (once); no new flows afterwards, existing ones may finish."""
        self._send_goaway(reason)

    def ping(self, now: float) -> None:
        payload = _PING_SEQ.pack(self._ping_seq)
        self._ping_seq += 1
        if len(self._pings) >= _MAX_PINGS_OUTSTANDING:
            del self._pings[next(iter(self._pings))]
        self._pings[payload] = now
        self._queue(FrameType.PING, 0, payload)
        self._last_send = now
        self._sent_since_tick = False

    def data_to_send(self) -> bytearray | bytes:
        """Everything queued, as one buffer (then the queue is empty)."""
        return self._out.drain()

    def data_to_send_parts(self) -> list[bytes | bytearray | memoryview]:
        """Everything queued, in order, without joining large payloads (no copy)."""
        return self._out.drain_parts()

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float:
        if self._dead or self._error is not None:
            return math.inf
        return min(
            self._last_send + self._limits.keepalive_interval,
            self._last_recv + self._limits.dead_after,
        )

    def handle_timer(self, now: float) -> list[Event]:
        if self._dead or self._error is not None:
            return []
        self._stamp_send_clock(now)
        if now >= self._last_recv + self._limits.dead_after:
            self._dead = True
            return [LinkDead(reason=f"no traffic from peer for {self._limits.dead_after} s")]
        if now >= self._last_send + self._limits.keepalive_interval:
            self.ping(now)
        return []

    # ------------------------------------------------------------------ helpers

    def _local_flow(self, flow_id: int) -> Flow:
        flow = self._flows.get(flow_id)
        if flow is None:
            raise FlowError(f"no flow {flow_id} on this link")
        return flow

    def _queue(self, ftype: FrameType, flow_id: int, body: bytes) -> None:
        self._out.frame(ftype, flow_id, body)
        self._sent_since_tick = True

    def _send_goaway(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._queue(FrameType.GOAWAY, 0, GoAway(reason=truncate_reason(reason)).to_wire())

    def _stamp_send_clock(self, now: float) -> None:
        if self._sent_since_tick:
            self._last_send = now
            self._sent_since_tick = False
