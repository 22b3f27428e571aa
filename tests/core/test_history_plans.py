"""What a long history costs: the statements a running seller repeats (each paid request,
each tick of the cycle loop) find their rows through an index, never by reading every
guarantee, record or event ever written (SQLite's plans, read with EXPLAIN QUERY PLAN)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, FakeClock, TestBuyer, test_policy

SELLER = TestBuyer.new().address
#: Tables whose rows grow with every paid request.
HISTORY = ("fx_guarantees", "fx_records", "fx_events", "fx_flows", "fx_stream_slices")


@contextmanager
def statements(conn: sqlite3.Connection) -> Iterator[list[str]]:
    """Every statement ``conn`` runs meanwhile, with its parameters written in."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


def scans(conn: sqlite3.Connection, sql: list[str]) -> list[tuple[str, str]]:
    """The (statement, plan step) pairs that read a history table from end to end."""
    found = []
    for s in sql:
        if s.split()[0].upper() not in ("SELECT", "UPDATE", "DELETE", "WITH", "INSERT"):
            continue
        for row in conn.execute("EXPLAIN QUERY PLAN " + s).fetchall():
            step = str(row[-1])
            if step.startswith("SCAN") and any(f" {t}" in f" {step[5:]}" for t in HISTORY):
                found.append((s[:120], step))
    return found


def history(tmp_path: Path, clock: FakeClock, n: int = 30) -> tuple[Core, TestBuyer]:
    core = Core(str(tmp_path / "core.db"), clock=clock)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**12, network=NETWORK)
    for i in range(n):  # payable ones, and some awaiting a validator's score
        policy = test_policy() if i % 3 == 0 else None
        core.accept(*buyer.pay(core, SELLER, 1_000, policy=policy))
    return core, buyer


def run(core: Core, step: Callable[[], Any]) -> list[tuple[str, str]]:
    conn = core.store._connection()  # type: ignore[attr-defined]
    with statements(conn) as seen:
        step()
    return scans(conn, seen)


def test_expiring_validations_reads_only_the_pending_ones(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000)
    core, _ = history(tmp_path, clock)
    try:
        # Every tick of the cycle loop (and a gate's follow-ups) run this in a write
        # transaction: read in guarantee-id order off the unique index, it went through
        # every guarantee ever accepted while paid requests waited for the lock.
        assert run(core, core.expire_validations) == []
        clock.advance(10 * 86_400)
        assert run(core, core.tick) == []
    finally:
        core.close()
