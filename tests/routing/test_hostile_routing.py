"""A linked peer that floods the routing database with records of routers it made up (keys are
free, so each fake router signs its own record) cannot grow it past max_db_bytes: the
message that would is refused whole, with a reason naming the limit, and nothing changed."""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc

import pytest

from router.protocol import LinkLimits
from router.routing import (
    Ed25519Signer,
    KeyAdvert,
    LimitExceeded,
    RouterRecord,
    RoutingCore,
    ed25519_verify,
    encode_message,
    router_id_for,
)
from router.routing.core import DB_ITEM_BYTES, stored_bytes

PEER = "rpeer000000000000"
CONTROL_FRAME_BYTES = LinkLimits().max_control_bytes  # what one ROUTING frame may carry


def fake_router(seq: int = 1, n_keys: int = 0, signer: Ed25519Signer | None = None,
                ) -> tuple[Ed25519Signer, bytes]:
    """A record as a hostile peer would make: a fresh key, as many keys as a frame holds."""
    signer = signer or Ed25519Signer.generate()
    unsigned = RouterRecord(
        router_id=router_id_for(signer.public_key), site="fake", seq=seq,
        links=((PEER, 1),), keys=tuple((f"k{i:05d}", 0, 1) for i in range(n_keys)),
        public_key=signer.public_key, signature=b"")
    record = dataclasses.replace(unsigned, signature=signer.sign(unsigned.signed_bytes()))
    return signer, encode_message([(0.0, record.to_wire())])


def core(max_db_bytes: int) -> RoutingCore:
    c = RoutingCore(site="west", signer=Ed25519Signer.generate(), verify=ed25519_verify,
                    now=0.0, max_message_bytes=CONTROL_FRAME_BYTES, max_db_bytes=max_db_bytes)
    c.neighbour_up(PEER, 1, 0.0)
    c.outgoing()
    return c


# Keys of 6 characters: about 10 wire bytes each, so a 64 KiB frame holds about 6000 of them.
KEYS_PER_FRAME = 6000


def test_one_frame_of_keys_fits_and_costs_far_more_than_its_bytes() -> None:
    _, payload = fake_router(n_keys=KEYS_PER_FRAME)
    assert len(payload) <= CONTROL_FRAME_BYTES
    record = RouterRecord.from_wire(payload[payload.index(b"\x98"):])  # the record's array
    assert stored_bytes(record, payload) > 20 * len(payload)


def test_flood_of_fake_routers_stops_at_max_db_bytes() -> None:
    budget = 8 * 1024 * 1024
    c = core(budget)
    floods = [fake_router(n_keys=KEYS_PER_FRAME)[1] for _ in range(12)]
    gc.collect()
    tracemalloc.start()
    refused = []
    for payload in floods:
        try:
            c.receive(PEER, payload, 1.0)
        except LimitExceeded as exc:
            refused.append(str(exc))
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert refused, "every record was stored"
    assert "over max_db_bytes (8388608)" in refused[0]
    assert c.db_bytes <= budget
    # The accounting is not optimistic: what is really held stays within the budget.
    assert held <= budget, f"{held} bytes held for a budget of {budget}"
    # Unchanged by the refusals: only what fitted is there.
    assert len(c.records()) == 1 + len(floods) - len(refused)


def test_a_refused_message_changes_nothing_and_small_records_still_fit() -> None:
    c = core(2 * 1024 * 1024)
    with pytest.raises(LimitExceeded, match="max_db_bytes"):
        for _ in range(10):
            c.receive(PEER, fake_router(n_keys=KEYS_PER_FRAME)[1], 1.0)
    before = (c.records(), c.db_bytes)
    with pytest.raises(LimitExceeded, match="max_db_bytes"):
        c.receive(PEER, fake_router(n_keys=KEYS_PER_FRAME)[1], 2.0)
    assert (c.records(), c.db_bytes) == before
    c.receive(PEER, fake_router(n_keys=1)[1], 2.0)  # a small router still joins
    assert len(c.records()) == len(before[0]) + 1


def test_replacing_a_record_counts_only_the_difference_and_expiry_frees_it() -> None:
    c = core(2 * 1024 * 1024)
    own = c.db_bytes
    signer, payload = fake_router(n_keys=KEYS_PER_FRAME)
    c.receive(PEER, payload, 1.0)
    for seq in range(2, 30):  # far more than the budget in total, never more at once
        c.receive(PEER, fake_router(seq=seq, n_keys=KEYS_PER_FRAME, signer=signer)[1], 1.0)
    assert own < c.db_bytes <= 2 * 1024 * 1024
    c.handle_timer(1000.0)  # the fake router is never refreshed: it ages out
    assert len(c.records()) == 1
    assert c.db_bytes <= own + 1024  # our own record, re-originated with a longer seq


def test_own_record_is_counted() -> None:
    c = core(1024 * 1024)
    before = c.db_bytes
    c.set_keys({f"k{i}": KeyAdvert() for i in range(100)}, 1.0)
    assert c.db_bytes - before >= 100 * DB_ITEM_BYTES


def test_max_db_bytes_must_hold_a_message() -> None:
    with pytest.raises(ValueError, match="max_db_bytes"):
        RoutingCore(site="w", signer=Ed25519Signer.generate(), verify=ed25519_verify, now=0.0,
                    max_message_bytes=64 * 1024, max_db_bytes=1024)


def test_signature_checks_per_neighbour_are_rate_limited() -> None:
    """New versions of records that fit the database still each cost a signature check."""
    checks = 0

    def counting_verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
        nonlocal checks
        checks += 1
        return ed25519_verify(public_key, data, signature)

    c = RoutingCore(site="west", signer=Ed25519Signer.generate(), verify=counting_verify,
                    now=0.0, max_routers=110, max_new_records_per_s=10.0)
    c.neighbour_up(PEER, 1, 0.0)
    signers = [Ed25519Signer.generate() for _ in range(100)]

    def burst(seq: int) -> bytes:
        items = []
        for signer in signers:
            unsigned = RouterRecord(
                router_id=router_id_for(signer.public_key), site="fake", seq=seq, links=(),
                keys=(), public_key=signer.public_key, signature=b"")
            record = dataclasses.replace(unsigned, signature=signer.sign(unsigned.signed_bytes()))
            items.append((0.0, record.to_wire()))
        return encode_message(items)

    c.receive(PEER, burst(1), 0.0)  # a whole database at once: the burst (120) allows it
    assert len(c.records()) == 101 and checks == 100
    refused = 0
    for seq in range(2, 50):  # the same routers, new versions, as fast as the link goes
        try:
            c.receive(PEER, burst(seq), 1.0)
        except LimitExceeded as exc:
            assert "max_new_records_per_s (10) allows" in str(exc)
            refused += 1
    assert refused == 48 and checks == 130  # 20 left and 10 for the second: no more
    assert c.record(router_id_for(signers[0].public_key)).seq == 1  # nothing changed
    c.receive(PEER, burst(50), 11.0)  # ten seconds later, 100 checks are allowed again
    assert checks == 230
    assert c.record(router_id_for(signers[0].public_key)).seq == 50
    # Redialling does not refill it.
    c.neighbour_down(PEER, 11.0)
    c.neighbour_up(PEER, 1, 11.0)
    with pytest.raises(LimitExceeded, match="max_new_records_per_s"):
        c.receive(PEER, burst(51), 11.0)


def test_what_a_large_database_sends_a_new_neighbour_fits_routing_frames() -> None:
    """A database past one frame (here a peer's 30 fake routers) is sent in frames a link
    can carry; batches of up to 4 MiB made every new link fail as it came up."""
    c = RoutingCore(site="west", signer=Ed25519Signer.generate(), verify=ed25519_verify,
                    now=0.0)
    c.neighbour_up(PEER, 1, 0.0)
    for _ in range(30):
        c.receive(PEER, fake_router(n_keys=KEYS_PER_FRAME)[1], 1.0)
    c.outgoing()
    c.neighbour_up("rnew0000000000000", 1, 2.0)
    sent = c.outgoing()
    assert sum(len(p) for _, p in sent) > 20 * CONTROL_FRAME_BYTES
    assert max(len(p) for _, p in sent) <= CONTROL_FRAME_BYTES
