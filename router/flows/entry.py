"""One flow end as the flow table keeps it while it lives, and as its record after."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["listener", "connector"]  # the end where the client is, or the target
Outcome = Literal["ok", "refused", "reset", "error"]
FlowProtocol = Literal["tcp", "http1", "http2", "grpc"]


@dataclass(slots=True, eq=False)
class FlowEntry:
    """One flow end while it lives; the bytes are counted by its data path."""

    id: int
    key: str
    role: Role
    client: str
    # Router ids the flow crossed, in order, as far as this end knows: a connector's
    # from the OPEN (and itself last), a listener's from the ACCEPT (only itself before).
    trace: tuple[str, ...]
    start: float = field(default_factory=time.time)
    server_router: str | None = None  # the router serving it, once chosen
    bytes_in: int = 0  # link -> local socket
    bytes_out: int = 0  # local socket -> link
    end: float | None = None  # set when it ends: the entry is then its record
    outcome: Outcome | None = None
    # For its record (flows/records.py `record_dict`); set once, never per byte.
    protocol: FlowProtocol = "tcp"
    listener_site: str = ""  # where the client is
    connector_site: str | None = None  # the site that took the flow, once one did
    server: str | None = None  # the connector's target, host:port, once reached
    reason: str | None = None  # why it was refused, reset or failed
    # HTTP requests only (see FlowTable.note_*); plain defaults keep TCP's cost.
    method: str | None = None  # None: not an HTTP request (the counters skip it)
    path: str | None = None
    status: int | None = None  # the HTTP status the client got
    grpc_status: int | None = None  # for gRPC, once known (trailers)
    by_router: bool = False  # the response was an error we generated, not the backend's
    attempts: int = 1
    retry_reasons: tuple[str, ...] = ()  # why each attempt after the first happened
    # start to the first byte from the serving side (HTTP: to the response head)
    ttfb_s: float | None = None
    served_by_site: str | None = None
