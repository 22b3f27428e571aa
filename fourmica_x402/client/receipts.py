"""Receipts: an append-only ledger of every payment decision a buyer made.

One row per paid (or refused) request, written once and never changed.
SQLite by default (``ReceiptLedger("receipts.db")``; ``":memory:"`` keeps it in
the process); exportable as JSON lines for audit.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

__all__ = ["Receipt", "ReceiptLedger"]


@dataclass(frozen=True)
class Receipt:
    """What happened to one paid request."""

    outcome: str  # paid | needs_approval | insufficient_collateral | blocked_seller | budget_exhausted | payment_failed
    url: str
    seller: str | None = None
    amount: int | None = None
    asset: str | None = None
    network: str | None = None
    request_id: str | None = None
    tab_id: str | None = None
    guarantee_id: str | None = None
    status: int | None = None
    reason: str | None = None
    task: str | None = None
    x402_version: int | None = None
    started_at: float = 0.0
    finished_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = [f.name for f in fields(Receipt)]


class ReceiptLedger:
    """Append-only SQLite ledger of receipts. Thread-safe."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute(
                "PRAGMA journal_mode = WAL"
                if self.path != ":memory:"
                else "PRAGMA foreign_keys = ON"
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS receipts (receipt_id INTEGER PRIMARY KEY AUTOINCREMENT, "
                + ", ".join(f"{c} {'REAL' if c.endswith('_at') else 'TEXT'}" for c in _COLUMNS)
                + ")"
            )
            # Append-only: the database itself refuses edits and deletions.
            self._conn.execute(
                "CREATE TRIGGER IF NOT EXISTS receipts_no_update BEFORE UPDATE ON receipts "
                "BEGIN SELECT RAISE(ABORT, 'receipts are append-only'); END"
            )
            self._conn.execute(
                "CREATE TRIGGER IF NOT EXISTS receipts_no_delete BEFORE DELETE ON receipts "
                "BEGIN SELECT RAISE(ABORT, 'receipts are append-only'); END"
            )

    def append(self, receipt: Receipt) -> None:
        values = [getattr(receipt, c) for c in _COLUMNS]
        with self._lock:
            self._conn.execute(
                f"INSERT INTO receipts ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
                # amounts may exceed 64 bits: stored as decimal text
                [
                    str(v) if c == "amount" and v is not None else v
                    for c, v in zip(_COLUMNS, values, strict=True)
                ],
            )

    def __iter__(self) -> Iterator[Receipt]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM receipts ORDER BY receipt_id"
            ).fetchall()
        for row in rows:
            data = dict(zip(_COLUMNS, row, strict=True))
            for key in ("amount", "status", "x402_version"):
                if data[key] is not None:
                    data[key] = int(data[key])
            yield Receipt(**data)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM receipts").fetchone()[0])

    def export_jsonl(self, out: IO[str]) -> int:
        """Write every receipt as one JSON object per line; returns how many."""
        count = 0
        for receipt in self:
            out.write(json.dumps(receipt.to_dict(), sort_keys=True) + "\n")
            count += 1
        return count

    def close(self) -> None:
        with self._lock:
            self._conn.close()
