"""Convergence of the pure routing core, in simulation (no sockets, no clock).

A seeded random connected topology (a random spanning tree plus extra random edges) of
RoutingCores in one `SimNetwork`. Measured with `time.process_time`:

- cold: every router starts, every link comes up and every router sets its key at the same
  instant; then gossip runs until quiescent and every router computes its routes once;
- one link cut (an edge off the spanning tree, so the graph stays connected) after convergence;
- one routing key added on one router after convergence.

"CPU" includes the simulator's own bookkeeping (it polls every core each round), so it is an
upper bound for the protocol's cost. Bytes and messages are the routing payloads the cores
emitted (`bytes_sent`, `messages_sent`, `records_sent`, summed over all routers).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router.routing import Ed25519Signer, KeyAdvert, ed25519_verify, null_verify
from router.routing.sim import SimNetwork


@dataclass
class Topology:
    n: int
    edges: list[tuple[int, int, int]]  # (a, b, cost), tree edges first
    tree_edges: int


def random_topology(n: int, seed: int, avg_degree: float = 3.5) -> Topology:
    """A random spanning tree plus random chords up to `avg_degree` (= 2 * edges / n)."""
    rng = random.Random(seed)
    edges: list[tuple[int, int, int]] = []
    seen: set[tuple[int, int]] = set()
    for i in range(1, n):
        j = rng.randrange(i)
        edges.append((i, j, rng.randint(1, 5)))
        seen.add((min(i, j), max(i, j)))
    target = max(n - 1, round(avg_degree * n / 2))
    target = min(target, n * (n - 1) // 2)
    while len(edges) < target:
        a, b = rng.sample(range(n), 2)
        pair = (min(a, b), max(a, b))
        if pair not in seen:
            seen.add(pair)
            edges.append((a, b, rng.randint(1, 5)))
    return Topology(n=n, edges=edges, tree_edges=n - 1)


@dataclass
class Counters:
    messages: int
    bytes: int
    records: int


def totals(net: SimNetwork) -> Counters:
    cores = list(net.cores.values())
    return Counters(messages=sum(c.messages_sent for c in cores),
                    bytes=sum(c.bytes_sent for c in cores),
                    records=sum(c.records_sent for c in cores))


def _cpu(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.process_time()
    value = fn()
    return time.process_time() - t0, value


def _compute_all_routes(net: SimNetwork) -> None:
    for core in net.live_cores():
        core.reachable()  # SPF is lazy: force one computation per router


def _delta(before: Counters, after: Counters) -> dict[str, int]:
    return {"messages": after.messages - before.messages, "bytes": after.bytes - before.bytes,
            "records": after.records - before.records}


def _check_converged(net: SimNetwork, ids: list[str], key: str | None = None) -> None:
    everyone = set(ids)
    for core in net.live_cores():
        if set(core.reachable()) != everyone:
            raise AssertionError(f"router {core.router_id} did not converge")
        if key is not None and not core.candidates(key):
            raise AssertionError(f"router {core.router_id} does not see key {key}")


def measure(n: int, seed: int, *, signing: str = "null",
            changes: bool = True) -> dict[str, Any]:
    """One network of `n` routers: cold convergence and (optionally) single changes."""
    topo = random_topology(n, seed)
    verify = ed25519_verify if signing == "ed25519" else null_verify
    net = SimNetwork(verify=verify)
    # Key generation is not part of convergence: done before any clock starts.
    signers = [Ed25519Signer.generate() if signing == "ed25519" else None for _ in range(n)]

    def build() -> list[str]:
        ids = [net.add_router(f"s{seed}-r{i}", signer=signers[i]) for i in range(n)]
        for a, b, cost in topo.edges:
            net.connect(ids[a], ids[b], cost)
        for i, rid in enumerate(ids):
            net.cores[rid].set_keys({f"svc-{i}": KeyAdvert()}, net.now)
        return ids

    cpu_build, ids = _cpu(build)
    cpu_flood, rounds = _cpu(net.run)
    cpu_spf, _ = _cpu(lambda: _compute_all_routes(net))
    cold = totals(net)
    _check_converged(net, ids, "svc-0")
    out: dict[str, Any] = {
        "routers": n, "edges": len(topo.edges), "avg_degree": 2 * len(topo.edges) / n,
        "seed": seed, "signing": signing,
        "cold": {"cpu_s": cpu_build + cpu_flood + cpu_spf, "cpu_build_s": cpu_build,
                 "cpu_flood_s": cpu_flood, "cpu_spf_s": cpu_spf, "rounds": rounds,
                 "messages": cold.messages, "bytes": cold.bytes, "records": cold.records},
    }
    if not changes:
        return out

    # One link cut: a chord (not a tree edge), so everyone stays reachable.
    rng = random.Random(seed + 1)
    a, b, _ = topo.edges[rng.randrange(topo.tree_edges, len(topo.edges))]

    def cut() -> int:
        net.disconnect(ids[a], ids[b])
        return net.run()

    before = totals(net)
    cpu_flood, rounds_cut = _cpu(cut)
    cpu_spf, _ = _cpu(lambda: _compute_all_routes(net))
    out["link_cut"] = {"cpu_s": cpu_flood + cpu_spf, "cpu_flood_s": cpu_flood,
                       "cpu_spf_s": cpu_spf, "rounds": rounds_cut,
                       **_delta(before, totals(net))}
    _check_converged(net, ids)

    # One key added on one router: flooded, then every router looks it up once.
    who = ids[rng.randrange(n)]

    def add_key() -> int:
        core = net.cores[who]
        core.set_keys({**{k: KeyAdvert() for k in _keys_of(core)}, "new-key": KeyAdvert()},
                      net.now)
        return net.run()

    def lookup() -> None:
        for c in net.live_cores():
            c.candidates("new-key")

    before = totals(net)
    cpu_flood, rounds_key = _cpu(add_key)
    cpu_spf, _ = _cpu(lookup)
    out["key_added"] = {"cpu_s": cpu_flood + cpu_spf, "cpu_flood_s": cpu_flood,
                        "cpu_spf_s": cpu_spf, "rounds": rounds_key,
                        **_delta(before, totals(net))}
    _check_converged(net, ids, "new-key")
    return out


def _keys_of(core: Any) -> list[str]:
    record = core.record(core.router_id)
    return [k for k, _, _ in record.keys] if record is not None else []


def fmt_bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_cpu(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.001:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def table(runs: list[dict[str, Any]]) -> str:
    head = ["routers", "edges", "signing", "what", "CPU total", "gossip", "routes",
            "CPU/router", "rounds", "messages", "records", "bytes", "bytes/router"]
    rows = [head]
    for r in runs:
        for what in ("cold", "link_cut", "key_added"):
            m = r.get(what)
            if m is None:
                continue
            rows.append([str(r["routers"]), str(r["edges"]), r["signing"], what.replace("_", " "),
                         fmt_cpu(m["cpu_s"]), fmt_cpu(m["cpu_s"] - m["cpu_spf_s"]),
                         fmt_cpu(m["cpu_spf_s"]), fmt_cpu(m["cpu_s"] / r["routers"]),
                         str(m["rounds"]), str(m["messages"]), str(m["records"]),
                         fmt_bytes(m["bytes"]), fmt_bytes(m["bytes"] / r["routers"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i in (2, 3) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
