"""The embedded Core on SQLite: acceptances per second (P2) and one cycle's close (P3)."""

from __future__ import annotations

import time
from typing import Any

from ..guarantee import recover_signer
from .common import Result

__all__ = ["bench_accept", "bench_close"]


def bench_accept(quick: bool) -> Result:
    """P2: Core acceptances per second (signature check included) vs pure recovery per second."""
    import tempfile

    from ..core import Core
    from ..testing import NETWORK, TestBuyer

    count = 2_000 if quick else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        core = Core(f"{tmp}/bench.db")
        buyers = [TestBuyer.new() for _ in range(20)]
        sellers = [TestBuyer.new().address for _ in range(5)]
        for b in buyers:
            core.deposit(b.address, 10**12, network=NETWORK)
        items = [buyers[i % 20].pay(core, sellers[i % 5], 1 + i % 1000) for i in range(count)]
        domain = core.domain(84532)
        start = time.perf_counter()
        for signed, _ in items:
            recover_signer(signed, domain)
        floor_s = time.perf_counter() - start
        start = time.perf_counter()
        for signed, expected in items:
            core.accept(signed, expected)
        accept_s = time.perf_counter() - start
        assert core.audit() == []
        core.close()
    ours, floor = count / accept_s, count / floor_s
    return Result(
        id="P2",
        title="Core acceptances/s (SQLite, one process) vs pure secp256k1 recovery/s",
        unit="/s",
        ours=ours,
        baseline=floor,
        baseline_name="recover_signer alone (the floor)",
        target="≥ 60 % of the floor",
        met=ours >= 0.6 * floor,
        notes={"guarantees": count},
    )


def bench_close(quick: bool) -> Result:
    """P3: close + net one cycle of N guarantees among M participants (SQLite)."""
    import random
    import tempfile

    from ..core import Core
    from ..testing import NETWORK

    n, m = (100_000, 1_000) if quick else (1_000_000, 10_000)
    rng = random.Random(7)
    people = ["0x" + rng.randbytes(20).hex() for _ in range(m)]
    with tempfile.TemporaryDirectory() as tmp:
        core = Core(f"{tmp}/bench.db")
        asset = core._asset(NETWORK, None)
        _synthetic_guarantees(core, NETWORK, asset, people, n, rng)
        start = time.perf_counter()
        cycle = core.close_cycle(network=NETWORK)
        close_s = time.perf_counter() - start
        assert cycle.guarantee_count == n
        core.close()
    return Result(
        id="P3",
        title=f"close + net one cycle: {n:,} guarantees among {m:,} participants",
        unit="s",
        ours=close_s,
        baseline=None,
        baseline_name="—",
        target="≤ 5 s",
        met=close_s <= 5 if not quick else None,
        notes={"guarantees": n, "participants": m},
    )


def _synthetic_guarantees(
    core: Any, network: str, asset: str, people: list[str], n: int, rng: Any
) -> None:
    """Bulk-load payable guarantees as acceptance would leave them: locked, in the open cycle,
    counted in its pairwise matrix. No signatures: P3 measures the close, not acceptance."""
    m = len(people)
    cycle_id = core.current_cycle(network=network, asset=asset).cycle_id
    rows = []
    locked: dict[str, int] = {}
    pairs: dict[tuple[str, str], list[int]] = {}
    for i in range(n):
        payer, payee = people[rng.randrange(m)], people[rng.randrange(m)]
        amount = 1 + rng.randrange(10_000)
        locked[payer] = locked.get(payer, 0) + amount
        pair = pairs.setdefault((payer, payee), [0, 0])
        pair[0] += amount
        pair[1] += 1
        rows.append(
            (
                hex(i + 1),
                "0x0",
                f"0x{i:064x}",
                network,
                asset,
                payer,
                payee,
                amount,
                amount,
                0,
                1,
                "payable",
                0.0,
                cycle_id,
                "{}",
                "0x",
                "eip712",
            )
        )
    with core.store.transaction() as tx:
        tx.many(
            "INSERT INTO fx_positions (network, asset, address, collateral, credit_limit, locked) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            ((network, asset, p, 10**15, 10**15, locked.get(p, 0)) for p in people),
        )
        tx.many(
            "INSERT INTO fx_guarantees (tab_id, req_id, guarantee_id, network, asset, user_address, "
            "recipient_address, amount, total_amount, ts, version, state, accepted_at, cycle_id, "
            "claims, signature, scheme) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        tx.many(
            "INSERT INTO fx_cycle_pairs (cycle_id, payer, payee, amount, guarantee_count) "
            "VALUES (?, ?, ?, ?, ?)",
            ((cycle_id, p, q, a, c) for (p, q), (a, c) in pairs.items()),
        )
