"""SQLite store: the embedded default (stdlib ``sqlite3``, WAL).

One connection per thread (for no concurrent use), closed when the thread (or greenlet) ends.
Write transactions start with ``BEGIN IMMEDIATE``: the write lock is taken
before the first read, so a check-then-write sequence is atomic across
threads and processes sharing the file. ``synchronous=NORMAL`` in WAL mode
keeps every commit safe from a process crash (SIGKILL) without an fsync per
commit; only an OS crash or power cut can lose the last commits.

Checkpoints (copying the log back into the database file, with an fsync) never
run inside a commit: a background thread runs one every 100 commits, beside the
writers, and holds this process's writers back only when steady writes kept the
log from starting over. A writer that finds another process's lock polls for it
in short steps before falling back to SQLite's busy handler. ``nowait``
transactions start at once or raise :class:`WouldBlock` (an event loop may run
them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from ...errors import ConfigurationError
from . import Conflict, Row, StoreClosed, StoreMissing, StoreUnavailable, WouldBlock
from ._forks import ForkSafe
from .deferred import Deferred, Job, drain_all

__all__ = ["SQLiteStore"]

#: Commits between background checkpoints (SQLite's own default, 1 000 log pages, is
#: about this many small commits), and the log size (pages) at which a checkpoint holds
#: this process's writers back so the log can start over: that pass ends in two fsyncs
#: (~10 ms on a virtual disk), which the next writer waits out, so it comes seldom — every
#: ~900 paid requests, a log of up to ~64 MiB (docs/operations.md, "The embedded Core").
_CHECKPOINT_EVERY = 100
_RESTART_AFTER = 16_000
#: How long a writer polls for another process's write lock before SQLite's busy handler.
_POLL_FOR = 1.0


def _path_of(url: str) -> str:
    if "?" in url:  # SQLite's own URI parameters are not read here: it would name the file
        raise ConfigurationError(
            f"{url!r:.80}: a SQLite database is named by its path alone, with no '?…' query"
        )
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :] or ":memory:"
    if url.startswith("sqlite://"):
        return url[len("sqlite://") :] or ":memory:"
    return url


_SUM = re.compile(r"\bSUM\(", re.IGNORECASE)
_EXACT = "\x00exact_sum:"  # marks a total beyond 64 bits on its way out of SQLite


class _ExactSum:
    """``SUM()`` without its 64-bit overflow, as PostgreSQL's ``SUM`` of a ``bigint`` is."""

    def __init__(self) -> None:
        self.total: Any = None

    def step(self, value: Any) -> None:
        if value is not None:
            self.total = value if self.total is None else self.total + value

    def finalize(self) -> Any:
        total = self.total
        if isinstance(total, int) and not -(2**63) <= total < 2**63:
            return _EXACT + str(total)  # SQLite holds no such integer: text, read back below
        return total


def _overflowed(exc: sqlite3.OperationalError, sql: str) -> bool:
    return str(exc) == "integer overflow" and _SUM.search(sql) is not None


class _Tx:
    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _exact(self, sql: str, params: Sequence[Any]) -> list[Row]:
        """The rows of ``sql`` with its ``SUM`` s summed exactly, in Python: SQLite's raises past
        2**63 - 1 (many positions, a long history). Only then: the C aggregate is much faster."""
        rows = self._conn.execute(_SUM.sub("exact_sum(", sql), params).fetchall()
        return [
            tuple(
                int(v[len(_EXACT) :]) if isinstance(v, str) and v.startswith(_EXACT) else v
                for v in row
            )
            for row in rows
        ]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        try:
            row: Row | None = self._conn.execute(sql, params).fetchone()
        except sqlite3.OperationalError as exc:
            if not _overflowed(exc, sql):
                raise
            row = next(iter(self._exact(sql, params)), None)
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if not _overflowed(exc, sql):
                raise
            return self._exact(sql, params)

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SQLiteStore(ForkSafe):
    """A SQLite database file (or ``:memory:`` for one-thread scratch use)."""

    dialect: Literal["sqlite"] = "sqlite"
    share_lock: str = ""  # BEGIN IMMEDIATE already serialises writers
    row_lock: str = ""

    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000) -> None:
        self.url = url
        self.path = _path_of(url)
        if self.path not in ("", ":memory:") and not self.path.startswith("file:"):
            # Every thread opens its own connection: a relative path read after the process
            # changed its directory (a daemon, a test) would open another, empty database.
            # Joined, not normalised: "link/../x.db" is what SQLite resolves, symlink first.
            try:
                self.path = os.path.join(os.getcwd(), self.path)
            except OSError as exc:  # the working directory is gone
                raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from None
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._unchecked = 0
        #: Background checkpoints done (see ``nowait``).
        self.checkpoints = 0
        self._closed = False
        self._start_afresh()  # its locks: anew in a forked child (:mod:`._forks`)
        #: Writes queued off the request path (:mod:`.deferred`).
        self.deferred = Deferred(self.transaction, self._key())
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise StoreMissing(f"directory of the SQLite database does not exist: {parent}")
            # A directory, or a place this process may not write the file, its -wal and -shm
            # in (permissions, a read-only mount): a deployment mistake too.
            where = [parent, self.path] if os.path.exists(self.path) else [parent]
            if os.path.isdir(self.path) or not all(os.access(p, os.W_OK) for p in where):
                raise StoreMissing(f"{self.path}: a directory, or read-only to this process")
        self._connection()  # fail fast on a bad path

    def _key(self) -> str:
        """The database as this process knows it (one file, whichever path names it)."""
        if self.path == ":memory:":
            return f":memory:{id(self)}"  # each one a database of its own
        return os.path.realpath(self.path)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self._busy_timeout_ms / 1000,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # Commits never checkpoint inline (a checkpoint syncs the disk, milliseconds on the
            # request path): a background thread does it every so many commits.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.create_aggregate("exact_sum", 1, _ExactSum)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from None
        self._local.conn, self._local.pid = conn, os.getpid()
        self._local.timeout, self._local.owner = int(self._busy_timeout_ms), _Owner()
        release = weakref.finalize(self._local.owner, _release, self._conns, conn, os.getpid())
        release.atexit = False  # never at exit: a daemon thread may be inside a transaction
        with self._lock:
            self._conns.append(conn)
        return conn

    @contextmanager
    def transaction(
        self, *, write: bool = True, nowait: bool = False, snapshot: bool = False
    ) -> Iterator[_Tx]:  # a read transaction here is always a snapshot
        if not write:
            if not getattr(self._local, "writing", False):
                drain_all(self.deferred.key)  # this process reads its own queued writes
            with self._transaction(write=False, nowait=False) as tx:
                yield tx
            return
        if self.writing_here():  # the lock is not re-entrant: waiting would never end
            raise RuntimeError("a write transaction is already open on this thread; nest none")
        # Writers of this process queue on a lock (woken at once) rather than in SQLite's busy
        # handler, which sleeps in millisecond steps; other processes still meet the busy handler.
        if not self._write_lock.acquire(blocking=not nowait):
            raise WouldBlock("another writer of this process holds the database", local=True)
        jobs: list[Job] = []
        failures: list[tuple[Job, Exception]] = []
        committed, refused = False, None
        self._local.writing = True
        try:
            with self._transaction(write=True, nowait=nowait) as tx:
                # The queued completions ride along: one commit for them and this write.
                jobs = self.deferred.take()
                if not jobs:
                    yield tx
                else:
                    failures = self.deferred.run(tx, jobs)
                    # A write its caller refuses (a payment's checks raise) still commits them:
                    # only its own statements are undone (docs/architecture.md).
                    tx.execute("SAVEPOINT fx_write")
                    try:
                        yield tx
                    except sqlite3.Error:
                        raise  # the database failed: all is rolled back, the queue runs again
                    except Exception as exc:
                        tx.execute("ROLLBACK TO SAVEPOINT fx_write")
                        refused = exc
                    tx.execute("RELEASE SAVEPOINT fx_write")
            committed = True
        finally:
            self._local.writing = False
            self._release_writer()
            if jobs:
                self.deferred.done(jobs, failures, committed)
        if refused is not None:
            raise refused

    def writing_here(self) -> bool:
        """Whether this thread is inside one of this store's write transactions."""
        return bool(getattr(self._local, "writing", False))

    def _release_writer(self) -> None:
        self._write_lock.release()
        if self._loop_waiters:  # wake event loops waiting for the writer (wait_writable)
            with self._lock:
                waiters, self._loop_waiters = self._loop_waiters, []
            for loop, future in waiters:
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    loop.call_soon_threadsafe(_wake, future)

    async def wait_writable(self, timeout: float = 1.0) -> None:
        """Return (on an event loop, without blocking it) once this process's writer lock
        is free, or after ``timeout``; then a ``nowait`` transaction will likely start."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._loop_waiters.append((loop, future))
        if not self._write_lock.locked():  # released before we registered
            _wake(future)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, timeout)

    @contextmanager
    def _transaction(self, *, write: bool, nowait: bool) -> Iterator[_Tx]:
        with self._idle:
            if self._closed:
                raise StoreClosed(f"SQLite store {self.path} is closed")
            self._active += 1
        try:
            with self._open(write=write, nowait=nowait) as tx:
                yield tx
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _timeout(self, conn: sqlite3.Connection, ms: int) -> None:
        """Set this thread's connection's busy timeout, only when it changes (a statement)."""
        if self._local.timeout != ms:
            conn.execute(f"PRAGMA busy_timeout = {ms}")
            self._local.timeout = ms

    def _begin(self, conn: sqlite3.Connection, write: bool, nowait: bool) -> None:
        if not write:
            self._timeout(conn, int(self._busy_timeout_ms))  # a reader may meet a recovery
            conn.execute("BEGIN")
            return
        # A writer's busy timeout stays 0 from one write to the next (two fewer statements per
        # transaction; only a reader sets it back): once BEGIN IMMEDIATE holds the lock in WAL
        # mode, nothing inside the transaction waits on it.
        if nowait:  # no waiting at all: another process holding the lock means "elsewhere"
            self._begin_now(conn)
            return
        # Another process holds the write lock for a fraction of a millisecond; SQLite's busy
        # handler would sleep 1, 2, 5, 10 … 100 ms between tries. Poll in short steps first.
        pause, deadline = 50e-6, time.monotonic() + _POLL_FOR
        while True:
            try:
                self._begin_now(conn)
                return
            except WouldBlock:
                if time.monotonic() > deadline:
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.001)
        self._timeout(conn, int(self._busy_timeout_ms))
        conn.execute("BEGIN IMMEDIATE")  # still busy: SQLite's own busy timeout from here

    def _begin_now(self, conn: sqlite3.Connection) -> None:
        self._timeout(conn, 0)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise WouldBlock(f"SQLite database busy: {exc}") from None
            raise

    @contextmanager
    def _open(self, *, write: bool, nowait: bool = False) -> Iterator[_Tx]:
        conn = self._connection()
        if conn.in_transaction:
            raise RuntimeError("a transaction is already open on this thread; nest none")
        try:
            self._begin(conn, write, nowait)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite database unavailable: {exc}") from None
        try:
            yield _Tx(conn)
        except sqlite3.IntegrityError as exc:
            _rollback(conn)
            if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
                raise Conflict(str(exc)) from None
            raise
        except sqlite3.OperationalError as exc:
            _rollback(conn)
            raise StoreUnavailable(f"SQLite error: {exc}") from None
        except sqlite3.DatabaseError as exc:
            _rollback(conn)
            if type(exc) is not sqlite3.DatabaseError:  # bad SQL or data: a bug, not an outage
                raise
            # "file is not a database", "database disk image is malformed": the file is gone bad
            raise StoreUnavailable(f"SQLite database unreadable: {exc}") from None
        except BaseException:
            _rollback(conn)
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise StoreUnavailable(f"SQLite commit failed: {exc}") from None
        if write:
            self._count_unchecked_commit()

    def _count_unchecked_commit(self) -> None:
        """Wake the background checkpointer every so many commits made without a checkpoint."""
        if self.path == ":memory:":
            return
        with self._lock:
            self._unchecked += 1
            if self._unchecked < _CHECKPOINT_EVERY:
                return
            self._unchecked = 0
            if self._checkpointer is None or not self._checkpointer.is_alive():  # forked: anew
                self._checkpointer = threading.Thread(
                    target=self._checkpoints, name="fourmica-checkpoint", daemon=True
                )
                self._checkpointer.start()
        self._checkpoint_due.set()

    def _checkpoints(self) -> None:
        while self._checkpoint_due.wait():
            self._checkpoint_due.clear()
            with self._idle:
                if self._closed:
                    return
                self._active += 1
            try:
                conn = self._connection()
                # Beside the writers: they go on appending while the pages are copied back.
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if row is not None and int(row[1]) > _RESTART_AFTER:
                    # Under steady writes the copy never catches up and the log never starts
                    # over; hold this process's writers back for one complete pass.
                    self._write_lock.acquire()
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    finally:
                        self._release_writer()
                self.checkpoints += 1
            except (sqlite3.Error, StoreUnavailable):  # no connection to be had now either
                pass  # the next one (or another connection's automatic one) catches up
            finally:
                with self._idle:
                    self._active -= 1
                    self._idle.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Close every connection once running transactions end; later ones get StoreUnavailable."""
        self.deferred.close()
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._active == 0, timeout=timeout)
        self._checkpoint_due.set()  # lets the checkpointer see the store is closed
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in list(conns):  # a thread ending meanwhile takes its own out of ``conns``
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"


class _Owner:
    __slots__ = ("__weakref__",)  # held by one thread's local alone: gone when the thread ends


def _release(conns: list[sqlite3.Connection], conn: sqlite3.Connection, pid: int) -> None:
    with contextlib.suppress(ValueError, sqlite3.Error):
        if os.getpid() == pid:  # the connection of a thread that ended (not a parent process's)
            conns.remove(conn)  # in place, lock-free: GC may run this anywhere
            conn.close()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")
