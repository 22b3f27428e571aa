"""Storage behind one small protocol: a transaction that runs SQL.

The Core writes its SQL once, with ``?`` placeholders and the common subset
of SQLite and PostgreSQL (``INSERT … RETURNING``, ``ON CONFLICT``). A store
supplies transactions and maps its driver's errors onto two of ours:

- :class:`Conflict` — a unique constraint was violated (e.g. a replayed
  ``(tab_id, req_id)``); the transaction is rolled back.
- :class:`StoreUnavailable` — the database cannot be reached or written
  (missing server, read-only file, disk full); callers fail closed. Its
  :class:`Contention` is a transaction that lost a race for row locks, safe to run again.

``open_store("sqlite:///path.db" | "path.db" | "postgresql://…")`` picks the
implementation.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from ...errors import ConfigurationError, Unavailable

if TYPE_CHECKING:
    from .deferred import Deferred

__all__ = [
    "Conflict",
    "Contention",
    "Store",
    "StoreClosed",
    "StoreMissing",
    "StoreUnavailable",
    "Tx",
    "WouldBlock",
    "open_store",
    "retried",
]

Row = tuple[Any, ...]
T = TypeVar("T")


class Conflict(Exception):
    """A unique constraint was violated; the transaction was rolled back."""


class WouldBlock(Exception):
    """A ``nowait`` transaction could not start at once (another writer holds the lock).

    Nothing was done; the caller retries where waiting is harmless (a worker thread).
    ``local``: the holder is a writer of this process, which is done in a moment (an
    event loop may wait for it: ``SQLiteStore.wait_writable``).
    """

    def __init__(self, message: str = "", *, local: bool = False) -> None:
        super().__init__(message)
        self.local = local


class StoreUnavailable(Unavailable):
    """The database cannot be reached or written. Renders as 503 (fail closed)."""

    reason: str = "core_unavailable"


class StoreClosed(StoreUnavailable):
    """The store was closed by its owner (the app is stopping): background work ends."""


class StoreMissing(StoreUnavailable):
    """The database's place does not exist or cannot be written (a SQLite file in a missing
    directory or one this process may not write in, a path that is a directory; a PostgreSQL
    login refused, a role that may not create the tables): a deployment mistake rather than an
    outage, so a gate that meets it at its start keeps failing closed instead of trying again."""


class Contention(StoreUnavailable):
    """The transaction lost a race for row locks (PostgreSQL chose it as a deadlock's victim,
    or refused it as not serializable): nothing of it was committed, so running it again is
    safe (:func:`retried`). A 503 like any store error when it keeps losing."""


def retried(fn: Callable[[], T], tries: int = 5) -> T:
    """``fn()``, a whole transaction, run again when it lost a lock race (:class:`Contention`),
    after a short random pause (two losers retrying in step would meet again)."""
    for attempt in range(tries):
        try:
            return fn()
        except Contention:
            if attempt + 1 == tries:
                raise
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
    raise AssertionError("unreachable")


class Tx(Protocol):
    """One open transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        ...

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, or None."""
        ...

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query."""
        ...

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each parameter row."""
        ...


class Store(Protocol):
    """A database the Core can run transactions on."""

    url: str
    #: Writes queued off the request path, committed in batches (:mod:`.deferred`).
    deferred: Deferred

    @property
    def dialect(self) -> Literal["sqlite", "postgres"]:
        """Which SQL dialect the store speaks (the schema fills its placeholders from it)."""
        ...

    @property
    def share_lock(self) -> str:
        """Appended to a SELECT to hold a shared row lock until commit (``FOR SHARE``);
        empty where write transactions are serialised anyway (SQLite)."""
        ...

    @property
    def row_lock(self) -> str:
        """Appended to a SELECT to lock its rows for update until commit (``FOR UPDATE``)."""
        ...

    def transaction(
        self, *, write: bool = True, nowait: bool = False, snapshot: bool = False
    ) -> AbstractContextManager[Tx]:
        """A transaction: committed on normal exit, rolled back on an exception.

        ``snapshot=True`` (a read): every statement sees the same committed state, as an
        audit needs (SQLite's read transactions always do; PostgreSQL's READ COMMITTED
        reads do not, so it begins REPEATABLE READ).

        ``write=True`` takes the write lock up front where the engine needs it
        (SQLite ``BEGIN IMMEDIATE``), so read-check-write sequences are atomic.
        ``nowait=True`` raises :class:`WouldBlock` instead of waiting for anything (a
        lock, the network): the embedded SQLite Core's short writes may then run on an
        event loop. Stores that always wait (PostgreSQL) raise it at once.
        """
        ...

    def close(self) -> None: ...


def open_store(url: str, **options: Any) -> Store:
    """Open the store named by ``url`` (a SQLite path or URL, or a PostgreSQL URL)."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme and scheme not in ("sqlite", "postgresql", "postgres"):  # not a file named so
        raise ConfigurationError(
            f"'{scheme[:20]}://…' is not a database URL: give sqlite:///path/to/core.db, a "
            "file path, or postgresql://user@host/dbname"
        )
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url, **options)
    from .sqlite import SQLiteStore

    return SQLiteStore(url, **options)
