"""P1-floor: the least any paid request can cost under the rules of docs/protocol.md,
measured on this machine in the same run as P1 (docs/architecture.md, "Where a paid
request's time goes").

Before paid work runs, a seller must (1) recover the buyer's address from the guarantee's
signature, and (2) durably lock the buyer's collateral and record the guarantee and the
request, so that a replay is refused and a crash of the process loses nothing. This
benchmark does only that, with nothing of the gate or the Core around it: the EIP-712 digest
and a secp256k1 recovery of a G-v1 guarantee (coincurve, the fastest binding there is for
CPython), then one stdlib ``sqlite3`` transaction on a three-table schema with the store's
settings (WAL, ``synchronous=NORMAL``): ``BEGIN IMMEDIATE``, the capacity-checked lock, the
guarantee row (unique per tab and request id), the record row (unique per payment header),
``COMMIT``. The two random ids it makes per write (about 1 µs) are timed with it;
checkpoints run between samples, untimed.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile

from .common import Result, compare, sizes

__all__ = ["bench_floor"]

_SCHEMA = (
    "CREATE TABLE positions (address TEXT PRIMARY KEY, credit_limit INTEGER NOT NULL, "
    "locked INTEGER NOT NULL)",
    "CREATE TABLE guarantees (guarantee_id TEXT PRIMARY KEY, tab_id TEXT NOT NULL, "
    "req_id TEXT NOT NULL, payer TEXT NOT NULL, amount INTEGER NOT NULL, "
    "UNIQUE (tab_id, req_id))",
    "CREATE TABLE records (header_hash TEXT PRIMARY KEY, guarantee_id TEXT NOT NULL, "
    "status TEXT NOT NULL)",
)


class _LeastWrite:
    """The one durable write a paid request needs, on a schema holding nothing else."""

    def __init__(self, path: str, payer: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA wal_autocheckpoint = 0")
        for statement in _SCHEMA:
            self.db.execute(statement)
        self.db.execute("INSERT INTO positions VALUES (?, ?, 0)", (payer, 1 << 62))
        self.payer, self.tab, self.req = payer, "0x" + os.urandom(32).hex(), 0

    def __call__(self) -> None:
        self.req += 1
        guarantee_id = "0x" + os.urandom(32).hex()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        if not db.execute(
            "UPDATE positions SET locked = locked + 1 WHERE address = ? "
            "AND credit_limit - locked >= 1",
            (self.payer,),
        ).rowcount:
            raise AssertionError("the floor's payer ran out of capacity")
        db.execute(
            "INSERT INTO guarantees VALUES (?, ?, ?, ?, 1)",
            (guarantee_id, self.tab, hex(self.req), self.payer),
        )
        db.execute(
            "INSERT INTO records VALUES (?, ?, 'settled')", (os.urandom(32).hex(), guarantee_id)
        )
        db.execute("COMMIT")

    def checkpoint(self) -> None:
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def bench_floor(quick: bool) -> Result:
    """P1: µs of the least any paid request must do (recover the signer, one durable write)."""
    from ..guarantee import recover_signer
    from .signatures import _sample_claims

    claims, domain, signed = _sample_claims()
    assert recover_signer(signed, domain) == claims.user_address
    number, repeat = sizes(quick)
    with tempfile.TemporaryDirectory() as scratch:
        write = _LeastWrite(os.path.join(scratch, "floor.db"), claims.user_address)
        recover_us = write_us = float("inf")
        for _ in range(repeat):
            recover_us = min(
                recover_us, compare(lambda: recover_signer(signed, domain), None, number, 1)[0]
            )
            write_us = min(write_us, compare(write, None, number // 3, 1)[0])
            write.checkpoint()
        write.db.close()
    floor = recover_us + write_us
    return Result(
        id="P1-floor",
        title="the least a paid request must do: recover the signer, one durable SQLite write",
        unit="µs",
        ours=floor,
        baseline=None,
        baseline_name="— (its parts are in the notes)",
        target="P1's ≤ 200 µs",
        met=floor <= 200,
        notes={"recover_us": recover_us, "write_us": write_us},
    )
