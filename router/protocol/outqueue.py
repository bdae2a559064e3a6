"""The link's outgoing bytes: frames queued in order, bulk payloads never copied.

Small frames (control frames, small DATA) are copied into one growing bytearray, so a
small message becomes one contiguous write (one TLS record). A large DATA payload is
queued by reference after whatever was buffered before it; the driver encrypts the
parts one by one, so bulk data is not copied here.

Non-DATA bytes are counted apart (``control_size``): DATA is bounded by credit and by
the flows' back-pressure, but control frames (PONG, REFUSE, CREDIT...) are queued in
answer to what the peer sends, so only their own count can bound them.
"""

from __future__ import annotations

from .frames import HEADER, FrameType

Buffer = bytes | bytearray | memoryview

# DATA payloads up to this size are copied next to their header; larger ones are
# queued by reference.
COPY_BELOW = 16 * 1024
_DATA = int(FrameType.DATA)
_HEADER_SIZE = HEADER.size
_pack_header = HEADER.pack


class OutQueue:
    __slots__ = ("_control", "_parts", "_parts_size", "_small")

    def __init__(self) -> None:
        self._small = bytearray()
        self._parts: list[Buffer] = []
        self._parts_size = 0
        self._control = 0

    @property
    def size(self) -> int:
        return self._parts_size + len(self._small)

    @property
    def control_size(self) -> int:
        """Bytes of queued non-DATA frames (and the preface)."""
        return self._control

    def raw(self, data: bytes) -> None:
        self._small += data
        self._control += len(data)

    def frame(self, ftype: int, flow_id: int, body: bytes) -> None:
        small = self._small
        small += _pack_header(ftype, 0, flow_id, len(body))
        small += body
        self._control += _HEADER_SIZE + len(body)

    def data(self, flow_id: int, data: Buffer, step: int) -> None:
        """DATA frames of at most `step` payload bytes each. `data` is kept by reference
        when large (bytes are immutable; anything else is copied once first)."""
        size = len(data)
        small = self._small
        if size <= step and size <= COPY_BELOW:
            small += _pack_header(_DATA, 0, flow_id, size)
            small += data
            return
        payload = data if type(data) is bytes else bytes(data)
        view = memoryview(payload)  # slices stay queued: no `with` release here
        for offset in range(0, size, step):
            chunk = view[offset : offset + step] if size > step else payload
            small += _pack_header(_DATA, 0, flow_id, len(chunk))
            if len(chunk) <= COPY_BELOW:
                small += chunk
                continue
            self._parts.append(small)
            self._parts.append(chunk)
            self._parts_size += len(small) + len(chunk)
            small = self._small = bytearray()

    def drain_parts(self) -> list[Buffer]:
        """Everything queued, in order, without joining large payloads."""
        parts = self._parts
        if self._small:
            parts.append(self._small)
            self._small = bytearray()
        elif not parts:
            return []
        self._parts = []
        self._parts_size = 0
        self._control = 0
        return parts

    def drain(self) -> bytes | bytearray:
        """Everything queued as one buffer."""
        parts = self.drain_parts()
        if not parts:
            return b""
        first = parts[0]
        if len(parts) == 1 and isinstance(first, bytearray):
            return first
        return b"".join(parts)
