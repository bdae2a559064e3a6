"""What one client connection to an HTTP listener may take (pure: no trio).

The fields are the `http_*` and `http2_*` fields of the `[limits]` table of site.toml
(`router.site.config.Limits`), under the same names and with the same defaults, so a
name in the README, the config and this code is one thing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from router.site.config import Limits

# HTTP/1.1's " HTTP/1.1" and the space before the target: what a request line adds to
# its method and target (an HTTP/2 request is measured as HTTP/1.1 would send it).
_REQUEST_LINE_EXTRA = len(b"  HTTP/1.1")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    http_max_head_bytes: int = 64 * 1024  # the request head (HTTP/2: header list); 431
    http_max_headers: int = 128  # header fields in one request; 431
    http_max_request_line_bytes: int = 8192  # method, target and version; 414
    http_head_timeout_s: float = 60.0  # HTTP/1.1: a head, from the previous exchange's end
    http_idle_timeout_s: float = 300.0  # no request open: the connection is closed
    http_max_requests_per_connection: int = 0  # then the connection closes; 0: no limit
    http2_max_concurrent_streams: int = 100  # what we advertise; past it the connection ends
    http2_max_frame_bytes: int = 16_384  # SETTINGS_MAX_FRAME_SIZE we advertise
    http2_stream_window_bytes: int = 256 * 1024  # request body sent unacknowledged, a stream
    http2_connection_window_bytes: int = 1024 * 1024  # ...and over all streams
    http2_max_queued_bytes: int = 256 * 1024  # responses queued for the client: streams wait
    http2_max_queued_control_bytes: int = 1024 * 1024  # acks queued: we stop reading
    http2_reset_burst: int = 200  # client stream resets a connection may make at once...
    http2_resets_per_s: float = 20.0  # ...and the rate they refill at; then GOAWAY
    # Frames that carry no request (SETTINGS, PING, PRIORITY, WINDOW_UPDATE, empty DATA,
    # unknown types) a connection may send at once, and the rate they refill at (each
    # frame of a response sent earns two more, as a client acknowledges it); then GOAWAY
    http2_control_frame_burst: int = 1000
    http2_control_frames_per_s: float = 100.0


def http_limits(limits: Limits) -> HttpLimits:
    """The HTTP limits of a site's `[limits]`."""
    return HttpLimits(**{f.name: getattr(limits, f.name)
                         for f in dataclasses.fields(HttpLimits)})


def request_line_bytes(method: bytes, target: bytes) -> int:
    return len(method) + len(target) + _REQUEST_LINE_EXTRA
