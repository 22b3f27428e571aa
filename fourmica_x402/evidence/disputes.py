"""Dispute states on a payment record: ``opened`` then ``resolved``, each with a note and a
time, kept as history in ``fx_disputes`` of the records database (docs/operations.md,
"Evidence and disputes").

A guarantee's disputes are numbered rows (``seq`` 1, 2, …); a change reads the last one and
writes the next in one transaction, and two concurrent changes cannot both win: the second
finds its number taken. A dispute may be opened again once resolved. A guarantee id is taken in
any case (the Core's form is lower case): each guarantee has one history.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..core.store import Conflict, Store, Tx
from ..errors import FourmicaError
from ..records import DISPUTES_SCHEMA, Records

__all__ = ["MAX_NOTE", "DisputeEntry", "DisputeError", "Disputes", "latest_states"]

#: The longest note taken, in characters.
MAX_NOTE = 2000
#: state → the state it may follow (None: no dispute yet, or the last one resolved).
_AFTER = {"opened": (None, "resolved"), "resolved": ("opened",)}
_GUARANTEE_ID = re.compile(r"0x[0-9a-fA-F]{64}\Z")


class DisputeError(FourmicaError):
    """A transition the dispute's state does not allow (resolving one that is not open…)."""

    status = 409


def _key(guarantee_id: str) -> str:
    """The guarantee id as the Core writes it: ``0x`` and 64 lower-case hex digits."""
    if not isinstance(guarantee_id, str) or not _GUARANTEE_ID.match(guarantee_id):
        raise DisputeError(
            f"{guarantee_id!r:.80} is not a guarantee id (0x and 64 hex digits)",
            reason="unknown_guarantee",
        )
    return guarantee_id.lower()


@dataclass(frozen=True)
class DisputeEntry:
    state: str  # opened | resolved
    note: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Disputes:
    """The dispute history of the records in ``records``."""

    def __init__(self, records: Records) -> None:
        self.store = records.store

    def history(self, guarantee_id: str) -> list[DisputeEntry]:
        """Every state change of the guarantee's disputes, oldest first."""
        guarantee_id = _key(guarantee_id)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT state, note, at FROM fx_disputes WHERE guarantee_id = ? ORDER BY seq",
                (guarantee_id,),
            )
        return [DisputeEntry(r[0], r[1], float(r[2])) for r in rows]

    def state(self, guarantee_id: str) -> str | None:
        """The current state (None: never disputed)."""
        found = self.history(guarantee_id)
        return found[-1].state if found else None

    def open(self, guarantee_id: str, note: str) -> DisputeEntry:
        return self._change(guarantee_id, "opened", note)

    def resolve(self, guarantee_id: str, note: str) -> DisputeEntry:
        return self._change(guarantee_id, "resolved", note)

    def _change(self, guarantee_id: str, state: str, note: str) -> DisputeEntry:
        guarantee_id = _key(guarantee_id)
        note = note.strip()
        if not note:
            raise DisputeError("give a note saying why", reason="invalid_note")
        if len(note) > MAX_NOTE:
            raise DisputeError(
                f"the note is {len(note)} characters; at most {MAX_NOTE}",
                reason="invalid_note",
            )
        try:  # a command line's undecodable bytes come as lone surrogates: no database takes them
            note.encode("utf-8")
        except UnicodeEncodeError:
            raise DisputeError("the note is not valid UTF-8 text", reason="invalid_note") from None
        if "\x00" in note:
            raise DisputeError("the note holds a NUL character", reason="invalid_note")
        entry = DisputeEntry(state, note, time.time())
        try:
            with self.store.transaction() as tx:
                self._write(tx, guarantee_id, entry)
        except Conflict:  # another process changed it first: its state is not the one read
            raise DisputeError(
                "the dispute changed meanwhile; look at its history and try again",
                reason="dispute_conflict",
            ) from None
        return entry

    @staticmethod
    def _write(tx: Tx, guarantee_id: str, entry: DisputeEntry) -> None:
        row = tx.one(
            "SELECT seq, state FROM fx_disputes WHERE guarantee_id = ? ORDER BY seq DESC LIMIT 1",
            (guarantee_id,),
        )
        seq, current = (0, None) if row is None else (int(row[0]), row[1])
        if current not in _AFTER[entry.state]:
            verb = "open" if entry.state == "opened" else "resolve"
            now = "already open" if current == "opened" else "not open"
            raise DisputeError(
                f"cannot {verb} the dispute of {guarantee_id}: it is {now}",
                reason="invalid_dispute_transition",
            )
        tx.execute(
            "INSERT INTO fx_disputes (guarantee_id, seq, state, note, at) VALUES (?, ?, ?, ?, ?)",
            (guarantee_id, seq + 1, entry.state, entry.note, entry.at),
        )


def latest_states(store: Store, guarantee_ids: Iterable[str]) -> dict[str, str]:
    """The current dispute state of each disputed guarantee of ``guarantee_ids``, in one read;
    {} when the database has no dispute table (no seller's records were ever kept there)."""
    ids = list(guarantee_ids)
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    with store.transaction(write=False) as tx:
        row = tx.one("SELECT value FROM fx_meta WHERE key = 'records_schema_version'")
        if row is None or int(row[0]) < DISPUTES_SCHEMA:
            return {}
        rows = tx.all(
            "SELECT d.guarantee_id, d.state FROM fx_disputes d WHERE d.guarantee_id IN "
            f"({marks}) AND d.seq = (SELECT MAX(seq) FROM fx_disputes e "
            "WHERE e.guarantee_id = d.guarantee_id)",
            tuple(ids),
        )
    return {r[0]: r[1] for r in rows}
