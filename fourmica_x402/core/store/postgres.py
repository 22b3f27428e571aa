"""PostgreSQL store (psycopg 3): for several processes or machines sharing one Core.

``pip install "fourmica-x402[postgres]"``, then ``open_store("postgresql://…")``.

The Core's SQL is written once for both engines; this store makes PostgreSQL
answer it the way SQLite does:

- ``?`` placeholders become ``%s`` (a literal ``%`` becomes ``%%``) and ``COLLATE BINARY``
  ``COLLATE "C"`` (text sorts in byte order, as SQLite's does, whatever the database's
  collation), once per statement; psycopg prepares a statement server-side after it has
  run a few times on a connection.
- Python ints are sent as ``bigint`` (``numeric`` beyond 64 bits) rather than the smallest
  type that fits, so ``? + ?`` cannot overflow a ``smallint``; ``bool`` is sent as an integer
  (flags are INTEGER columns, as in SQLite); a ``numeric`` result (``SUM`` of a ``bigint``)
  comes back as ``int`` when integral and ``float`` otherwise, never ``Decimal``.
- Transactions run at READ COMMITTED. The Core's read-check-write steps are atomic conditional
  ``UPDATE`` s, unique constraints and ``INSERT … ON CONFLICT``, which PostgreSQL makes atomic
  at that level; ``write=True`` takes no table lock here (SQLite's ``BEGIN IMMEDIATE`` does).

One connection per thread, closed when the thread ends; a forked child never touches its
parent's connections (it opens its own, and drops the inherited ones without talking to the
server through them). A stale connection (server restarted) is replaced at the start of the
next transaction. A write whose COMMIT lost its connection may have committed: the store
asks the server (:mod:`._pg_doubt`) before it reports a failure.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from decimal import Decimal
from typing import Any, Literal

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.adapt import AdaptersMap, Loader
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.pq import TransactionStatus
    from psycopg.types.numeric import Int8, Int8Dumper, IntDumper, IntNumeric, IntNumericDumper
except ImportError as exc:  # pragma: no cover - exercised in an env without the extra
    raise ImportError(
        'The PostgreSQL store needs psycopg 3: pip install "fourmica-x402[postgres]"'
    ) from exc

from ...errors import CoreError
from . import Conflict, Contention, Row, StoreMissing, StoreUnavailable, WouldBlock
from ._pg_doubt import XID_QUERY, commit_outcome
from ._pg_text import describe, first_line, scrub
from .deferred import Deferred, drain_all

__all__ = ["PostgresStore"]

#: A transaction that lost a race for row locks (class 40: a deadlock's victim, a
#: serialization failure): nothing committed, safe to run again (psycopg does not make the
#: first two subclasses of the third).
_LOST_RACE: tuple[type[BaseException], ...] = (
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    pg_errors.TransactionRollback,
)
#: Of those, the deployment mistakes; and how a server refuses a login for good (its messages
#: in English; any other wording stays an outage, tried again).
_MISTAKES = (pg_errors.InsufficientPrivilege, pg_errors.InvalidSchemaName)
_REFUSED = re.compile(r'password authentication|pg_hba\.conf|(database|role) ".*" does not')
#: Errors that mean "the database cannot be reached or written", not "this SQL is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,  # connection lost or refused, shutdown, disk full, deadlock
    psycopg.InterfaceError,  # the connection is closed
    pg_errors.ReadOnlySqlTransaction,  # a standby, or default_transaction_read_only
    pg_errors.IdleInTransactionSessionTimeout,
    pg_errors.InsufficientPrivilege,  # a role without CREATE on the schema, or a revoked grant
    pg_errors.InvalidSchemaName,  # a search_path naming no schema to make the tables in
)


@functools.lru_cache(maxsize=2048)
def _to_pg(sql: str) -> str:
    """``?`` to psycopg's ``%s`` (no ``?`` in the Core's literals), SQLite's byte order to C's."""
    return sql.replace("%", "%%").replace("?", "%s").replace(" COLLATE BINARY", ' COLLATE "C"')


# --- adaptation: make values round-trip as they do through SQLite ----------------------------


class _BigIntDumper(IntDumper):
    # Distinct wrapper classes: psycopg caches the upgraded dumper by its ``cls``.
    _int8 = Int8Dumper(Int8)
    _numeric = IntNumericDumper(IntNumeric)

    def upgrade(self, obj: int, format: Any) -> Any:
        return self._int8 if -(2**63) <= obj < 2**63 else self._numeric


class _NumericLoader(Loader):
    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        if "." in text or not text.lstrip("-").isdigit():
            return float(Decimal(text))
        return int(text)


_ADAPTERS = AdaptersMap(psycopg.adapters)
_ADAPTERS.register_dumper(int, _BigIntDumper)
_ADAPTERS.register_dumper(bool, Int8Dumper)  # dumps int(value): 1 or 0
_ADAPTERS.register_loader("numeric", _NumericLoader)


# --- connections --------------------------------------------------------------------------------


def _abandon(conn: psycopg.Connection[Any]) -> None:
    """Drop a connection inherited over fork() without ending the parent's session.

    Closing it normally would send the server a Terminate message on the socket the
    parent still uses. Point our copy of the descriptor at /dev/null first, then close.
    """
    try:
        fd = conn.pgconn.socket
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    except Exception:
        pass
    with suppress(Exception):
        conn.close()


class _Slot:
    """A thread's connection. Freed with the thread's locals, which closes the connection."""

    __slots__ = ("__weakref__", "busy", "conn", "pid", "used")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.busy = False
        #: When a transaction last went through on it (time.monotonic()); 0.0: not yet.
        self.used = 0.0

    def dispose(self) -> None:
        if self.pid == os.getpid():
            with suppress(Exception):
                self.conn.close()
        else:
            _abandon(self.conn)

    def __del__(self) -> None:
        with suppress(Exception):  # at interpreter shutdown too
            self.dispose()


_STORES: weakref.WeakSet[PostgresStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Tx:
    __slots__ = ("_cur", "_reconnect")

    def __init__(
        self, cur: psycopg.Cursor[Any], reconnect: Callable[[], psycopg.Cursor[Any]] | None = None
    ) -> None:
        self._cur = cur
        #: A read without BEGIN: its first statement may find the connection dropped by the
        #: server since its last use; it is then sent once more on a fresh connection.
        self._reconnect = reconnect

    def _run(self, sql: str, params: Sequence[Any]) -> psycopg.Cursor[Any]:
        reconnect, self._reconnect = self._reconnect, None
        try:
            try:
                return self._cur.execute(_to_pg(sql), tuple(params))
            except _UNAVAILABLE:
                if reconnect is None:
                    raise
                self._cur = reconnect()
                return self._cur.execute(_to_pg(sql), tuple(params))
        except psycopg.DataError as exc:
            raise _refused(exc) from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._run(sql, params).rowcount

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        cur = self._run(sql, params)
        return cur.fetchone() if cur.description is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self._run(sql, params)
        return cur.fetchall() if cur.description is not None else []

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self._cur.executemany(_to_pg(sql), (tuple(row) for row in rows))
        except psycopg.DataError as exc:
            raise _refused(exc) from None


def _refused(exc: psycopg.DataError) -> CoreError:
    """A value PostgreSQL will not take (text holding U+0000, which SQLite keeps): the Core
    refuses such input where it comes in; one that got through is still the caller's 400."""
    return CoreError(
        f"the database refuses a value of this request: {first_line(exc)[:200]}",
        reason="invalid_request",
        status=400,
    )


class PostgresStore:
    """A PostgreSQL database, named by a ``postgresql://`` URL (or a libpq conninfo string).

    ``connect_timeout`` is in seconds; other keyword arguments go to :func:`psycopg.connect`
    (``sslmode=…``, ``prepare_threshold=…``). ``url`` keeps the credentials it was given: show
    :attr:`safe_url` (or ``repr(store)``) to people and logs.
    """

    dialect: Literal["postgres"] = "postgres"
    share_lock: str = " FOR SHARE"  # READ COMMITTED: hold the row until commit
    row_lock: str = " FOR UPDATE"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 10,
        application_name: str = "fourmica-x402",
        **connect_kwargs: Any,
    ) -> None:
        self.url = url
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error:  # the driver's text may quote the password: not repeated
            raise StoreUnavailable(
                "invalid PostgreSQL URL: it cannot be parsed (check the percent-encoding of "
                "its user, password and query)"
            ) from None
        password = str(params.get("password") or "")
        self._secrets = [s for s in (password, url if password else "") if s]
        self.safe_url = describe(params)
        self._connect_kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": application_name,
            **connect_kwargs,
        }
        self._local = threading.local()
        self._slots: weakref.WeakSet[_Slot] = weakref.WeakSet()
        self._lock = threading.Lock()
        #: Writes queued off the request path (:mod:`.deferred`): the flusher commits them in
        #: a transaction of their own (riding along another would mix row-lock orders).
        self.deferred = Deferred(self.transaction, self.safe_url, retryable=_LOST_RACE)
        _STORES.add(self)
        self._slot()  # fail fast: a wrong URL or an unreachable server is a start-up error

    # -- connections

    def _connect(self) -> _Slot:
        try:
            conn = psycopg.Connection.connect(
                self.url, autocommit=True, context=_ADAPTERS, **self._connect_kwargs
            )
            conn.execute(_IDLE_SQL, (IDLE_IN_TRANSACTION,))
        except psycopg.Error as exc:
            raise self._unavailable("cannot connect to", exc) from None
        slot = _Slot(conn)
        self._local.slot = slot
        with self._lock:
            self._slots.add(slot)
        return slot

    def _slot(self) -> _Slot:
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None or slot.pid != os.getpid() or slot.conn.closed or slot.conn.broken:
            if slot is not None and slot.pid == os.getpid():
                slot.dispose()
            return self._connect()
        return slot

    def _forget_inherited(self) -> None:
        with self._lock:
            slots, self._slots = list(self._slots), weakref.WeakSet()
        for slot in slots:
            slot.dispose()  # foreign pid: abandoned, the parent's sessions are untouched
        self._local = threading.local()

    def _begin(
        self, write: bool, snapshot: bool = False
    ) -> tuple[_Slot, psycopg.Cursor[Any], bool, int | None]:
        """The thread's connection, a cursor on it, whether a transaction was begun, and a
        write's transaction id (fetched with the BEGIN, in the same round trip).

        A read on a connection that went through a moment ago runs its statements on their
        own (autocommit): under READ COMMITTED each statement of a transaction sees its own
        snapshot anyway, so BEGIN and COMMIT would only cost two round trips. A write, or a
        read on a connection idle for longer (which BEGIN checks, and replaces if stale),
        begins a transaction."""
        slot = self._slot()
        if slot.busy:
            raise RuntimeError("nested transaction: this thread already has one open on this store")
        if not write and not snapshot and time.monotonic() - slot.used < _FRESH:
            return slot, slot.conn.cursor(), False, None
        begin = "BEGIN ISOLATION LEVEL " + (
            "REPEATABLE READ READ ONLY" if snapshot else "READ COMMITTED"
        )
        for attempt in (1, 2):
            cur = slot.conn.cursor()
            try:
                if not write:
                    cur.execute(begin)
                    return slot, cur, True, None
                cur.execute(begin + XID_QUERY, prepare=False)  # two statements: never prepared
                cur.nextset()
                row = cur.fetchone()
                return slot, cur, True, int(row[0]) if row else None
            except _UNAVAILABLE as exc:
                if not slot.conn.broken:  # a read-only server refuses a write's id
                    _rollback(slot.conn)
                    raise self._unavailable("PostgreSQL error on", exc) from None
                # A connection that went stale while idle (server restart, idle timeout):
                # nothing has run yet, so one fresh connection may retry.
                slot.dispose()
                if attempt == 2:
                    raise self._unavailable("lost the connection to", exc) from None
                slot = self._connect()
        raise AssertionError("unreachable")

    # -- the Store protocol

    @contextmanager
    def transaction(
        self, *, write: bool = True, nowait: bool = False, snapshot: bool = False
    ) -> Iterator[_Tx]:
        if nowait:  # every statement is a network round trip: never on an event loop
            raise WouldBlock("PostgreSQL transactions wait for the server")
        if not write and not getattr(self._local, "writing", False):
            drain_all(self.safe_url)  # this process reads its own queued writes
        slot, cur, began, xid = self._begin(write, snapshot and not write)
        slot.busy = True
        self._local.writing = write

        def reconnect() -> psycopg.Cursor[Any]:
            nonlocal slot, cur
            slot.busy = False
            slot.dispose()
            slot = self._connect()
            slot.busy, cur = True, slot.conn.cursor()
            return cur

        try:
            try:
                yield _Tx(cur, None if began else reconnect)
            except BaseException as exc:
                _rollback(slot.conn)
                mapped = self._map(exc)
                if mapped is None:
                    raise
                raise mapped from None
            if not began:  # statements on their own: each committed (or failed) by itself
                slot.used = time.monotonic()
                return
            if slot.conn.info.transaction_status == TransactionStatus.INERROR:
                # A statement failed and the caller caught it; PostgreSQL has already
                # discarded the whole transaction (SQLite would have kept the rest).
                _rollback(slot.conn)
                if write:
                    raise RuntimeError(
                        "a statement failed inside this transaction, so PostgreSQL rolled all of "
                        "it back; do not catch database errors inside a write transaction"
                    )
                return
            try:
                cur.execute("COMMIT")
            except BaseException as exc:
                _rollback(slot.conn)
                lost = slot.conn.broken and isinstance(exc, _UNAVAILABLE)
                if lost and xid is not None and commit_outcome(self._connect, xid):
                    return  # the answer was lost, not the commit
                mapped = self._map(exc)
                if mapped is None:
                    raise
                raise mapped from None
            slot.used = time.monotonic()
        finally:
            slot.busy = False
            self._local.writing = False
            cur.close()

    def writing_here(self) -> bool:
        """Whether this thread is inside one of this store's write transactions."""
        return bool(getattr(self._local, "writing", False))

    def close(self) -> None:
        """Close every connection this process opened (each thread's)."""
        self.deferred.close()
        with self._lock:
            slots, self._slots = list(self._slots), weakref.WeakSet()
        for slot in slots:
            slot.dispose()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"PostgresStore({self.safe_url!r})"

    # -- errors

    def _map(self, exc: BaseException) -> Exception | None:
        if isinstance(exc, pg_errors.UniqueViolation):
            return Conflict(scrub(first_line(exc), self._secrets))
        if isinstance(exc, _LOST_RACE):
            detail = scrub(first_line(exc), self._secrets)
            return Contention(f"a transaction lost a lock race on {self.safe_url}: {detail}")
        if isinstance(exc, _UNAVAILABLE):
            return self._unavailable("PostgreSQL error on", exc)
        return None

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailable:
        detail = scrub(first_line(exc), self._secrets)
        mistake = isinstance(exc, _MISTAKES) or _REFUSED.search(str(exc)) is not None
        kind = StoreMissing if mistake else StoreUnavailable  # a start-up's: fails closed
        return kind(f"{what} PostgreSQL database {self.safe_url}: {detail}")


#: How recently a connection must have gone through for a read to skip BEGIN and COMMIT.
_FRESH = 5.0
#: How long the server lets one of our transactions wait for its next statement before it
#: ends the session: a process stopped with row locks held (SIGSTOP, a paused VM, a host cut
#: off) would hold every other process's payments of those buyers until TCP gives up on it
#: (hours). Set only where the database, role or URL sets none (docs/operations.md).
IDLE_IN_TRANSACTION = "10s"
_IDLE_SQL = (
    "SELECT set_config('idle_in_transaction_session_timeout', %s, false) "
    "WHERE current_setting('idle_in_transaction_session_timeout') IN ('0', '0ms')"
)


def _rollback(conn: psycopg.Connection[Any]) -> None:
    try:
        if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
    except Exception:
        pass
