"""The routing core: link-state database, flooding, ageing, shortest paths, key table.

Sans-IO: the owner feeds it neighbour events and payloads (`neighbour_up`, `receive`, ...),
drives its clock (`next_deadline`, `handle_timer`) and drains `outgoing()`. Every method that
takes `now` treats time as monotonic seconds; a `now` earlier than one already seen is clamped.

Flooding rules (OSPF-like):

- a record newer than the held one (higher seq; equal seq with different content: the larger
  canonical encoding, so all routers pick the same one) is stored and forwarded to every
  neighbour but the sender; an identical one is dropped; an older one makes us send ours back;
- a record of our own id that is newer than ours (we restarted with seq reset) makes us jump
  our seq above it and re-originate;
- a new neighbour gets the whole database, and every link change re-originates our record;
- our record is re-originated every `refresh_interval`; others' expire `max_age` after their
  origin produced them (the age travels with the record, so a stale copy learned late does not
  get a fresh lifetime).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import ForgedRecord, LimitExceeded, RoutingError
from .records import (
    MAX_COST,
    MAX_ID_CHARS,
    MAX_KEY_CHARS,
    MESSAGE_HEADER_BYTES,
    MESSAGE_ITEM_OVERHEAD_BYTES,
    KeyAdvert,
    RouterRecord,
    batched,
    check_int,
    check_str,
    decode_message,
    encode_message,
)
from .signing import Signer, VerifyFn, router_id_for
from .spf import ShortestPaths, shortest_paths

# The largest routing message: what one ROUTING frame carries (the link's max_control_bytes,
# LinkLimits' default). Larger batches cannot be sent: a database of more than this (a few
# hundred routers, or a peer's few fake ones) made every new link fail as it came up.
MAX_MESSAGE_BYTES = 64 * 1024

# Room left in a message for our own record to grow (seq digits) after it was size-checked.
_OWN_RECORD_SLACK_BYTES = 64

# What a stored record is taken to cost in memory, for `max_db_bytes`: its wire bytes, plus
# per link, key and listened key the decoded tuple and string, the links dict and key index
# entries (measured with tracemalloc on CPython 3.11: 160-220 bytes each), plus the entry,
# record and heap item around them (about 3 KiB measured with few items).
DB_ITEM_BYTES = 256
DB_RECORD_BYTES = 4096


def stored_bytes(record: RouterRecord, wire: bytes) -> int:
    """What holding `record` counts against `max_db_bytes`."""
    items = len(record.links) + len(record.keys) + len(record.listens)
    return DB_RECORD_BYTES + len(wire) + DB_ITEM_BYTES * items


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A reachable router offering a routing key. cost is the path cost (0 for ourselves)."""

    router_id: str
    site: str
    cost: int
    priority: int
    weight: int
    next_hop: str | None


@dataclass(slots=True, kw_only=True)
class _Entry:
    record: RouterRecord
    wire: bytes  # encoding as received (ours: canonical), forwarded as is
    cost: int  # stored_bytes(record, wire)
    links: dict[str, int]
    origin_time: float  # our clock's time when the record had age 0
    expires_at: float  # inf for our own record


@dataclass(slots=True)
class _Budget:
    """Signature checks a neighbour may still cause: a token bucket refilled with time."""

    tokens: float
    at: float


def _routes_differ(a: RouterRecord, b: RouterRecord) -> bool:
    return (a.links, a.keys, a.listens) != (b.links, b.keys, b.listens)


def _newer(record: RouterRecord, held: _Entry) -> bool:
    if record.seq != held.record.seq:
        return record.seq > held.record.seq
    return record != held.record and record.to_wire() > held.record.to_wire()


class RoutingCore:
    def __init__(
        self,
        *,
        site: str,
        signer: Signer,
        verify: VerifyFn,
        now: float,
        refresh_interval: float = 30.0,
        max_age: float = 100.0,
        max_routers: int = 5000,
        max_links_per_record: int = 1000,
        max_keys_per_record: int = 10_000,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_db_bytes: int = 64 * 1024 * 1024,
        max_new_records_per_s: float = 1000.0,
    ) -> None:
        if not 0 < refresh_interval < max_age:
            raise ValueError("need 0 < refresh_interval < max_age")
        if min(max_routers, max_links_per_record, max_keys_per_record) < 1:
            raise ValueError("limits must be >= 1")
        if max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be >= 1024")
        if max_db_bytes < max_message_bytes:
            raise ValueError("max_db_bytes must be >= max_message_bytes")
        if not max_new_records_per_s > 0:
            raise ValueError("max_new_records_per_s must be > 0")
        self._site = check_str("site", site, 255)
        self._signer = signer
        self._verify = verify
        self._router_id = router_id_for(signer.public_key)
        self._refresh_interval = refresh_interval
        self._max_age = max_age
        self._max_routers = max_routers
        self._max_links_per_record = max_links_per_record
        self._max_keys_per_record = max_keys_per_record
        self._max_message_bytes = max_message_bytes
        # Every router's record may be signed by a key made for the purpose (keys are free),
        # so max_routers alone bounds nothing: 5000 records of 6000 keys each would be 6 GB.
        self._max_db_bytes = max_db_bytes
        # Each record newer than ours costs a signature check (~60 us), and a peer can send
        # new versions of its fake routers' records forever while the database stays within
        # bounds: 1000 checks in a 64 KiB frame, a core busy at 1.5 MB/s, and every router it
        # floods to checks them too. So a neighbour gets max_new_records_per_s of them, in
        # bursts of up to a whole database (when a link comes up) and a second's worth.
        self._max_new_records_per_s = max_new_records_per_s
        self._max_burst = max_routers + max_new_records_per_s
        self._budgets: dict[str, _Budget] = {}

        self._now = now
        self._seq = 0
        self._links: dict[str, int] = {}
        self._keys: dict[str, KeyAdvert] = {}
        self._listens: tuple[str, ...] = ()
        self._last_originated = now
        self._db: dict[str, _Entry] = {}  # includes our own record
        self._db_bytes = 0  # sum of the entries' cost
        self._by_wire: dict[bytes, str] = {}  # held wire bytes -> origin: cheap duplicate check
        self._key_index: dict[str, dict[str, KeyAdvert]] = {}
        self._candidates: dict[str, list[Candidate]] = {}  # by key; cleared on any change
        self._expiry_heap: list[tuple[float, str, int]] = []  # (expires_at, origin, seq), lazy
        self._queues: dict[str, dict[str, _Entry]] = {}  # neighbour -> origin -> entry to send
        self._spf: ShortestPaths | None = None  # None: must recompute

        self.messages_sent = 0
        self.bytes_sent = 0
        self.records_sent = 0
        self.messages_received = 0
        self.spf_runs = 0
        # What the network looks like changed (a router, link, cost or key came or went;
        # not a refresh of the same record): how often, and when last (core time).
        self.changes = 0
        self.changed_at = now

        self._commit_own(self._build_own(self._links, self._keys), now)

    # ---- queries ---------------------------------------------------------------------------

    @property
    def router_id(self) -> str:
        return self._router_id

    @property
    def site(self) -> str:
        return self._site

    @property
    def seq(self) -> int:
        """The sequence number of our current record."""
        return self._seq

    @property
    def db_bytes(self) -> int:
        """What the database holds, as counted against max_db_bytes (see `stored_bytes`)."""
        return self._db_bytes

    def neighbours(self) -> dict[str, int]:
        return dict(self._links)

    def records(self) -> list[RouterRecord]:
        """The database (ours included), sorted by router id."""
        return [self._db[rid].record for rid in sorted(self._db)]

    def record(self, router_id: str) -> RouterRecord | None:
        entry = self._db.get(router_id)
        return None if entry is None else entry.record

    def next_hop(self, dest: str) -> str | None:
        """The neighbour to send to for `dest`; None if unreachable or `dest` is us."""
        return self._paths().next_hop.get(dest)

    def path(self, dest: str) -> list[str]:
        return self._paths().path(dest)

    def cost_to(self, dest: str) -> int | None:
        return self._paths().dist.get(dest)

    def reachable(self) -> dict[str, int]:
        """Every reachable router (us included) -> path cost."""
        return dict(self._paths().dist)

    def candidates(self, key: str) -> list[Candidate]:
        """Reachable routers advertising `key`, sorted by (cost, router id)."""
        cached = self._candidates.get(key)
        if cached is None:
            # Per request for HTTP: computed once per key until the database changes.
            cached = self._candidates[key] = self._compute_candidates(key)
        return list(cached)

    def _compute_candidates(self, key: str) -> list[Candidate]:
        paths = self._paths()
        found: list[Candidate] = []
        for rid, advert in self._key_index.get(key, {}).items():
            cost = paths.dist.get(rid)
            if cost is None:
                continue
            found.append(
                Candidate(
                    router_id=rid,
                    site=self._db[rid].record.site,
                    cost=cost,
                    priority=advert.priority,
                    weight=advert.weight,
                    next_hop=paths.next_hop.get(rid),
                )
            )
        found.sort(key=lambda c: (c.cost, c.router_id))
        return found

    # ---- local commands --------------------------------------------------------------------

    def neighbour_up(self, peer_id: str, cost: int, now: float) -> None:
        """A link to `peer_id` is up: send it our whole database and re-originate.

        Also used when a link is re-established (the peer may have restarted)."""
        now = self._advance(now)
        check_str("peer id", peer_id, MAX_ID_CHARS)
        check_int("cost", cost, 1, MAX_COST)
        if peer_id == self._router_id:
            raise RoutingError("a router cannot be its own neighbour")
        if peer_id not in self._links and len(self._links) >= self._max_links_per_record:
            raise LimitExceeded(f"max_links_per_record ({self._max_links_per_record}) reached")
        links = {**self._links, peer_id: cost}
        record = self._build_own(links, self._keys)
        self._links = links
        self._commit_own(record, now)
        queue = self._queues.setdefault(peer_id, {})
        for rid in sorted(self._db):
            queue[rid] = self._db[rid]
        # Kept across neighbour_down, so redialling does not refill it; pruned when large.
        if peer_id not in self._budgets and len(self._budgets) > self._max_links_per_record:
            self._budgets = {p: b for p, b in self._budgets.items() if p in self._links}
        self._budgets.setdefault(peer_id, _Budget(self._max_burst, now))

    def neighbour_down(self, peer_id: str, now: float) -> None:
        """The link to `peer_id` is gone; unknown peers are ignored (idempotent)."""
        now = self._advance(now)
        if peer_id not in self._links:
            return
        links = {p: c for p, c in self._links.items() if p != peer_id}
        record = self._build_own(links, self._keys)
        self._links = links
        self._queues.pop(peer_id, None)
        self._commit_own(record, now)

    def set_cost(self, peer_id: str, cost: int, now: float) -> None:
        now = self._advance(now)
        check_int("cost", cost, 1, MAX_COST)
        if peer_id not in self._links:
            raise RoutingError(f"{peer_id!r} is not a neighbour")
        if self._links[peer_id] == cost:
            return
        links = {**self._links, peer_id: cost}
        record = self._build_own(links, self._keys)
        self._links = links
        self._commit_own(record, now)

    def set_keys(self, keys: Mapping[str, KeyAdvert], now: float) -> None:
        """Advertise exactly `keys`; re-originates only if they changed."""
        now = self._advance(now)
        new_keys: dict[str, KeyAdvert] = {}
        for key, advert in keys.items():
            check_str("routing key", key, MAX_KEY_CHARS)
            if not isinstance(advert, KeyAdvert):
                raise RoutingError(f"key {key!r}: expected a KeyAdvert")
            new_keys[key] = advert
        if new_keys == self._keys:
            return
        if len(new_keys) > self._max_keys_per_record:
            raise LimitExceeded(f"max_keys_per_record ({self._max_keys_per_record}) exceeded")
        record = self._build_own(self._links, new_keys)
        self._keys = new_keys
        self._commit_own(record, now)

    def set_listens(self, keys: Iterable[str], now: float) -> None:
        """Tell the network which keys this router listens for (status only)."""
        now = self._advance(now)
        listens = tuple(sorted({check_str("listened key", k, MAX_KEY_CHARS) for k in keys}))
        if listens == self._listens:
            return
        if len(listens) > self._max_keys_per_record:
            raise LimitExceeded(f"max_keys_per_record ({self._max_keys_per_record}) exceeded")
        self._listens = listens
        self._commit_own(self._build_own(self._links, self._keys), now)

    # ---- messages and time -----------------------------------------------------------------

    def receive(self, from_peer: str, payload: bytes, now: float) -> None:
        """Process a routing message from neighbour `from_peer`.

        The whole message is validated before any of it is applied, so on RoutingError nothing
        changed but the sender's budget of signature checks (`max_new_records_per_s`).
        Signatures are verified for records that would change our state (newer than held);
        duplicates and older copies are never stored, so they need no verification.
        """
        now = self._advance(now)
        if from_peer not in self._links:
            raise RoutingError(f"message from {from_peer!r}, which is not a neighbour")
        if len(payload) > self._max_message_bytes:
            raise LimitExceeded(
                f"message of {len(payload)} bytes exceeds max_message_bytes "
                f"({self._max_message_bytes})"
            )
        items = decode_message(payload)
        if len(items) > self._max_routers:
            raise LimitExceeded(
                f"message holds more records than max_routers ({self._max_routers})"
            )
        budget = self._budgets[from_peer]
        budget.tokens = min(
            self._max_burst, budget.tokens + (now - budget.at) * self._max_new_records_per_s
        )
        budget.at = now
        accepted: list[tuple[float, RouterRecord, bytes]] = []
        new_origins: set[str] = set()
        growth: dict[str, int] = {}  # origin -> most it may add to _db_bytes
        for age, wire in items:
            if wire in self._by_wire:
                continue  # exactly a record we hold
            record = RouterRecord.from_wire(wire)
            self._check_record(record)
            held = self._db.get(record.router_id)
            if held is None or _newer(record, held):
                # Spent even if the message is then refused: the checks were done.
                if budget.tokens < 1:
                    raise LimitExceeded(
                        f"more new records than max_new_records_per_s "
                        f"({self._max_new_records_per_s:g}) allows"
                    )
                budget.tokens -= 1
                if not self._verify(record.public_key, record.signed_bytes(), record.signature):
                    raise ForgedRecord(f"bad signature on record of {record.router_id}")
                if held is None and age < self._max_age:
                    new_origins.add(record.router_id)
                if age < self._max_age and record.router_id != self._router_id:
                    grows = stored_bytes(record, wire) - (0 if held is None else held.cost)
                    growth[record.router_id] = max(grows, growth.get(record.router_id, grows))
            accepted.append((age, record, wire))
        if len(self._db) + len(new_origins) > self._max_routers:
            raise LimitExceeded(f"max_routers ({self._max_routers}) would be exceeded")
        grown = self._db_bytes + sum(max(0, g) for g in growth.values())
        if grown > self._max_db_bytes:
            raise LimitExceeded(
                f"database would hold {grown} bytes, over max_db_bytes ({self._max_db_bytes})"
            )
        self.messages_received += 1
        for age, record, wire in accepted:
            self._apply(from_peer, age, record, wire, now)

    def outgoing(self) -> list[tuple[str, bytes]]:
        """Drain queued records as (neighbour, payload), batched up to max_message_bytes."""
        out: list[tuple[str, bytes]] = []
        for peer, queue in self._queues.items():
            items = ((max(0.0, self._now - e.origin_time), e.wire) for e in queue.values())
            out += ((peer, m) for m in batched(items, self._max_message_bytes, encode_message))
            self.records_sent += len(queue)
        self._queues.clear()
        self.messages_sent += len(out)
        self.bytes_sent += sum(len(payload) for _, payload in out)
        return out

    def next_deadline(self) -> float:
        """When `handle_timer` must next run (refresh ours, or expire someone's record)."""
        deadline = self._last_originated + self._refresh_interval
        heap = self._expiry_heap
        while heap and not self._heap_item_live(heap[0]):
            heapq.heappop(heap)
        if heap:
            deadline = min(deadline, heap[0][0])
        return deadline

    def handle_timer(self, now: float) -> None:
        now = self._advance(now)
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            if self._heap_item_live(item):
                self._remove(item[1])
        if now >= self._last_originated + self._refresh_interval:
            self._commit_own(self._build_own(self._links, self._keys), now)

    # ---- internals -------------------------------------------------------------------------

    def _advance(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now

    def _paths(self) -> ShortestPaths:
        # Lazy: a flood of many records costs one computation, at the next query.
        if self._spf is None:
            self._spf = shortest_paths(
                self._router_id, {rid: entry.links for rid, entry in self._db.items()}
            )
            self.spf_runs += 1
        return self._spf

    def _check_record(self, record: RouterRecord) -> None:
        if len(record.links) > self._max_links_per_record:
            raise LimitExceeded(
                f"record of {record.router_id} has {len(record.links)} links, over "
                f"max_links_per_record ({self._max_links_per_record})"
            )
        if max(len(record.keys), len(record.listens)) > self._max_keys_per_record:
            raise LimitExceeded(
                f"record of {record.router_id} has {len(record.keys)} keys and "
                f"{len(record.listens)} listened keys, over "
                f"max_keys_per_record ({self._max_keys_per_record})"
            )
        if record.router_id != router_id_for(record.public_key):
            raise ForgedRecord(f"router id {record.router_id} does not match its public key")

    def _apply(
        self, from_peer: str, age: float, record: RouterRecord, wire: bytes, now: float
    ) -> None:
        rid = record.router_id
        held = self._db.get(rid)
        if rid == self._router_id:
            assert held is not None
            if _newer(record, held):
                # We restarted and the network remembers a later incarnation: jump past it.
                self._commit_own(self._build_own(self._links, self._keys, seq=record.seq + 1), now)
            elif record != held.record:
                self._enqueue(from_peer, held)
            return
        if held is not None and not _newer(record, held):
            if record != held.record:
                self._enqueue(from_peer, held)  # the sender is behind
            return
        if age >= self._max_age:
            return
        origin_time = now - age
        entry = _Entry(
            record=record,
            wire=wire,  # forwarded as received: the signature covers the decoded fields
            cost=stored_bytes(record, wire),
            links=dict(record.links),
            origin_time=origin_time,
            expires_at=origin_time + self._max_age,
        )
        self._store(entry)
        for peer in self._links:
            if peer != from_peer:
                self._enqueue(peer, entry)

    def _enqueue(self, peer: str, entry: _Entry) -> None:
        # Keyed by origin: a newer version queued later replaces the older one.
        self._queues.setdefault(peer, {})[entry.record.router_id] = entry

    def _build_own(
        self, links: Mapping[str, int], keys: Mapping[str, KeyAdvert], seq: int | None = None
    ) -> RouterRecord:
        """Our next record (seq: ours + 1 unless given), signed and size-checked."""
        unsigned = RouterRecord(
            router_id=self._router_id,
            site=self._site,
            seq=self._seq + 1 if seq is None else seq,
            links=tuple(sorted(links.items())),
            keys=tuple(sorted((k, a.priority, a.weight) for k, a in keys.items())),
            listens=self._listens,
            public_key=self._signer.public_key,
            signature=b"",
        )
        signed = RouterRecord(
            router_id=unsigned.router_id,
            site=unsigned.site,
            seq=unsigned.seq,
            links=unsigned.links,
            keys=unsigned.keys,
            listens=unsigned.listens,
            public_key=unsigned.public_key,
            signature=self._signer.sign(unsigned.signed_bytes()),
        )
        size = len(signed.to_wire()) + MESSAGE_HEADER_BYTES + MESSAGE_ITEM_OVERHEAD_BYTES
        if size + _OWN_RECORD_SLACK_BYTES > self._max_message_bytes:
            raise LimitExceeded(
                f"own record of {size} bytes would exceed max_message_bytes "
                f"({self._max_message_bytes})"
            )
        return signed

    def _commit_own(self, record: RouterRecord, now: float) -> None:
        self._seq = record.seq
        self._last_originated = now
        wire = record.to_wire()
        entry = _Entry(
            record=record,
            wire=wire,
            cost=stored_bytes(record, wire),
            links=dict(record.links),
            origin_time=now,
            expires_at=float("inf"),
        )
        self._store(entry)
        for peer in self._links:
            self._enqueue(peer, entry)

    def _store(self, entry: _Entry) -> None:
        rid = entry.record.router_id
        old = self._db.get(rid)
        if old is not None:
            del self._by_wire[old.wire]
            self._unindex_keys(old.record)
            self._db_bytes -= old.cost
        self._db[rid] = entry
        self._candidates.clear()
        self._db_bytes += entry.cost
        self._by_wire[entry.wire] = rid
        for key, priority, weight in entry.record.keys:
            self._key_index.setdefault(key, {})[rid] = KeyAdvert(priority=priority, weight=weight)
        if old is None or old.links != entry.links:
            self._spf = None
        if old is None or _routes_differ(old.record, entry.record):
            self._changed()
        if rid != self._router_id:
            heapq.heappush(self._expiry_heap, (entry.expires_at, rid, entry.record.seq))
            if len(self._expiry_heap) > 2 * len(self._db) + 64:
                self._rebuild_heap()

    def _remove(self, rid: str) -> None:
        entry = self._db.pop(rid)
        self._candidates.clear()
        self._db_bytes -= entry.cost
        del self._by_wire[entry.wire]
        self._unindex_keys(entry.record)
        self._spf = None
        self._changed()

    def _changed(self) -> None:
        self.changes += 1
        self.changed_at = self._now

    def _unindex_keys(self, record: RouterRecord) -> None:
        for key, _, _ in record.keys:
            holders = self._key_index[key]
            del holders[record.router_id]
            if not holders:
                del self._key_index[key]

    def _heap_item_live(self, item: tuple[float, str, int]) -> bool:
        entry = self._db.get(item[1])
        return entry is not None and entry.record.seq == item[2] and entry.expires_at == item[0]

    def _rebuild_heap(self) -> None:
        self._expiry_heap = [
            (e.expires_at, rid, e.record.seq)
            for rid, e in self._db.items()
            if rid != self._router_id
        ]
        heapq.heapify(self._expiry_heap)
