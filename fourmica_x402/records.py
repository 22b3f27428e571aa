"""Payment records: what was paid, by whom, for what, and how it was delivered.

The gate writes a record **before** the paid handler runs (route, method, request and
guarantee ids, payer, payTo, amount, asset, network, header version, settle result, the request
hash of docs/operations.md, "Evidence and disputes") and completes it afterwards (status,
SHA-256 of the response body, certificate). Disputes on a record are kept beside it
(``fx_disputes``, :mod:`fourmica_x402.evidence.disputes`). In embedded mode the records live
in the Core's database; otherwise in their own (``Records("sqlite:///records.db")``).

    >>> records.query(payer="0x…", limit=10)     # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ._eth import parse_address
from ._json import dumps
from .core.schema import migrate
from .core.store import Store, Tx, open_store
from .core.store.deferred import Task
from .followups import DONE, DROP_MARK, Followup, Followups, take_mark

__all__ = ["Followup", "PaymentRecord", "Records"]

#: Record outcomes a follow-up is still working on.
_RETRIED = {pending for pending, _ in DONE.values()}

_COMPLETE = (
    "UPDATE fx_records SET status = ?, http_status = ?, response_hash = ?, delivered_at = ?, "
    "outcome = ?, certificate = COALESCE(?, certificate), response_headers = ?, "
    "response_body = ?, settle_result = COALESCE(?, settle_result), "
    "request_hash = COALESCE(?, request_hash)"
)
_COMPLETE_NAMING = _COMPLETE + ", guarantee_id = ? WHERE record_id = ?"
_COMPLETE += " WHERE record_id = ?"

_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE fx_records (
            record_id {autoid}, created_at {real} NOT NULL, route TEXT NOT NULL,
            method TEXT NOT NULL, path TEXT NOT NULL, header_version INTEGER NOT NULL,
            header_hash TEXT NOT NULL UNIQUE, request_id TEXT, tab_id TEXT, guarantee_id TEXT,
            payer TEXT, pay_to TEXT NOT NULL, amount {int} NOT NULL, asset TEXT NOT NULL,
            network TEXT NOT NULL, settle_mode TEXT NOT NULL, settle_result TEXT NOT NULL,
            status TEXT NOT NULL, http_status INTEGER, response_hash TEXT, delivered_at {real},
            certificate TEXT, outcome TEXT, response_body TEXT, response_headers TEXT)""",
        "CREATE INDEX fx_records_payer ON fx_records (payer, created_at)",
        "CREATE INDEX fx_records_guarantee ON fx_records (guarantee_id)",
    ],
    [  # guarantees to void later: a settle whose answer never came ('in_doubt'), or a
        # refund the facilitator could not take when the handler failed ('refund')
        """CREATE TABLE fx_void_intents (
            guarantee_id TEXT PRIMARY KEY, pay_to TEXT NOT NULL, created_at {real} NOT NULL,
            next_at {real} NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL, detail TEXT, kind TEXT NOT NULL DEFAULT 'in_doubt')""",
        "CREATE INDEX fx_void_intents_due ON fx_void_intents (status, next_at)",
    ],
    [  # settle-after: one handler run per guarantee, however its header is encoded
        """CREATE UNIQUE INDEX fx_records_after_guarantee ON fx_records (tab_id, request_id)
            WHERE settle_mode = 'after'""",
    ],
    [  # follow-ups are voids or delivery scores ('score', with its value)
        "ALTER TABLE fx_void_intents RENAME TO fx_followups",
        "ALTER TABLE fx_followups ADD COLUMN score INTEGER",
    ],
    [  # what was asked: a digest of method, path, query and body (docs/operations.md,
        # "Evidence and disputes"); NULL on records written before it
        "ALTER TABLE fx_records ADD COLUMN request_hash TEXT",
    ],
    [  # disputes on a record: every state change one row, numbered per guarantee
        """CREATE TABLE fx_disputes (
            guarantee_id TEXT NOT NULL, seq INTEGER NOT NULL, state TEXT NOT NULL,
            note TEXT NOT NULL, at {real} NOT NULL, PRIMARY KEY (guarantee_id, seq))""",
    ],
    [  # the query string as sent: an idempotent replay answers only the request it paid for
        "ALTER TABLE fx_records ADD COLUMN query_string TEXT",
    ],
    [  # the records a gate's start-up recovery looks for (no outcome yet): found without
        # reading every record ever written (docs/operations.md, "The embedded Core")
        "CREATE INDEX fx_records_open ON fx_records (status) WHERE outcome IS NULL",
    ],
]
#: The records schema version that made ``fx_disputes`` (readers check it before reading).
DISPUTES_SCHEMA = 6

_COLUMNS = (
    "record_id, created_at, route, method, path, header_version, header_hash, request_id, "
    "tab_id, guarantee_id, payer, pay_to, amount, asset, network, settle_mode, settle_result, "
    "status, http_status, response_hash, delivered_at, certificate, outcome, request_hash, query_string"
)


@dataclass(frozen=True)
class PaymentRecord:
    record_id: int
    created_at: float
    route: str
    method: str
    path: str
    header_version: int
    header_hash: str
    request_id: str | None
    tab_id: str | None
    guarantee_id: str | None
    payer: str | None
    pay_to: str
    amount: int
    asset: str
    network: str
    settle_mode: str
    settle_result: dict[str, Any]
    status: str  # settled | verified | delivered | failed | refunded
    http_status: int | None
    response_hash: str | None
    delivered_at: float | None
    certificate: dict[str, str] | None
    # delivered | refunded | cancelled | kept, or refund_pending / score_pending while retried
    outcome: str | None
    #: SHA-256 of the request (:func:`fourmica_x402.evidence.request_hash`); None before it
    request_hash: str | None = None
    #: The query string as sent (without ``?``); None on records written before it
    query: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _record(r: Sequence[Any]) -> PaymentRecord:
    return PaymentRecord(
        int(r[0]),
        float(r[1]),
        r[2],
        r[3],
        r[4],
        int(r[5]),
        r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        r[11],
        int(r[12]),
        r[13],
        r[14],
        r[15],
        json.loads(r[16]),
        r[17],
        None if r[18] is None else int(r[18]),
        r[19],
        None if r[20] is None else float(r[20]),
        json.loads(r[21]) if r[21] else None,
        r[22],
        r[23],
        r[24],
    )


class Records(Followups):
    """The payment-record book. Thread-safe; several processes may share its database."""

    def __init__(self, store: Store | str) -> None:
        self.store = open_store(store) if isinstance(store, str) else store
        migrate(self.store, migrations=_MIGRATIONS, key="records_schema_version")

    def begin(self, *, mark: str | None = None, **fields: Any) -> int:
        """Write the record of a paid request before its handler runs; returns its id.

        Takes the keyword arguments of :meth:`insert`; ``mark``: the guarantee whose remote
        settle this records, its mark removed in the same write (:meth:`claim_settle`);
        :class:`~.followups.MarkTaken`, nothing written, when the mark came due meanwhile.
        """
        with self.store.transaction() as tx:
            if mark is not None:
                take_mark(tx, mark)
            return self.insert(tx, **fields)

    @staticmethod
    def insert(
        tx: Tx,
        *,
        route: str,
        method: str,
        path: str,
        header_version: int,
        header_hash: str,
        pay_to: str,
        amount: int,
        asset: str,
        network: str,
        settle_mode: str,
        settle_result: dict[str, Any] | str,
        status: str,
        request_id: str | None = None,
        tab_id: str | None = None,
        guarantee_id: str | None = None,
        payer: str | None = None,
        request_hash: str | None = None,
        query: str | None = None,
    ) -> int:
        """:meth:`begin` inside a transaction the caller holds (e.g. the Core's acceptance)."""
        row = tx.one(
            "INSERT INTO fx_records (created_at, route, method, path, header_version, "
            "header_hash, request_id, tab_id, guarantee_id, payer, pay_to, amount, asset, "
            "network, settle_mode, settle_result, status, request_hash, query_string) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING record_id",
            (
                time.time(),
                route,
                method,
                path,
                header_version,
                header_hash,
                request_id,
                tab_id,
                guarantee_id,
                payer,
                pay_to,
                amount,
                asset,
                network,
                settle_mode,
                _text(settle_result),
                status,
                request_hash,
                query,
            ),
        )
        assert row is not None
        return int(row[0])

    def finish(self, record_id: int, *, nowait: bool = False, **fields: Any) -> None:
        """Complete a record once the response went out (the delivery marker): the keyword
        arguments of :meth:`complete`; ``nowait`` as in ``Store.transaction``."""
        with self.store.transaction(nowait=nowait) as tx:
            self.complete(tx, record_id, **fields)

    def settled_after(self, record_id: int, guarantee_id: str) -> None:
        """A remote settle-after settle was accepted: the record names its guarantee and the
        settle's mark goes, in one write — a response still streaming when the mark would be
        due is not taken for a settle in doubt (:class:`~.followups.MarkTaken`: it came due
        before this, and nothing is written)."""
        with self.store.transaction() as tx:
            take_mark(tx, guarantee_id)
            tx.execute(
                "UPDATE fx_records SET guarantee_id = ? WHERE record_id = ?",
                (guarantee_id, record_id),
            )

    def finish_later(
        self, record_id: int, *, failed: Callable[[Exception], None] | None = None, **fields: Any
    ) -> None:
        """:meth:`finish`, committed off the caller's path (:mod:`.core.store.deferred`);
        ``failed(error)`` is called if it could not be written."""
        fields.setdefault("delivered_at", time.time())
        self.store.deferred.submit(
            Task(lambda tx: self.complete(tx, record_id, **fields), failed=failed)
        )

    @staticmethod
    def complete(
        tx: Tx,
        record_id: int,
        *,
        status: str,
        http_status: int | None,
        response_hash: str | None,
        outcome: str,
        certificate: dict[str, str] | None = None,
        response: tuple[list[tuple[str, str]], bytes] | None = None,
        settle_result: dict[str, Any] | None = None,
        delivered_at: float | None = None,
        request_hash: str | None = None,
    ) -> None:
        """:meth:`finish` inside a transaction the caller holds (e.g. the Core's validation).

        ``delivered_at``: when the response went out (default: now). ``request_hash``: one
        that covers the body the handler read (else the record keeps the one it has). A
        ``settle_result`` (settle-after) names the guarantee the record gets.
        """
        if outcome in _RETRIED:  # the reconciler may have finished its retry already
            outcome = _retried_outcome(tx, record_id, outcome, status)
        named = (settle_result or {}).get("transaction") or None
        tx.execute(
            # guarantee_id is set only when a settle-after result names it: SQLite rewrites the
            # entry of an indexed column the statement sets, even to the value it had (a page
            # of the index's log per completion, docs/architecture.md).
            _COMPLETE_NAMING if named else _COMPLETE,
            (
                status,
                http_status,
                response_hash,
                time.time() if delivered_at is None else delivered_at,
                outcome,
                dumps(certificate) if certificate else None,
                dumps(response[0]) if response else None,
                response[1].hex() if response else None,
                dumps(settle_result, sort_keys=True) if settle_result else None,
                request_hash,
                *((named,) if named else ()),
                record_id,
            ),
        )
        if named:  # a remote settle-after's answer is recorded now: its mark goes with it
            tx.execute(DROP_MARK, (named,))

    def attach_certificates(self, certificates: list[tuple[int, dict[str, str]]]) -> None:
        """File the Core's certificates once made (the gate's batched certifier), in one write."""
        if certificates:
            with self.store.transaction() as tx:
                self.attach(tx, certificates)

    @staticmethod
    def attach(tx: Tx, certificates: list[tuple[int, dict[str, str]]]) -> None:
        """:meth:`attach_certificates` inside a transaction the caller holds."""
        tx.many(
            "UPDATE fx_records SET certificate = ? WHERE record_id = ?",
            ((dumps(cert), rid) for rid, cert in certificates),
        )

    def label(self, guarantee_id: str, outcome: str) -> None:
        """Set the outcome of a record left "settled, delivery unknown" (start-up recovery)."""
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE fx_records SET outcome = ? "
                "WHERE guarantee_id = ? AND status = 'settled' AND outcome IS NULL",
                (outcome, guarantee_id),
            )

    def by_header(
        self, header_hash: str
    ) -> tuple[PaymentRecord, tuple[list[Any], bytes] | None] | None:
        """The record of a payment header (idempotent replay) and its stored response, if any."""
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                f"SELECT {_COLUMNS}, response_headers, response_body FROM fx_records "
                "WHERE header_hash = ?",
                (header_hash,),
            )
        if row is None:
            return None
        stored = None
        if row[-1] is not None:
            stored = ([tuple(h) for h in json.loads(row[-2])], bytes.fromhex(row[-1]))
        return _record(row[:-2]), stored

    def get(self, record_id: int) -> PaymentRecord | None:
        with self.store.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM fx_records WHERE record_id = ?", (record_id,))
        return None if row is None else _record(row)

    def for_guarantee(
        self, guarantee_id: str, tab_id: str, request_id: str
    ) -> PaymentRecord | None:
        """The newest record of a guarantee: by its id, else by its tab and request ids (a
        settle-after record, written before the guarantee had an id; ids as ``hex()``)."""
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                f"SELECT {_COLUMNS} FROM fx_records WHERE guarantee_id = ? "
                "OR (tab_id = ? AND request_id = ?) ORDER BY record_id DESC LIMIT 1",
                (guarantee_id, tab_id, request_id),
            )
        return None if row is None else _record(row)

    def query(
        self,
        *,
        payer: str | None = None,
        route: str | None = None,
        guarantee_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[PaymentRecord]:
        """Records, newest first, filtered by payer (any spelling of the address: ValueError
        for one that is none), route, guarantee (any case) or status."""
        if payer is not None:
            payer = parse_address(payer)  # stored in its EIP-55 form
        if guarantee_id is not None:
            guarantee_id = guarantee_id.lower()
        filters = {"payer": payer, "route": route, "guarantee_id": guarantee_id, "status": status}
        given = {column: value for column, value in filters.items() if value is not None}
        where, params = [f"{column} = ?" for column in given], list(given.values())
        sql = f"SELECT {_COLUMNS} FROM fx_records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql + " ORDER BY record_id DESC LIMIT ?", (*params, int(limit)))
        return [_record(r) for r in rows]


def _text(settle_result: dict[str, Any] | str) -> str:
    return settle_result if isinstance(settle_result, str) else dumps(settle_result, sort_keys=True)


def _retried_outcome(tx: Tx, record_id: int, outcome: str, status: str) -> str:
    """``outcome``, or what the follow-up made it: filed before the queued completion, the
    reconciler may close it first."""
    sql = "SELECT f.status FROM fx_followups f JOIN fx_records r USING (guarantee_id) "
    row = tx.one(sql + "WHERE r.record_id = ?", (record_id,))
    if row is None or DONE.get(row[0], ("",))[0] != outcome:
        return outcome
    final = DONE[row[0]][1]
    return final or ("delivered" if status == "delivered" else "cancelled")
