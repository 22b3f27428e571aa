"""Receipts: an append-only ledger of every payment decision a buyer made.

One row per paid (or refused) request, written once and never changed.
SQLite by default (``ReceiptLedger("receipts.db")``; ``":memory:"`` keeps it in
the process); exportable as JSON lines for audit. A paid receipt keeps the claims the
buyer signed and, when the seller passed it on, the Core's certificate for them
(docs/buyer.md, "Certificates"). The same file can keep a spending policy's budgets
(:mod:`.budgets`). :func:`on_paid` tells a callback of every payment made in a block (how
:meth:`fourmica_x402.links.Links.funded_by` links upstream payments; docs/buyer.md, "Fee splits
and agent collaboration").
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

__all__ = ["Receipt", "ReceiptLedger", "on_paid", "paid"]


@dataclass(frozen=True)
class Receipt:
    """What happened to one paid request."""

    #: paid | unanswered | needs_approval | insufficient_collateral | blocked_seller |
    #: budget_exhausted | payment_failed
    outcome: str
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
    #: The guarantee claims the buyer signed (their JSON, as sent).
    claims: str | None = None
    #: The Core's BLS certificate for them, ``{"claims": "0x…", "signature": "0x…"}``.
    certificate: dict[str, str] | None = None
    #: Whether the buyer checked the certificate against the Core's key: True, False, or
    #: None when it had no certificate or no key to check with.
    certificate_verified: bool | None = None
    #: The Core API the seller named (``rpcUrl``): its public parameters and certificates.
    core_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verify_certificate(
        self, public_key: bytes | Sequence[int] | str, *, guarantee_domain: bytes | None = None
    ) -> bool:
        """Whether :attr:`certificate` is the Core's signature (``public_key``: 48 bytes, a list
        of 48 ints as in the Core's public parameters, or hex) over exactly the claims this
        receipt's buyer signed. False when either is missing."""
        from .certificates import verify_certificate

        if self.certificate is None or self.claims is None:
            return False
        return verify_certificate(
            self.certificate, self.claims, public_key, guarantee_domain=guarantee_domain
        )


_on_paid: contextvars.ContextVar[tuple[Callable[[Receipt], None], ...]] = contextvars.ContextVar(
    "fourmica_on_paid", default=()
)


@contextlib.contextmanager
def on_paid(callback: Callable[[Receipt], None]) -> Iterator[None]:
    """Call ``callback(receipt)`` for each request the buyer transports pay inside the block
    (this thread or task and what it starts: a context variable), after its receipt is written.
    Blocks nest: the innermost callback is told; an exception it raises reaches the caller."""
    token = _on_paid.set((callback,))
    try:
        yield
    finally:
        _on_paid.reset(token)


def paid(receipt: Receipt) -> None:
    """Tell the block's :func:`on_paid` callback of a paid receipt (the transports call it)."""
    for callback in _on_paid.get():
        callback(receipt)


_COLUMNS = [f.name for f in fields(Receipt)]
_TYPES = {"certificate_verified": "INTEGER"}


class ReceiptLedger:
    """Append-only SQLite ledger of receipts. Thread-safe."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        #: The last receipt this object appended (a command's one payment, say), if any.
        self.last: Receipt | None = None
        #: Whether a receipt this object appended says its payment left (paid, unanswered):
        #: a file shared with other processes holds their receipts too.
        self.paid = False
        # Processes sharing the file wait for each other's write transactions (budgets).
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute(
                "PRAGMA journal_mode = WAL"
                if self.path != ":memory:"
                else "PRAGMA foreign_keys = ON"
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS receipts (receipt_id INTEGER PRIMARY KEY AUTOINCREMENT, "
                + ", ".join(f"{c} {_type(c)}" for c in _COLUMNS)
                + ")"
            )
            # A ledger written by an earlier version gains the newer columns (empty).
            have = {row[1] for row in self._conn.execute("PRAGMA table_info(receipts)")}
            for column in _COLUMNS:
                if column not in have:
                    self._conn.execute(f"ALTER TABLE receipts ADD COLUMN {column} {_type(column)}")
            # Append-only: the database itself refuses edits and deletions.
            self._conn.execute(
                "CREATE TRIGGER IF NOT EXISTS receipts_no_update BEFORE UPDATE ON receipts "
                "BEGIN SELECT RAISE(ABORT, 'receipts are append-only'); END"
            )
            self._conn.execute(
                "CREATE TRIGGER IF NOT EXISTS receipts_no_delete BEFORE DELETE ON receipts "
                "BEGIN SELECT RAISE(ABORT, 'receipts are append-only'); END"
            )

    @property
    def connection(self) -> sqlite3.Connection:
        """The ledger's connection (use it inside :meth:`transaction`)."""
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One SQLite write transaction, taken at once (``BEGIN IMMEDIATE``): no other
        connection to the file, in any process, writes until it ends."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def append(self, receipt: Receipt) -> None:
        values = [_stored(c, getattr(receipt, c)) for c in _COLUMNS]
        with self._lock:
            self._conn.execute(
                f"INSERT INTO receipts ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
                values,
            )
            self.last = receipt
            self.paid = self.paid or receipt.outcome in ("paid", "unanswered")

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
            if data["certificate"] is not None:
                data["certificate"] = json.loads(data["certificate"])
            if data["certificate_verified"] is not None:
                data["certificate_verified"] = bool(data["certificate_verified"])
            yield Receipt(**data)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM receipts").fetchone()[0])

    def export_jsonl(self, out: IO[str] | str | os.PathLike[str]) -> int:
        """Write every receipt as one JSON object per line to ``out``, a text file or a path
        (written anew); returns how many."""
        if isinstance(out, str | os.PathLike):
            with open(out, "w", encoding="utf-8") as file:
                return self.export_jsonl(file)
        count = 0
        for receipt in self:
            out.write(json.dumps(receipt.to_dict(), sort_keys=True) + "\n")
            count += 1
        return count

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _type(column: str) -> str:
    return _TYPES.get(column, "REAL" if column.endswith("_at") else "TEXT")


def _stored(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column == "amount":  # amounts may exceed 64 bits: stored as decimal text
        return str(value)
    if column == "certificate":
        return json.dumps(value, sort_keys=True)
    if column == "certificate_verified":
        return int(bool(value))
    return value
