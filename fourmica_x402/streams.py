"""Metered streams: a long response sold slice by slice (docs/protocol.md, "Metered streams").

A route marked ``slices=Slices(units=N)`` (or ``seconds=T``) sells its response — a stream of
server-sent events — a slice at a time, at the route's price per slice. The request's own
payment buys slice 1; each later slice is paid, before any of it is sent, by a ``POST`` to the
stream's pay URL (``<prefix>/streams/<stream id>/<slice>``), which any worker process of the
seller may answer. The serving process waits for that payment (``pay_timeout``), then goes on;
without it the stream ends with an ``end`` event saying why.

A slice is charged only once one of its units went out: a slice paid for but never started
(the client left, the source ended) has its guarantee voided.

The stream and its slices are rows of ``fx_streams`` and ``fx_stream_slices`` in the seller's
records database, with a migration list of their own; every change is one transaction.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .core.schema import migrate
from .core.store import Store, open_store
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .routes import Offer, RouteConfig

__all__ = ["Slices", "StreamRow", "Streams"]

SCHEMA_KEY = "streams_schema_version"

MIGRATIONS: list[list[str]] = [
    [
        # paid: the highest slice paid for; state: open, then complete, payment_timeout,
        # buyer_stopped, max_slices, client_left or source_failed
        """CREATE TABLE fx_streams (
            stream_id TEXT PRIMARY KEY, route TEXT NOT NULL, payer TEXT NOT NULL,
            paid INTEGER NOT NULL, state TEXT NOT NULL, created_at {real} NOT NULL,
            updated_at {real} NOT NULL)""",
        # outcome: paid (not started yet), delivered or refunded
        """CREATE TABLE fx_stream_slices (
            stream_id TEXT NOT NULL, slice INTEGER NOT NULL, guarantee_id TEXT,
            record_id INTEGER, amount {int} NOT NULL, pay_to TEXT NOT NULL,
            guarantee_version INTEGER NOT NULL, scored INTEGER NOT NULL, outcome TEXT NOT NULL,
            at {real} NOT NULL, PRIMARY KEY (stream_id, slice))""",
    ],
]

_ID = re.compile(r"str_[0-9a-f]{32}\Z")


@dataclass(frozen=True, slots=True)
class Slices:
    """How a metered route's stream is sliced: ``units`` events per slice, or ``seconds`` of
    streaming per slice (or both: whichever ends first). The route's price is one slice's.

    ``pay_timeout``: how long the stream waits for the next slice's payment; ``max_slices``:
    the most slices one request may buy (None: no limit).
    """

    units: int | None = None
    seconds: float | None = None
    pay_timeout: float = 30.0
    max_slices: int | None = None

    def __post_init__(self) -> None:
        if self.units is None and self.seconds is None:
            raise ConfigurationError("slices need units= (events per slice) or seconds=")
        if self.units is not None and (type(self.units) is not int or self.units < 1):
            raise ConfigurationError(
                f"slices: units must be a whole number ≥ 1, not {self.units!r}"
            )
        for name in ("seconds", "pay_timeout"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or not value > 0):
                raise ConfigurationError(f"slices: {name} must be a positive number of seconds")
        top = self.max_slices
        if top is not None and (type(top) is not int or top < 1):
            raise ConfigurationError(f"slices: max_slices must be a whole number ≥ 1, not {top!r}")

    def extra(self) -> dict[str, Any]:
        """What the requirements' ``extra.slices`` says: the price is per slice of this."""
        out: dict[str, Any] = {"payTimeout": self.pay_timeout}
        if self.units is not None:
            out["units"] = self.units
        if self.seconds is not None:
            out["seconds"] = self.seconds
        if self.max_slices is not None:
            out["maxSlices"] = self.max_slices
        return out

    def check(self, where: str, config: RouteConfig, offers: tuple[Offer, ...]) -> None:
        """What a metered route cannot combine with (ConfigurationError naming ``where``)."""
        clash = [
            name
            for name, value in (
                ("units", config.units),
                ("cap", config.cap),
                ("stage", config.stage),
            )
            if value is not None
        ]
        if clash:
            raise ConfigurationError(f"{where}: slices cannot be combined with {', '.join(clash)}")
        if any(offer.amount is None for offer in offers):
            raise ConfigurationError(f"{where}: a metered route's price per slice must be fixed")


@dataclass(frozen=True, slots=True)
class StreamRow:
    """One stream as stored."""

    id: str
    route: str
    payer: str
    paid: int
    state: str


@dataclass(frozen=True, slots=True)
class SliceRow:
    """One paid slice: what is needed to charge or refund it."""

    slice: int
    guarantee_id: str | None
    record_id: int | None
    amount: int
    pay_to: str
    guarantee_version: int
    scored: bool
    outcome: str


class Streams:
    """The metered streams of one records database (any number of processes share it)."""

    def __init__(self, store: Store | str | Any) -> None:
        if isinstance(store, str):
            store = open_store(store)
        self.store: Store = getattr(store, "store", store)
        migrate(self.store, migrations=MIGRATIONS, key=SCHEMA_KEY)

    def open(self, route: str, payer: str, first: SliceRow) -> str:
        """A new stream, its slice 1 paid by the request that opens it."""
        stream_id, now = "str_" + secrets.token_hex(16), time.time()
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO fx_streams (stream_id, route, payer, paid, state, created_at, "
                "updated_at) VALUES (?, ?, ?, 1, 'open', ?, ?)",
                (stream_id, route, payer.lower(), now, now),
            )
            _insert(tx, stream_id, first, now)
        return stream_id

    def get(self, stream_id: str) -> StreamRow | None:
        if not isinstance(stream_id, str) or not _ID.match(stream_id):
            return None
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                "SELECT stream_id, route, payer, paid, state FROM fx_streams WHERE stream_id = ?",
                (stream_id,),
            )
        return None if row is None else StreamRow(row[0], row[1], row[2], int(row[3]), row[4])

    def slices(self, stream_id: str) -> list[SliceRow]:
        with self.store.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT slice, guarantee_id, record_id, amount, pay_to, guarantee_version, "
                "scored, outcome FROM fx_stream_slices WHERE stream_id = ? ORDER BY slice",
                (stream_id,),
            )
        return [_slice(r) for r in rows]

    def add_slice(self, stream_id: str, payer: str, paid: SliceRow) -> str | None:
        """Record slice ``paid.slice`` as paid; None, or why it cannot be (a reason code)."""
        now = time.time()
        with self.store.transaction() as tx:
            lock = " FOR UPDATE" if self.store.dialect == "postgres" else ""
            row = tx.one(
                f"SELECT payer, paid, state FROM fx_streams WHERE stream_id = ?{lock}", (stream_id,)
            )
            why = refusal(row, paid.slice, payer)
            if why is not None:
                return why
            tx.execute(
                "UPDATE fx_streams SET paid = ?, updated_at = ? WHERE stream_id = ?",
                (paid.slice, now, stream_id),
            )
            _insert(tx, stream_id, paid, now)
        return None

    def set_outcome(
        self, stream_id: str, slice_: int, outcome: str, guarantee_id: str | None = None
    ) -> bool:
        """Move a slice from ``paid`` to ``delivered`` or ``refunded``: whether it moved.
        ``guarantee_id``: one the row does not name yet (settle-after: slice 1 is written
        before the request's settle)."""
        with self.store.transaction() as tx:
            return bool(
                tx.execute(
                    "UPDATE fx_stream_slices SET outcome = ?, at = ?, "
                    "guarantee_id = COALESCE(guarantee_id, ?) "
                    "WHERE stream_id = ? AND slice = ? AND outcome = 'paid'",
                    (outcome, time.time(), guarantee_id, stream_id, slice_),
                )
            )

    def close(self, stream_id: str, reason: str) -> bool:
        """End an open stream (``reason`` becomes its state): whether it was open."""
        with self.store.transaction() as tx:
            return bool(
                tx.execute(
                    "UPDATE fx_streams SET state = ?, updated_at = ? "
                    "WHERE stream_id = ? AND state = 'open'",
                    (reason, time.time(), stream_id),
                )
            )


def refusal(row: Sequence[Any] | None, slice_: int, payer: str | None) -> str | None:
    """Why slice ``slice_`` of a stream (``(payer, paid, state)``) cannot be paid for now."""
    if row is None:
        return "unknown_stream"
    if payer is not None and row[0] != payer.lower():
        return "stream_not_yours"
    if slice_ <= int(row[1]):
        return "slice_paid"
    if row[2] != "open":
        return "stream_closed"
    return "slice_out_of_order" if slice_ != int(row[1]) + 1 else None


def as_first(reqs: list[Any], first: SliceRow, paid: Any, elsewhere: bool) -> list[Any]:
    """The offers of ``reqs`` paid to ``first``'s payTo. ``elsewhere`` (priced by a process
    that does not serve the stream, so not at its route as opened): only the offer in the
    first slice's network and asset (from ``paid``, its payment record), at the first slice's
    amount, whatever a repricing since then says (docs/protocol.md, "Metered streams")."""
    mine = [r for r in reqs if r.pay_to.lower() == first.pay_to.lower()]
    if not elsewhere:
        return mine
    terms = None if paid is None else (paid.network, paid.asset.lower())
    return [
        r.model_copy(update={"amount": str(first.amount)})
        for r in mine
        if (r.network, r.asset.lower()) == terms
    ]


def _insert(tx: Any, stream_id: str, s: SliceRow, now: float) -> None:
    tx.execute(
        "INSERT INTO fx_stream_slices (stream_id, slice, guarantee_id, record_id, amount, pay_to, "
        "guarantee_version, scored, outcome, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'paid', ?)",
        (
            stream_id,
            s.slice,
            s.guarantee_id,
            s.record_id,
            s.amount,
            s.pay_to,
            s.guarantee_version,
            int(s.scored),
            now,
        ),
    )


def _slice(r: Sequence[Any]) -> SliceRow:
    return SliceRow(
        int(r[0]),
        r[1],
        None if r[2] is None else int(r[2]),
        int(r[3]),
        r[4],
        int(r[5]),
        bool(r[6]),
        r[7],
    )
