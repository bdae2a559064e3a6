"""Wire encoding, authenticity and limits: every refusal is a RoutingError, state unchanged."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest

from router.routing import (
    Ed25519Signer,
    ForgedRecord,
    KeyAdvert,
    LimitExceeded,
    MalformedMessage,
    NullSigner,
    RouterRecord,
    RoutingCore,
    RoutingError,
    decode_message,
    ed25519_verify,
    encode_message,
    null_verify,
    router_id_for,
)
from router.routing.sim import SimNetwork


def make_core(seed: str, **kwargs: Any) -> RoutingCore:
    return RoutingCore(
        site=f"site-{seed}", signer=NullSigner.from_seed(seed), verify=null_verify, now=0.0,
        **kwargs,
    )


def snapshot(core: RoutingCore) -> tuple[object, ...]:
    return (
        core.records(), core.neighbours(), core.reachable(), core.candidates("k"), core.seq,
        core.messages_received, core.next_deadline(),
    )


def signed_record(signer: NullSigner | Ed25519Signer, **fields: Any) -> RouterRecord:
    base: dict[str, Any] = {
        "router_id": router_id_for(signer.public_key), "site": "x", "seq": 5, "links": (),
        "keys": (), "public_key": signer.public_key, "signature": b"",
    }
    base.update(fields)
    unsigned = RouterRecord(**base)
    return dataclasses.replace(unsigned, signature=signer.sign(unsigned.signed_bytes()))


def test_record_round_trip() -> None:
    record = signed_record(
        NullSigner.from_seed("a"), links=(("rb", 3), ("rc", 1)), keys=(("db", 1, 2), ("web", 0, 1))
    )
    assert RouterRecord.from_wire(record.to_wire()) == record
    payload = encode_message([(1.5, record.to_wire())])
    assert decode_message(payload) == [(1.5, record.to_wire())]


def test_router_id_is_derived_from_public_key() -> None:
    core = make_core("a")
    assert core.router_id == router_id_for(NullSigner.from_seed("a").public_key)
    assert core.router_id.startswith("r") and len(core.router_id) == 17


GOOD = ["ra", "x", 5, [], [], b"pk", b""]


def wire(fields: list[Any]) -> bytes:
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        wire(GOOD)[:-1],
        wire(GOOD) + b"\x00",
        wire({"router_id": "ra"}),  # type: ignore[arg-type]
        wire(GOOD[:6]),
        wire([*GOOD, 1]),
        wire(["ra", "x", "5", [], [], b"pk", b""]),
        wire(["ra", "x", True, [], [], b"pk", b""]),
        wire(["ra", "x", -1, [], [], b"pk", b""]),
        wire(["ra", "x", 2**64 - 1, [], [], b"pk", b""]),
        wire(["ra", "", 5, [], [], b"pk", b""]),
        wire(["ra", "x", 5, [["rb", 0]], [], b"pk", b""]),
        wire(["ra", "x", 5, [["rb", 1.0]], [], b"pk", b""]),
        wire(["ra", "x", 5, [["rc", 1], ["rb", 1]], [], b"pk", b""]),
        wire(["ra", "x", 5, [["rb", 1], ["rb", 2]], [], b"pk", b""]),
        wire(["ra", "x", 5, [["ra", 1]], [], b"pk", b""]),
        wire(["ra", "x", 5, [["rb"]], [], b"pk", b""]),
        wire(["ra", "x", 5, [], [["k", -1, 1]], b"pk", b""]),
        wire(["ra", "x", 5, [], [["k", 0, 1], ["j", 0, 1]], b"pk", b""]),
        wire(["ra", "x", 5, [], [["k", 0]], b"pk", b""]),
        wire(["ra", "x", 5, [], [], "pk", b""]),
        wire(["ra", "x", 5, [], [], b"pk", None]),
        wire(["ra", "x", 5, {}, [], b"pk", b""]),
    ],
)
def test_malformed_records_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        RouterRecord.from_wire(data)
    core = make_core("victim")
    peer = make_core("peer")
    core.neighbour_up(peer.router_id, 1, 0.0)
    before = snapshot(core)
    with pytest.raises(MalformedMessage):
        core.receive(peer.router_id, encode_message([(0.0, data)]), 1.0)
    assert snapshot(core) == before


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"garbage",
        wire([2, []]),
        wire([True, []]),
        wire([1]),
        wire([1, {}]),
        wire([1, [[0.0]]]),
        wire([1, [[-1.0, b"x"]]]),
        wire([1, [[float("nan"), b"x"]]]),
        wire([1, [["0", b"x"]]]),
        wire([1, [[0.0, "x"]]]),
        msgpack.packb(msgpack.ExtType(1, b"x")),
    ],
)
def test_malformed_messages_are_refused(payload: bytes) -> None:
    core = make_core("victim")
    peer = make_core("peer")
    core.neighbour_up(peer.router_id, 1, 0.0)
    before = snapshot(core)
    with pytest.raises(MalformedMessage):
        core.receive(peer.router_id, payload, 1.0)
    assert snapshot(core) == before


def linked_pair(**kwargs: Any) -> tuple[RoutingCore, RoutingCore]:
    a = make_core("a", **kwargs)
    b = make_core("b", **kwargs)
    a.neighbour_up(b.router_id, 1, 0.0)
    b.neighbour_up(a.router_id, 1, 0.0)
    return a, b


def test_message_from_a_stranger_is_refused() -> None:
    a, _b = linked_pair()
    stranger = make_core("s")
    stranger.neighbour_up(a.router_id, 1, 0.0)
    [(_, payload)] = stranger.outgoing()
    before = snapshot(a)
    with pytest.raises(RoutingError, match="not a neighbour"):
        a.receive(stranger.router_id, payload, 0.0)
    assert snapshot(a) == before


def test_forged_records_are_refused_with_ed25519() -> None:
    net = SimNetwork(verify=ed25519_verify)
    signers = {name: Ed25519Signer.generate() for name in ("victim", "origin", "mallory")}
    victim, origin, mallory = (net.add_router(n, signer=signers[n]) for n in signers)
    net.cores[origin].set_keys({"payroll": KeyAdvert()}, 0.0)
    net.connect(victim, origin)
    net.connect(victim, mallory)
    net.run()
    core = net.cores[victim]
    genuine = core.record(origin)
    assert genuine is not None and [c.router_id for c in core.candidates("payroll")] == [origin]
    before = snapshot(core)

    # Mallory rewrites the origin's record (advertise her own key, higher seq): bad signature.
    rewritten = dataclasses.replace(genuine, seq=genuine.seq + 10, keys=(("payroll", 0, 9),))
    with pytest.raises(ForgedRecord, match="signature"):
        core.receive(mallory, encode_message([(0.0, rewritten.to_wire())]), 1.0)
    # She signs a record claiming the origin's id with her own key: id does not match key.
    impostor = signed_record(
        signers["mallory"], router_id=origin, seq=genuine.seq + 10, keys=(("payroll", 0, 1),)
    )
    assert ed25519_verify(impostor.public_key, impostor.signed_bytes(), impostor.signature)
    with pytest.raises(ForgedRecord, match="public key"):
        core.receive(mallory, encode_message([(0.0, impostor.to_wire())]), 1.0)
    # A forged record poisons its whole message, even alongside a genuine newer one.
    own = signed_record(signers["mallory"], seq=99, links=((victim, 1),), keys=(("x", 0, 1),))
    with pytest.raises(ForgedRecord):
        core.receive(
            mallory, encode_message([(0.0, own.to_wire()), (0.0, rewritten.to_wire())]), 1.0
        )
    assert snapshot(core) == before
    # Her own genuinely signed record is fine.
    core.receive(mallory, encode_message([(0.0, own.to_wire())]), 1.0)
    assert [c.router_id for c in core.candidates("x")] == [mallory]


def test_message_size_limit() -> None:
    a, b = linked_pair(max_message_bytes=2048)
    b.outgoing()
    before = snapshot(b)
    with pytest.raises(LimitExceeded, match="max_message_bytes"):
        b.receive(a.router_id, b"\x00" * 2049, 1.0)
    assert snapshot(b) == before
    # Our own record must fit in a message too.
    a_before = snapshot(a)
    with pytest.raises(LimitExceeded, match="max_message_bytes"):
        a.set_keys({f"key-{i:04}": KeyAdvert() for i in range(200)}, 1.0)
    assert snapshot(a) == a_before


def test_outgoing_splits_batches_at_max_message_bytes() -> None:
    net = SimNetwork(max_message_bytes=1024)
    ids = [net.add_router(f"n{i}") for i in range(30)]
    for i in range(1, 30):
        net.connect(ids[i - 1], ids[i])
    net.run()
    late = net.add_router("late")
    net.connect(late, ids[0])
    sync = [payload for dest, payload in net.cores[ids[0]].outgoing() if dest == late]
    assert len(sync) > 1 and all(len(p) <= 1024 for p in sync)
    for payload in sync:
        net.cores[late].receive(ids[0], payload, net.now)
    assert len(net.cores[late].records()) == 31


def test_links_and_keys_per_record_limits() -> None:
    a, b = linked_pair(max_links_per_record=2, max_keys_per_record=3)
    b.outgoing()
    before = snapshot(b)
    many_links = signed_record(
        NullSigner.from_seed("a"), seq=50, links=(("r1", 1), ("r2", 1), ("r3", 1))
    )
    with pytest.raises(LimitExceeded, match="max_links_per_record"):
        b.receive(a.router_id, encode_message([(0.0, many_links.to_wire())]), 1.0)
    many_keys = signed_record(
        NullSigner.from_seed("a"), seq=50, keys=tuple((f"k{i}", 0, 1) for i in range(4))
    )
    with pytest.raises(LimitExceeded, match="max_keys_per_record"):
        b.receive(a.router_id, encode_message([(0.0, many_keys.to_wire())]), 1.0)
    assert snapshot(b) == before
    # The same limits apply to our own record.
    with pytest.raises(LimitExceeded, match="max_keys_per_record"):
        b.set_keys({f"k{i}": KeyAdvert() for i in range(4)}, 1.0)
    b.neighbour_up("r-second", 1, 1.0)
    with pytest.raises(LimitExceeded, match="max_links_per_record"):
        b.neighbour_up("r-third", 1, 1.0)
    assert set(b.neighbours()) == {a.router_id, "r-second"}


def test_router_count_limit() -> None:
    a, b = linked_pair(max_routers=2)
    b.outgoing()
    records = [signed_record(NullSigner.from_seed(f"o{i}"), seq=1) for i in range(2)]
    before = snapshot(b)
    payload = encode_message([(0.0, r.to_wire()) for r in records])
    with pytest.raises(LimitExceeded, match="max_routers"):
        b.receive(a.router_id, payload, 1.0)
    assert snapshot(b) == before
    b.receive(a.router_id, encode_message([(0.0, records[0].to_wire())]), 1.0)
    assert len(b.records()) == 2  # a's record has not been delivered: b and o0


def test_bad_local_commands() -> None:
    a, _b = linked_pair()
    with pytest.raises(RoutingError):
        a.neighbour_up(a.router_id, 1, 0.0)
    with pytest.raises(RoutingError):
        a.neighbour_up("rz", 0, 0.0)
    with pytest.raises(RoutingError):
        a.set_cost("rz", 2, 0.0)
    with pytest.raises(RoutingError):
        a.set_keys({"": KeyAdvert()}, 0.0)
    with pytest.raises(RoutingError):
        KeyAdvert(weight=-1)
    a.neighbour_down("rz", 0.0)  # unknown: ignored


def test_duplicates_and_old_records() -> None:
    a, b = linked_pair()
    first = a.outgoing()
    for _, payload in first:
        b.receive(a.router_id, payload, 0.0)
    b.outgoing()
    # The same record again changes nothing and is not forwarded.
    for _, payload in first:
        b.receive(a.router_id, payload, 0.0)
    assert b.outgoing() == []
    # An older record of b itself (b had seq 2, this is seq 1) makes b send its newer one back.
    old_b = make_core("b").record(b.router_id)
    assert old_b is not None and old_b.seq < b.seq
    b.receive(a.router_id, encode_message([(0.0, old_b.to_wire())]), 0.0)
    sent = b.outgoing()
    assert [dest for dest, _ in sent] == [a.router_id]


def test_timer_refreshes_own_record() -> None:
    core = make_core("a", refresh_interval=10.0, max_age=35.0)
    assert core.next_deadline() == 10.0
    core.handle_timer(5.0)
    assert core.seq == 1
    core.handle_timer(10.0)
    assert core.seq == 2 and core.next_deadline() == 20.0
