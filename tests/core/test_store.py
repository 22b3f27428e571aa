"""The stores behind the Core: the same behaviour from SQLite and PostgreSQL.

Each test that takes ``store_url`` runs on a fresh SQLite file and on a fresh PostgreSQL
database (see tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from fourmica_x402.core.schema import SCHEMA_VERSION, migrate, schema_version
from fourmica_x402.core.store import Conflict, Store, StoreUnavailable, WouldBlock, open_store
from fourmica_x402.errors import CoreError

BIG = 2**62 + 1  # beyond int32 and beyond float precision: must stay exact


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    with s.transaction() as tx:
        tx.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL, note TEXT)")
    yield s
    s.close()


def _keys(store: Store) -> list[str]:
    with store.transaction(write=False) as tx:
        return [row[0] for row in tx.all("SELECT k FROM kv ORDER BY k")]


def _in_threads(n: int, work: Callable[[int], None]) -> None:
    """Run work(0..n-1) in n threads started together; re-raise the first failure."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


# --- transactions --------------------------------------------------------------------------


def test_dialect_matches_the_url(store: Store, store_url: str) -> None:
    assert store.dialect == ("postgres" if store_url.startswith("postgresql://") else "sqlite")
    assert store.url == store_url


@pytest.mark.parametrize("url", ["mysql://user:secret@host/db", "https://core.example/db"])
def test_a_url_of_another_database_is_refused_by_name_not_opened_as_a_path(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was read as a SQLite path ("directory … does not exist: …/mysql:/user:secret@host"),
    naming neither the mistake nor hiding the password."""
    from fourmica_x402.errors import ConfigurationError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="is not a database URL") as refused:
        open_store(url)
    assert "secret" not in str(refused.value) and list(tmp_path.iterdir()) == []


def test_a_relative_sqlite_path_names_one_file_whatever_the_directory_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each thread opens its own connection: one opened after the process changed its
    directory (a daemon, a test's chdir undone) opened another, empty file of that name."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    store = open_store("sqlite:///relative.db")
    try:
        with store.transaction() as tx:
            tx.execute("CREATE TABLE t (x INTEGER)")
        monkeypatch.chdir(tmp_path / "b")

        def write() -> None:  # a new thread: a new connection
            with store.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (1)")

        worker = threading.Thread(target=write)
        worker.start()
        worker.join(10)
        with store.transaction(write=False) as tx:
            assert tx.one("SELECT COUNT(*) FROM t") == (1,)
        assert not (tmp_path / "b" / "relative.db").exists()
    finally:
        store.close()


def test_a_relative_path_through_a_symlink_opens_the_file_sqlite_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made absolute by text ("link/../x.db" collapsed to "x.db"), the path named another,
    empty file than the one SQLite opens, which follows the link first."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "link").symlink_to(tmp_path / "real" / "sub")
    with contextlib.closing(sqlite3.connect(tmp_path / "real" / "old.db")) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (7)")
        conn.commit()
    monkeypatch.chdir(tmp_path / "a")
    store = open_store("sqlite:///link/../old.db")
    try:
        with store.transaction(write=False) as tx:
            assert tx.one("SELECT x FROM t") == (7,)
    finally:
        store.close()
    assert not (tmp_path / "a" / "old.db").exists()


def test_commit_on_normal_exit(store: Store) -> None:
    with store.transaction() as tx:
        tx.execute("INSERT INTO kv (k, v) VALUES (?, ?)", ("a", 1))
    assert _keys(store) == ["a"]
    # Visible to another connection too, so it really was committed.
    other = open_store(store.url)
    try:
        with other.transaction(write=False) as tx:
            assert tx.one("SELECT v FROM kv WHERE k = ?", ("a",)) == (1,)
    finally:
        other.close()


def test_rollback_on_exception(store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction() as tx:
        tx.execute("INSERT INTO kv (k, v) VALUES (?, ?)", ("a", 1))
        tx.execute("UPDATE kv SET v = 2")
        raise Boom
    assert _keys(store) == []
    with store.transaction() as tx:  # the store is usable afterwards
        tx.execute("INSERT INTO kv (k, v) VALUES (?, ?)", ("b", 1))
    assert _keys(store) == ["b"]


def test_unique_violation_is_conflict_and_rolls_back_everything(store: Store) -> None:
    with store.transaction() as tx:
        tx.execute("INSERT INTO kv (k, v) VALUES (?, ?)", ("dup", 1))
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.execute("INSERT INTO kv (k, v) VALUES (?, ?)", ("fresh", 1))
        tx.execute("UPDATE kv SET v = 99 WHERE k = ?", ("dup",))
        tx.execute("INSERT INTO kv (k, v) VALUES (?, ?)", ("dup", 2))
    with store.transaction(write=False) as tx:
        assert tx.all("SELECT k, v FROM kv ORDER BY k") == [("dup", 1)]
    with store.transaction() as tx:  # the connection is clean again
        assert tx.execute("INSERT INTO kv (k, v) VALUES (?, ?)", ("fresh", 3)) == 1
    assert _keys(store) == ["dup", "fresh"]


def test_on_conflict_do_nothing_is_not_a_conflict(store: Store) -> None:
    sql = "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING"
    with store.transaction() as tx:
        assert tx.execute(sql, ("a", 1)) == 1
        assert tx.execute(sql, ("a", 2)) == 0
        assert tx.one("SELECT v FROM kv WHERE k = 'a'") == (1,)


def test_other_database_errors_roll_back_and_propagate(store: Store) -> None:
    with pytest.raises(Exception) as info, store.transaction() as tx:
        tx.execute("INSERT INTO kv (k, v) VALUES (?, ?)", ("a", 1))
        tx.execute("INSERT INTO kv (k, v) VALUES (?, ?)", ("b", None))  # NOT NULL
    assert not isinstance(info.value, (Conflict, StoreUnavailable))
    assert _keys(store) == []


def test_one_all_many_execute(store: Store) -> None:
    with store.transaction() as tx:
        tx.many("INSERT INTO kv (k, v) VALUES (?, ?)", [("a", 1), ("b", 2), ("c", BIG)])
        tx.many("INSERT INTO kv (k, v) VALUES (?, ?)", [])
        assert tx.one("SELECT v FROM kv WHERE k = ?", ("c",)) == (BIG,)
        assert tx.one("SELECT v FROM kv WHERE k = ?", ("zzz",)) is None
        assert tx.all("SELECT k, v FROM kv WHERE v < ? ORDER BY k", (BIG,)) == [("a", 1), ("b", 2)]
        assert tx.all("SELECT k FROM kv WHERE k = 'zzz'") == []
        assert tx.execute("UPDATE kv SET v = v + ? WHERE v < ?", (10, 100)) == 2
        assert tx.execute("UPDATE kv SET v = 0 WHERE k = 'zzz'") == 0
        assert tx.execute("DELETE FROM kv WHERE k IN (?, ?)", ("a", "zzz")) == 1
        row = tx.one("INSERT INTO kv (k, v) VALUES (?, ?) RETURNING k, v", ("d", 4))
        assert row == ("d", 4)
    with store.transaction(write=False) as tx:
        rows = tx.all("SELECT k, v FROM kv ORDER BY k")
    assert rows == [("b", 12), ("c", BIG), ("d", 4)]
    assert all(isinstance(r, tuple) and type(r[1]) is int for r in rows)


def test_values_round_trip_as_in_sqlite(store: Store) -> None:
    with store.transaction() as tx:
        tx.execute(
            "CREATE TABLE vals (id INTEGER PRIMARY KEY, amount BIGINT, at DOUBLE PRECISION,"
            " flag INTEGER, label TEXT)"
        )
        tx.execute(
            "INSERT INTO vals VALUES (?, ?, ?, ?, ?)", (1, BIG, 1700000000.25, True, "100% ok")
        )
        tx.execute("INSERT INTO vals VALUES (?, ?, ?, ?, ?)", (2, 3, 0.5, False, None))
        row = tx.one("SELECT id, amount, at, flag, label FROM vals WHERE id = 1")
        assert row == (1, BIG, 1700000000.25, 1, "100% ok")
        assert [type(v) for v in row] == [int, int, float, int, str]
        assert tx.one("SELECT flag, label FROM vals WHERE id = ?", (2,)) == (0, None)
        # Aggregates of money stay exact integers (PostgreSQL's SUM(bigint) is numeric).
        total = tx.one("SELECT SUM(amount), COUNT(*), MAX(amount) FROM vals")
        assert total == (BIG + 3, 2, BIG)
        assert all(type(v) is int for v in total)  # type: ignore[union-attr]
        # A literal % and parameters side by side; two small ints added server-side.
        assert tx.one("SELECT '5%', ? + ?", (30000, 30000)) == ("5%", 60000)


def test_sums_past_64_bits_are_exact_integers(store: Store) -> None:
    """SQLite's SUM raises past 2**63 - 1; the store sums exactly there, as PostgreSQL does."""
    top = 2**63 - 1
    with store.transaction() as tx:
        tx.execute("CREATE TABLE big (k TEXT, amount BIGINT NOT NULL)")
        tx.many("INSERT INTO big VALUES (?, ?)", [("a", top), ("a", top), ("b", 5)])
        assert tx.one("SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM big") == (2 * top + 5, 3)
        grouped = tx.all("SELECT k, SUM(amount), SUM(amount - 1) FROM big GROUP BY k ORDER BY k")
        assert grouped == [("a", 2 * top, 2 * top - 2), ("b", 5, 4)]
        assert all(type(v) is int for row in grouped for v in row[1:])
        assert tx.one("SELECT SUM(amount) FROM big WHERE k = 'none'") == (None,)


def test_large_amount_comparisons(store: Store) -> None:
    """The Core's headroom check with amounts far beyond 2**31."""
    with store.transaction() as tx:
        tx.execute(
            "CREATE TABLE pos (a TEXT PRIMARY KEY, credit_limit BIGINT NOT NULL,"
            " locked BIGINT NOT NULL, pending_withdrawal BIGINT NOT NULL)"
        )
        tx.execute("INSERT INTO pos VALUES (?, ?, ?, ?)", ("u", 5 * 10**15, 2**40, 3 * 2**32))
    headroom = 5 * 10**15 - 2**40 - 3 * 2**32
    lock = (
        "UPDATE pos SET locked = locked + ?"
        " WHERE a = ? AND credit_limit - locked - pending_withdrawal >= ?"
    )
    with store.transaction() as tx:
        assert tx.execute(lock, (headroom + 1, "u", headroom + 1)) == 0
        assert tx.execute(lock, (headroom, "u", headroom)) == 1
        assert tx.execute(lock, (1, "u", 1)) == 0
        assert tx.one("SELECT locked FROM pos") == (2**40 + headroom,)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_a_sqlite_connection_closes_when_its_thread_ends(sqlite_url: str) -> None:
    """Every connection ever opened was kept until ``close()``: a server that runs each request
    on a thread (or greenlet) of its own (Django under ASGI with a sync middleware, gevent
    workers, a development server) left one open per request that touched the Core — two
    file descriptors and its page cache each — until the process ran out of descriptors
    and every payment failed 503. Unpaid requests (a guarantee read) were enough."""
    store = open_store(sqlite_url)
    with store.transaction() as tx:
        tx.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)")
    path = os.path.realpath(sqlite_url)

    def descriptors() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd).startswith(path))

    def read() -> None:
        with store.transaction(write=False) as tx:
            assert tx.one("SELECT COUNT(*) FROM kv") == (0,)

    before = descriptors()
    for _ in range(40):
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    assert descriptors() <= before + 2  # one more connection's at most, not forty
    read()  # this thread's own connection still serves it
    store.close()


def test_each_thread_has_its_own_connection_and_no_update_is_lost(store: Store) -> None:
    with store.transaction() as tx:
        tx.execute("INSERT INTO kv (k, v) VALUES ('n', 0)")
    threads, rounds = 16, 25
    backends: set[int] = set()
    started = threading.Barrier(threads)

    def work(i: int) -> None:
        if store.dialect == "postgres":
            with store.transaction(write=False) as tx:
                row = tx.one("SELECT pg_backend_pid()")
                assert row is not None
                backends.add(row[0])
            started.wait(timeout=30)  # all sixteen connections open at once
        for _ in range(rounds):
            with store.transaction() as tx:
                assert tx.execute("UPDATE kv SET v = v + 1 WHERE k = 'n'") == 1

    _in_threads(threads, work)
    with store.transaction(write=False) as tx:
        assert tx.one("SELECT v FROM kv WHERE k = 'n'") == (threads * rounds,)
    if store.dialect == "postgres":
        assert len(backends) == threads
        # A thread's connection closes when the thread ends: only ours is left.
        sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
        for _ in range(50):
            with store.transaction(write=False) as tx:
                if tx.one(sql) == (1,):
                    break
            time.sleep(0.1)
        else:
            pytest.fail("the threads' connections stayed open")


# --- migrations ----------------------------------------------------------------------------


def _tables(store: Store) -> set[str]:
    sql = (
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if store.dialect == "sqlite"
        else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    )
    with store.transaction(write=False) as tx:
        return {row[0] for row in tx.all(sql) if row[0].startswith("fx_")}


def test_nowait_never_waits(store: Store, store_url: str) -> None:
    """``nowait`` runs at once or raises WouldBlock having done nothing (event-loop safe)."""
    if store.dialect == "postgres":
        with pytest.raises(WouldBlock), store.transaction(nowait=True):
            pass  # pragma: no cover - never entered
        return
    with store.transaction(nowait=True) as tx:  # nobody in the way: it runs
        tx.execute("INSERT INTO kv (k, v) VALUES ('a', 1)")
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.transaction() as tx:
            tx.execute("UPDATE kv SET v = 2 WHERE k = 'a'")
            held.set()
            assert release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert held.wait(10)
    began = time.monotonic()
    with pytest.raises(WouldBlock), store.transaction(nowait=True) as tx:
        tx.execute("UPDATE kv SET v = 3 WHERE k = 'a'")  # pragma: no cover - never entered
    assert time.monotonic() - began < 0.5
    release.set()
    thread.join(10)
    # Another process (here: another connection) holding SQLite's own write lock.
    other = sqlite3.connect(store_url, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    began = time.monotonic()
    with pytest.raises(WouldBlock), store.transaction(nowait=True):
        pass  # pragma: no cover - never entered
    assert time.monotonic() - began < 0.5  # not the 30 s busy timeout
    other.execute("ROLLBACK")
    other.close()
    with store.transaction(write=False) as tx:
        assert tx.one("SELECT v FROM kv WHERE k = 'a'") == (2,)
    # A waiting transaction still waits, past its polling second, on SQLite's busy timeout
    # (the nowait writers before it left the connection's timeout at 0).
    other = sqlite3.connect(store_url, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    letgo = threading.Timer(1.5, lambda: other.execute("ROLLBACK"))
    letgo.start()
    began = time.monotonic()
    with store.transaction() as tx:
        tx.execute("UPDATE kv SET v = 4 WHERE k = 'a'")
    assert time.monotonic() - began >= 1.4
    letgo.join(10)
    other.close()


def test_steady_writes_still_let_the_log_start_over(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints beside steady writers never catch up; past a size one holds them back."""
    import fourmica_x402.core.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_RESTART_AFTER", 300)
    store = open_store(sqlite_url)
    try:
        with store.transaction() as tx:
            tx.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        for i in range(3000):  # ~9 000 log pages if the log never started over
            with store.transaction() as tx:
                tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", (i, "x" * 3000))
        probe = sqlite3.connect(sqlite_url, isolation_level=None)
        for _ in range(200):  # bounded: until the background checkpointer is done
            busy, frames, _ = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy == 0:
                break
            time.sleep(0.02)
        probe.close()
        assert busy == 0 and store.checkpoints >= 1
        assert 0 <= frames < 6000, frames
    finally:
        store.close()


def test_a_writer_polls_for_another_process_lock_in_short_steps(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's busy handler sleeps up to 100 ms a try; the lock is held for ~0.2 ms."""
    import fourmica_x402.core.store.sqlite as sqlite_store

    store = open_store(sqlite_url)
    try:
        with store.transaction() as tx:
            tx.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        other = sqlite3.connect(sqlite_url, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another process's writer
        sleeps: list[float] = []
        real_sleep = time.sleep

        def recording_sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 20:
                other.execute("COMMIT")  # the other writer finishes while we poll
            real_sleep(seconds)

        monkeypatch.setattr(sqlite_store.time, "sleep", recording_sleep)
        with store.transaction() as tx:
            tx.execute("INSERT INTO t (k) VALUES (1)")
        other.close()
        assert 20 <= len(sleeps) <= 21 and max(sleeps) <= 0.001
    finally:
        store.close()


def test_commits_are_checkpointed_in_the_background(sqlite_url: str) -> None:
    """Commits skip SQLite's inline checkpoint (it syncs the disk); a background one runs
    every so many of them, so the log still starts over."""
    store = open_store(sqlite_url)
    try:
        with store.transaction() as tx:
            tx.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        db_file = Path(sqlite_url)
        for i in range(99):
            with store.transaction(nowait=True) as tx:
                tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", (i, "x" * 3000))
        # No commit checkpointed inline: the rows are in the log only, the file is still small.
        assert store.checkpoints == 0 and db_file.stat().st_size < 100_000
        with store.transaction(nowait=True) as tx:  # the 100th wakes the checkpointer, once
            tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", (99, "x" * 3000))
        for _ in range(1000):  # bounded: the checkpointer runs on its own thread
            if store.checkpoints == 1:
                break
            time.sleep(0.01)
        assert store.checkpoints == 1
        # ...and it copied the log back into the database file (~300 kB of rows).
        assert db_file.stat().st_size > 250_000
    finally:
        store.close()


def test_a_checkpointer_that_could_not_open_its_connection_tries_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The background checkpointer's first connection failed (too many open files, the
    directory briefly unreachable): the exception ended its thread, with a traceback, and the
    process never checkpointed again, so the log grew without bound."""
    from fourmica_x402.core.store.sqlite import SQLiteStore

    class Flaky(SQLiteStore):
        failed = False

        def _connection(self) -> sqlite3.Connection:
            if threading.current_thread().name == "fourmica-checkpoint" and not self.failed:
                Flaky.failed = True
                raise StoreUnavailable("cannot open SQLite database: unable to open (injected)")
            return super()._connection()

    store = Flaky(str(tmp_path / "x.db"))
    try:
        with store.transaction() as tx:
            tx.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        for i in range(200):  # two checkpoints' worth of commits: the first one fails
            with store.transaction() as tx:
                tx.execute("INSERT INTO t (k) VALUES (?)", (i,))
            if i == 99:
                for _ in range(500):  # bounded: the checkpointer runs on its own thread
                    if Flaky.failed:
                        break
                    time.sleep(0.01)
        for _ in range(500):
            if store.checkpoints:
                break
            time.sleep(0.01)
        assert Flaky.failed and store.checkpoints == 1
        assert "Traceback" not in capsys.readouterr().err
    finally:
        store.close()


def test_migrate_fresh_database_and_again(store_url: str) -> None:
    store = open_store(store_url)
    try:
        assert schema_version(store) == 0
        assert migrate(store) == SCHEMA_VERSION
        assert schema_version(store) == SCHEMA_VERSION
        tables = _tables(store)
        assert {"fx_meta", "fx_positions", "fx_guarantees", "fx_cycles", "fx_withdrawals"} <= tables
        assert migrate(store) == SCHEMA_VERSION  # idempotent
        assert _tables(store) == tables
    finally:
        store.close()


def test_a_database_newer_than_the_code_is_refused_not_written(store_url: str) -> None:
    """A database a newer release migrated was opened and written as if it were this
    release's: its tables may mean what this code cannot know."""
    from fourmica_x402.core import Core
    from fourmica_x402.errors import ConfigurationError

    store = open_store(store_url)
    try:
        migrate(store)
        with store.transaction() as tx:
            tx.execute("UPDATE fx_meta SET value = ? WHERE key = 'schema_version'", ("999",))
        with pytest.raises(ConfigurationError, match="newer than this version"):
            migrate(store)
        with pytest.raises(ConfigurationError, match="upgrade the package"):
            Core(store_url)
    finally:
        store.close()


@pytest.mark.parametrize("key", ["prices_schema_version", "jobs_schema_version"])
def test_a_gate_on_tables_a_newer_release_migrated_writes_nothing_before_refusing(
    key: str, tmp_path: Path
) -> None:
    """A gate labelled the payments a dead process left (its start-up recovery) and only then
    found the price book or the jobs migrated by a newer release: an older release rolled back
    onto the database wrote records whose meaning it may not know, then refused to start."""
    from fourmica_x402 import PaymentConfig
    from fourmica_x402.errors import ConfigurationError
    from fourmica_x402.gate import Gate
    from fourmica_x402.jobs import Stage

    db = str(tmp_path / "c.db")
    routes = {"GET /p": "$0.01", "POST /job": {"price": "$0.01", "stage": Stage("job", 1, of=1)}}

    def config() -> PaymentConfig:
        return PaymentConfig(pay_to="0x" + "22" * 20, core=db, routes=routes, settle="after")

    gate = Gate(config())
    try:  # a settle-after request whose process died in its handler
        gate.records.begin(
            route="GET /p", method="GET", path="/p", header_version=2, header_hash="ab" * 32,
            pay_to="0x" + "22" * 20, amount=10_000, asset="0x" + "33" * 20,
            network="eip155:84532", settle_mode="after", settle_result="{}", status="verified",
            request_id="0x1", tab_id="0x2",
        )  # fmt: skip
        with gate.records.store.transaction() as tx:
            tx.execute("UPDATE fx_meta SET value = '99' WHERE key = ?", (key,))
    finally:
        gate.records.store.close()
        gate.core.close()  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match=f"{key} 99, newer"):
        Gate(config())
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status, outcome FROM fx_records").fetchall() == [
            ("verified", None)
        ]
        assert conn.execute("SELECT COUNT(*) FROM fx_followups").fetchone() == (0,)


def test_old_database_upgrades_with_its_data(store_url: str) -> None:
    store = open_store(store_url)
    try:
        assert migrate(store, target=1) == 1
        assert "fx_withdrawals" not in _tables(store)
        with store.transaction() as tx:
            tx.execute(
                "INSERT INTO fx_positions (network, asset, address, collateral, credit_limit)"
                " VALUES (?, ?, ?, ?, ?)",
                ("eip155:84532", "0xusdc", "0xbuyer", BIG, 10**12),
            )
    finally:
        store.close()
    store = open_store(store_url)  # a later start of the application
    try:
        assert migrate(store) == SCHEMA_VERSION
        assert "fx_withdrawals" in _tables(store)
        with store.transaction(write=False) as tx:
            assert tx.all("SELECT address, collateral, credit_limit, locked FROM fx_positions") == [
                ("0xbuyer", BIG, 10**12, 0)
            ]
    finally:
        store.close()


def test_pairwise_matrix_keeps_its_rows_when_clustered(store_url: str) -> None:
    store = open_store(store_url)
    try:
        assert migrate(store, target=3) == 3
        with store.transaction() as tx:
            tx.many(
                "INSERT INTO fx_cycle_pairs (cycle_id, payer, payee, amount, guarantee_count) "
                "VALUES (?, ?, ?, ?, ?)",
                [(1, "0xa", "0xb", 20, 2), (1, "0xb", "0xa", 7, 1), (2, "0xa", "0xc", BIG, 1)],
            )
        assert migrate(store) == SCHEMA_VERSION
        with store.transaction(write=False) as tx:
            rows = tx.all("SELECT * FROM fx_cycle_pairs ORDER BY cycle_id, payer, payee")
            clustered = (
                tx.one("SELECT sql FROM sqlite_master WHERE name = 'fx_cycle_pairs'")
                if store.dialect == "sqlite"
                else None
            )
        assert rows == [
            (1, "0xa", "0xb", 20, 2),
            (1, "0xb", "0xa", 7, 1),
            (2, "0xa", "0xc", BIG, 1),
        ]
        if clustered is not None:  # SQLite: one b-tree on the key (PostgreSQL keeps its heap)
            assert "WITHOUT ROWID" in clustered[0]
        with pytest.raises(Conflict), store.transaction() as tx:
            tx.execute(
                "INSERT INTO fx_cycle_pairs (cycle_id, payer, payee, amount, guarantee_count) "
                "VALUES (1, '0xa', '0xb', 1, 1)"
            )
    finally:
        store.close()


def _guarantee_indexes(store: Store) -> dict[str, str]:
    sql = (
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'fx_guarantees'"
        " AND sql IS NOT NULL"
        if store.dialect == "sqlite"
        else "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'fx_guarantees' "
        "AND schemaname = current_schema()"
    )
    with store.transaction(write=False) as tx:
        return {name: " ".join(str(text).split()) for name, text in tx.all(sql)}


def test_guarantee_indexes_leave_out_what_no_read_needs(store_url: str) -> None:
    """Each index on the guarantees is a page written per acceptance: the payer-only index
    (no read uses it) is gone, and the cycle index holds only guarantees in a cycle."""
    store = open_store(store_url)
    columns = (
        "tab_id, req_id, guarantee_id, network, asset, user_address, recipient_address, "
        "amount, total_amount, ts, version, state, accepted_at, cycle_id, claims, signature, "
        "scheme"
    )
    try:
        assert migrate(store, target=6) == 6
        assert {"fx_guarantees_user", "fx_guarantees_cycle"} <= set(_guarantee_indexes(store))
        with store.transaction() as tx:
            tx.many(
                f"INSERT INTO fx_guarantees ({columns}) VALUES "
                "(?, ?, ?, 'n', 'a', ?, '0xs', 5, 5, 1, 2, ?, 1.0, ?, '{}', '0x', 'eip712')",
                [
                    ("0x1", "0x0", "0xg0", "0xa", "payable", 1),
                    ("0x1", "0x1", "0xg1", "0xa", "pending_validation", None),
                    ("0x2", "0x0", "0xg2", "0xb", "payable", 1),
                ],
            )
        assert migrate(store) == SCHEMA_VERSION
        indexes = _guarantee_indexes(store)
        assert "fx_guarantees_user" not in indexes
        assert "WHERE" in indexes["fx_guarantees_cycle"]  # partial: cycle_id IS NOT NULL
        assert "cycle_id IS NOT NULL" in indexes["fx_guarantees_cycle"].replace("(", "").replace(
            ")", ""
        )
        with store.transaction() as tx:  # the reads by cycle still find their rows
            tx.execute(
                "UPDATE fx_guarantees SET cycle_id = ? WHERE cycle_id = ? AND user_address = ? "
                "AND recipient_address = ?",
                (2, 1, "0xa", "0xs"),
            )
            by_cycle = tx.all(
                "SELECT cycle_id, COUNT(*) FROM fx_guarantees WHERE cycle_id IS NOT NULL "
                "GROUP BY cycle_id ORDER BY cycle_id"
            )
            plan = (
                " ".join(
                    str(r[-1])
                    for r in tx.all(
                        "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM fx_guarantees "
                        "WHERE cycle_id = ? AND user_address = ?",
                        (1, "0xb"),
                    )
                )
                if store.dialect == "sqlite"
                else None
            )
        assert by_cycle == [(1, 1), (2, 1)]
        if plan is not None:  # SQLite proves cycle_id = ? implies the index's condition
            assert "fx_guarantees_cycle" in plan
    finally:
        store.close()


def test_the_tabs_count_their_guarantees_from_the_migration_on(store_url: str) -> None:
    """The per-seller signals read each tab's count of guarantees: a database upgraded with
    guarantees already stored gets their counts, and the listing's index."""
    store = open_store(store_url)
    try:
        assert migrate(store, target=7) == 7
        with store.transaction() as tx:
            tx.many(
                "INSERT INTO fx_tabs (tab_id, user_address, recipient_address, network, asset, "
                "guarantee_version, start_ts, ttl, next_req_id, total_amount) "
                "VALUES (?, ?, '0xs', 'n', 'a', 1, 1, 100, 2, ?)",
                [("0x1", "0xa", 10), ("0x2", "0xb", 5), ("0x3", "0xa", 0)],
            )
            tx.many(
                "INSERT INTO fx_guarantees (tab_id, req_id, guarantee_id, network, asset, "
                "user_address, recipient_address, amount, total_amount, ts, version, state, "
                "accepted_at, claims, signature, scheme) VALUES "
                "(?, ?, ?, 'n', 'a', ?, '0xs', 5, 5, 1, 1, 'payable', 1.0, '{}', '0x', 'eip712')",
                [
                    ("0x1", "0x0", "0xg0", "0xa"),
                    ("0x1", "0x1", "0xg1", "0xa"),
                    ("0x2", "0x0", "0xg2", "0xb"),
                ],
            )
            tx.execute(
                "INSERT INTO fx_cycles (network, asset, status, opened_at, closes_at) "
                "VALUES ('n', 'a', 'final', 0, 1), ('n', 'a', 'closed', 1, 2), ('n', 'a', 'open', 2, 3)"
            )
            tx.many(
                "INSERT INTO fx_cycle_pairs (cycle_id, payer, payee, amount, guarantee_count) "
                "VALUES (?, ?, '0xs', 5, ?)",
                [(1, "0xa", 2), (1, "0xb", 1), (2, "0xa", 4), (3, "0xb", 9)],
            )
        assert migrate(store) == SCHEMA_VERSION
        assert "fx_guarantees_recent" in _guarantee_indexes(store)
        with store.transaction(write=False) as tx:
            counts = tx.all("SELECT tab_id, guarantee_count FROM fx_tabs ORDER BY tab_id")
        assert [(t, int(c)) for t, c in counts] == [("0x1", 2), ("0x2", 1), ("0x3", 0)]
        with store.transaction(write=False) as tx:
            totals = tx.all("SELECT payee, cycles, payers, guarantees FROM fx_seller_cycles")
        assert [(p, *map(int, n)) for p, *n in totals] == [("0xs", 2, 3, 7)]  # not the open one
    finally:
        store.close()


def test_audit_names_each_drifted_count_and_only_it(store_url: str) -> None:
    """The per-seller signals read counts kept beside the history (each tab's, each seller's
    closed-cycle totals): one that drifted from the guarantees or pairs is a problem of its
    own, naming that tab or seller alone (a book has thousands of sellers)."""
    from fourmica_x402.core import Core
    from fourmica_x402.testing import NETWORK, FakeClock, TestBuyer

    core = Core(store_url, clock=FakeClock(1_800_000_000))
    try:
        buyer, sellers = TestBuyer.new(), [TestBuyer.new().address for _ in range(3)]
        core.deposit(buyer.address, 10**9, network=NETWORK)
        tabs = [core.accept(*buyer.pay(core, s, 5)).tab_id for s in sellers]
        core.close_cycle(network=NETWORK)
        assert core.audit() == []
        with core.store.transaction() as tx:
            tx.execute("UPDATE fx_tabs SET guarantee_count = 2 WHERE tab_id = ?", (hex(tabs[0]),))
            tx.execute("UPDATE fx_seller_cycles SET guarantees = 3 WHERE payee = ?", (sellers[1],))
        problems = core.audit()
        assert len(problems) == 2, problems
        assert hex(tabs[0]) in problems[0] and sellers[1] in problems[1], problems
        assert not any(s in problems[1] for s in (sellers[0], sellers[2])), problems
        with core.store.transaction() as tx:  # a seller whose totals were never added
            tx.execute("DELETE FROM fx_seller_cycles WHERE payee = ?", (sellers[1],))
        assert [p for p in core.audit() if sellers[1] in p and sellers[0] not in p]
    finally:
        core.close()


def test_concurrent_migrations_are_safe(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(4)]  # as four processes would
    results: list[int] = []
    try:
        _in_threads(4, lambda i: results.append(migrate(stores[i])))
        assert results == [SCHEMA_VERSION] * 4
        assert schema_version(stores[0]) == SCHEMA_VERSION
        with stores[0].transaction(write=False) as tx:
            rows = tx.all("SELECT key, value FROM fx_meta")
        assert rows == [("schema_version", str(SCHEMA_VERSION))]
    finally:
        for s in stores:
            s.close()


# --- failures: fail closed, never leak a secret --------------------------------------------


def test_sqlite_in_a_missing_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable) as info:
        open_store(str(tmp_path / "no" / "such" / "dir" / "core.db"))
    assert info.value.status == 503
    assert "does not exist" in str(info.value)


def _as_unprivileged(fn: Callable[[], None]) -> None:
    """Run fn where file permissions apply: as nobody in a forked child when we are root."""
    if os.geteuid() != 0:
        fn()
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            fn()
            code = 0
        except BaseException as exc:
            os.write(write, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report


def test_read_only_sqlite_file_is_unavailable(
    environment_missing: Callable[[str], None],
) -> None:
    # Under the system temp dir, which every user can reach (pytest's tmp root is private).
    with tempfile.TemporaryDirectory() as name:
        directory = Path(os.path.realpath(name))
        for parent in directory.parents:
            if not parent.stat().st_mode & 0o001:
                environment_missing(f"{parent} is not reachable by other users")
        _read_only_sqlite_file_is_unavailable(directory)


def _read_only_sqlite_file_is_unavailable(directory: Path) -> None:
    directory.chmod(0o755)
    path = directory / "core.db"
    store = open_store(str(path))
    with store.transaction() as tx:
        tx.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)")
        tx.execute("INSERT INTO kv VALUES ('a', 1)")
    store.close()
    before = path.read_bytes()
    path.chmod(0o444)
    directory.chmod(0o555)
    try:

        def write() -> None:
            with pytest.raises(StoreUnavailable) as info:
                ro = open_store(str(path))
                with ro.transaction() as tx:
                    tx.execute("INSERT INTO kv VALUES ('b', 2)")
            assert info.value.status == 503
            assert "readonly" in str(info.value) or "read-only" in str(info.value)

        _as_unprivileged(write)
    finally:
        directory.chmod(0o755)
        path.chmod(0o644)
    assert path.read_bytes() == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_postgres_is_unavailable_and_keeps_the_password_secret() -> None:
    pytest.importorskip("psycopg")
    password = "s3cret-Pa55word"
    url = f"postgresql://fx_user:{password}@127.0.0.1:{_closed_port()}/core"
    with pytest.raises(StoreUnavailable) as info:
        open_store(url, connect_timeout=2)
    error = info.value
    rendered = error.render()[2].decode()
    for text in (str(error), repr(error), rendered):
        assert password not in text
    assert "127.0.0.1" in str(error)
    assert error.status == 503
    assert error.__cause__ is None and error.__suppress_context__


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://fx_user:s3cr%t!pw@127.0.0.1/core",  # a bare % the driver cannot read
        "postgresql://fx user:s3cr%t!pw@127.0.0.1/core",
        "postgresql://fx_user@127.0.0.1/core?password=s3cr%t!pw",
    ],
)
def test_a_url_the_driver_cannot_parse_never_repeats_its_password(url: str) -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(StoreUnavailable) as info:
        open_store(url, connect_timeout=2)
    assert "s3cr" not in str(info.value) and "invalid PostgreSQL URL" in str(info.value)


def test_a_short_password_is_masked_without_mangling_the_message() -> None:
    """A password "p" used to turn every "p" of the message into "***" ("***ort")."""
    pytest.importorskip("psycopg")
    url = f"postgresql://fx_user:p@127.0.0.1:{_closed_port()}/core"
    with pytest.raises(StoreUnavailable) as info:
        open_store(url, connect_timeout=2)
    text = str(info.value)
    assert "***ort" not in text and "fx_user:p@" not in text
    assert "PostgreSQL" in text and "127.0.0.1" in text


@pytest.mark.postgres
def test_wrong_postgres_password_is_unavailable_without_the_password(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    password = "n0t-the-Right-one"
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    with pytest.raises(StoreUnavailable) as info:
        open_store(urlunsplit(parts._replace(netloc=netloc)))
    assert password not in str(info.value)
    assert "password authentication failed" in str(info.value)


# --- PostgreSQL specifics ------------------------------------------------------------------


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Store]:
    s = open_store(postgres_url)
    yield s
    s.close()


TERMINATE = "SELECT pg_terminate_backend(CAST(? AS INTEGER), 5000)"  # waits up to 5 s


def _backend(store: Store) -> int:
    with store.transaction(write=False) as tx:
        row = tx.one("SELECT pg_backend_pid()")
    assert row is not None
    return int(row[0])


@pytest.mark.postgres
def test_postgres_repr_hides_the_password(pg: Store) -> None:
    password = urlsplit(pg.url).password
    assert password and password not in repr(pg)
    assert "postgresql://" in repr(pg)


def test_a_payment_configs_repr_hides_its_database_passwords() -> None:
    """A repr reaches debuggers and error reports: the database URLs show without their
    password, as the store's own repr does, and the tokens not at all."""
    from fourmica_x402 import PaymentConfig

    config = PaymentConfig(
        routes={"GET /p": "$0.01"},
        pay_to="0x" + "22" * 20,
        core="postgresql://app:Sup3r-S3cret@db.example/shop",
        records="postgresql://app@db.example/records?sslmode=require&password=Rec0rd-S3cret",
        admin_token="Adm1n-T0ken",
    )
    shown = repr(config)
    for secret in ("Sup3r-S3cret", "Rec0rd-S3cret", "Adm1n-T0ken"):
        assert secret not in shown, shown
    assert "core='postgresql://app:***@db.example/shop'" in shown
    assert "password=***" in shown and "pay_to='0x2222" in shown
    assert config.core == "postgresql://app:Sup3r-S3cret@db.example/shop"  # kept to connect


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ({"completion_window": "x"}, "completion_window must be a number of seconds"),
        ({"price_poll": "1"}, "price_poll must be a number of seconds"),
        ({"throttle_window": float("nan")}, "throttle_window must be a number"),
        ({"throttle_failures": 2.5}, "throttle_failures must be a whole number"),
        ({"tab_ttl_seconds": "3600"}, "tab_ttl_seconds must be a whole number"),
        ({"paywall": "no"}, "paywall must be True or False"),
        ({"routes": [("GET /p", "$1")]}, "routes must be a mapping"),
        ({"core": 5}, "core must be a database URL or a Core"),
        ({"records": 5}, "records must be a database URL or a Records"),
    ],
)
def test_a_payment_config_names_an_option_of_the_wrong_kind(
    option: dict[str, Any], named: str, tmp_path: Path
) -> None:
    """A wrong kind was a TypeError or AttributeError from deep inside (or, for price_poll,
    accepted and then failing on a request): it is named when the config is built."""
    from fourmica_x402 import PaymentConfig
    from fourmica_x402.errors import ConfigurationError

    given: dict[str, Any] = {"routes": {"GET /p": "$0.01"}, "core": str(tmp_path / "c.db")}
    with pytest.raises(ConfigurationError, match=named):
        PaymentConfig(pay_to="0x" + "22" * 20, **{**given, **option})


def test_a_payment_config_takes_what_reads_plainly(tmp_path: Path) -> None:
    """The kind checks refuse what cannot work, not what reads plainly: whole floats, 0 and 1
    for flags, no routes, database paths; a path opens as the gate is built."""
    from fourmica_x402 import PaymentConfig
    from fourmica_x402.gate import Gate

    config = PaymentConfig(
        pay_to="0x" + "22" * 20,
        core=tmp_path / "c.db",
        records=tmp_path / "r.db",
        routes=None,  # type: ignore[arg-type]
        tab_ttl_seconds=3600.0,  # type: ignore[arg-type]
        replay_body_limit=262144.0,  # type: ignore[arg-type]
        paywall=0,  # type: ignore[arg-type]
    )
    assert (config.tab_ttl_seconds, config.replay_body_limit, config.routes) == (3600, 262144, {})
    assert config.core == str(tmp_path / "c.db") and config.records == str(tmp_path / "r.db")
    gate = Gate(config)
    try:
        assert (tmp_path / "c.db").exists() and (tmp_path / "r.db").exists()
    finally:
        gate.records.store.close()
        gate.core.close()  # type: ignore[union-attr]


@pytest.mark.postgres
def test_postgres_reconnects_after_the_server_dropped_the_connection(pg: Store) -> None:
    first = _backend(pg)
    killer = open_store(pg.url)
    try:
        with killer.transaction() as tx:
            assert tx.one(TERMINATE, (first,)) == (True,)
    finally:
        killer.close()
    assert _backend(pg) != first  # a new connection, no error for the caller


@pytest.mark.postgres
def test_postgres_connection_lost_mid_transaction_is_unavailable(pg: Store) -> None:
    first = _backend(pg)
    killer = open_store(pg.url)
    try:
        with pytest.raises(StoreUnavailable), pg.transaction() as tx:
            with killer.transaction() as ktx:
                assert ktx.one(TERMINATE, (first,)) == (True,)
            tx.one("SELECT 1")
    finally:
        killer.close()
    assert _backend(pg) != first


@pytest.mark.postgres
def test_postgres_nested_transaction_is_refused(pg: Store) -> None:
    with pg.transaction() as tx:
        tx.execute("CREATE TABLE t (a INTEGER)")
    with pytest.raises(RuntimeError, match="nested"), pg.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        with pg.transaction():
            pass
    with pg.transaction(write=False) as tx:
        assert tx.all("SELECT a FROM t") == []


@pytest.mark.postgres
def test_postgres_caught_error_in_write_transaction_is_not_committed(pg: Store) -> None:
    with pg.transaction() as tx:
        tx.execute("CREATE TABLE t (a INTEGER PRIMARY KEY)")
    with pytest.raises(RuntimeError, match="rolled"), pg.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        with contextlib.suppress(Exception):
            tx.execute("INSERT INTO t VALUES (1)")  # aborts the transaction; SQLite would go on
    with pg.transaction(write=False) as tx:
        assert tx.all("SELECT a FROM t") == []


@pytest.mark.postgres
def test_postgres_refusing_a_value_is_the_callers_400_and_writes_nothing(pg: Store) -> None:
    """PostgreSQL refuses text holding U+0000 (SQLite keeps it): a value that got past the
    Core's checks is the request's 400 ``invalid_request``, never a 500, and nothing of its
    transaction is written."""
    with pg.transaction() as tx:
        tx.execute("CREATE TABLE t (a TEXT PRIMARY KEY)")
    for run in (
        lambda tx: tx.execute("INSERT INTO t VALUES (?)", ("a\x00",)),
        lambda tx: tx.one("SELECT a FROM t WHERE a = ?", ("a\x00",)),
        lambda tx: tx.many("INSERT INTO t VALUES (?)", [("b",), ("b\x00",)]),
    ):
        with pytest.raises(CoreError) as info, pg.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (?)", ("first",))
            run(tx)
        assert (info.value.status, info.value.reason) == (400, "invalid_request")
    with pg.transaction(write=False) as tx:
        assert tx.all("SELECT a FROM t") == []


@pytest.mark.postgres
def test_postgres_forked_child_leaves_the_parent_connection_alone(pg: Store) -> None:
    parent = _backend(pg)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read)
            child = _backend(pg)
            pg.close()  # must not end the parent's session
            os.write(write, str(child).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = int(pipe.read() or b"0")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child not in (0, parent)
    assert _backend(pg) == parent  # the same session, still alive


def test_importing_the_package_does_not_import_psycopg() -> None:
    code = (
        "import sys, fourmica_x402, fourmica_x402.core.store as s\n"
        "s.open_store(':memory:').close()\n"
        "assert 'psycopg' not in sys.modules, 'psycopg imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_psycopg_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['psycopg'] = None\n"
        "try:\n"
        "    import fourmica_x402.core.store.postgres\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert 'pip install "fourmica-x402[postgres]"' in out.stdout


def test_a_write_nested_in_a_write_on_one_thread_fails_at_once(sqlite_url: str) -> None:
    """A metered stream finalized by the garbage collector inside a write wrote again on the
    same thread and waited for its own lock forever (a CI run hung on it)."""
    store = open_store(sqlite_url)
    try:
        with store.transaction() as tx:
            tx.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            assert store.writing_here()
            with pytest.raises(RuntimeError, match="nest none"), store.transaction():
                pass  # pragma: no cover - never entered
        assert not store.writing_here()
        with store.transaction() as tx:  # the outer write committed; the lock is free
            assert tx.one("SELECT COUNT(*) FROM t") == (0,)
    finally:
        store.close()


def test_a_sqlite_url_with_a_query_is_refused_not_made_a_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sqlite:///x.db?mode=ro`` opened a new, empty database in a file named
    ``x.db?mode=ro``: the seller's collateral was not there, and nothing said why."""
    from fourmica_x402.errors import ConfigurationError

    monkeypatch.chdir(tmp_path)
    for url in ("sqlite:///x.db?mode=ro", "x.db?mode=ro"):
        with pytest.raises(ConfigurationError, match="no '\\?…' query"):
            open_store(url)
    assert list(tmp_path.iterdir()) == []


def _talking(code: str) -> subprocess.Popen[str]:
    """A Python process running ``code``, its stdin, stdout and stderr pipes of text."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_an_exit_waits_for_the_batch_the_flusher_is_writing(tmp_path: Path) -> None:
    """A clean exit flushed only what was still queued: a batch the flusher thread had taken,
    waiting for another process's write lock, ended with the interpreter, so a delivered
    response's completion was lost (its G-v2 payment cancelled: the seller never paid)."""
    db = tmp_path / "exit.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE marks (n INTEGER)")
    child = f"""
import sys, time
from fourmica_x402.core.store import open_store
from fourmica_x402.core.store.deferred import Task
store = open_store({f"sqlite:///{db}"!r})
print("ready", flush=True)
sys.stdin.readline()  # another process holds the write lock now
store.deferred.submit(Task(lambda tx: tx.execute("INSERT INTO marks VALUES (1)")))
for _ in range(500):  # the flusher takes the batch after its window, then waits for the lock
    if store.deferred._inflight:
        break
    time.sleep(0.01)
print("inflight", store.deferred._inflight, flush=True)
sys.exit(0)  # a graceful exit
"""
    proc = _talking(child)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        holder = sqlite3.connect(db, timeout=10, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "inflight 1"
        time.sleep(0.5)  # the child is in its exit now, the batch still waiting for the lock
        holder.execute("COMMIT")
        holder.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM marks").fetchone() == (1,)


def test_an_exit_waits_for_its_completions_no_longer_than_its_bound(tmp_path: Path) -> None:
    """The exit wrote the queue in the exiting thread, waiting for the database's locks as long
    as they were held (a SQLite lock held a minute: 62 s; a PostgreSQL row lock: for ever), and
    a server kills a worker that takes that long. It waits up to its bound, then says what it
    leaves (recovered as a crash's are)."""
    db = tmp_path / "held.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE marks (n INTEGER)")
    child = f"""
import sys, time
from fourmica_x402.core.store import deferred, open_store
deferred.EXIT_DRAIN = 1.0
store = open_store({f"sqlite:///{db}"!r})
print("ready", flush=True)
sys.stdin.readline()  # another process holds the write lock now, and keeps it
store.deferred.submit(deferred.Task(lambda tx: tx.execute("INSERT INTO marks VALUES (1)")))
store.deferred.submit(deferred.Task(lambda tx: tx.execute("INSERT INTO marks VALUES (2)")))
sys.exit(0)
"""
    proc = _talking(child)
    holder = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert time.monotonic() - started < 10  # 1 s of waiting, and the start-up
        assert "exiting with 2 completion(s) not committed" in err
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.postgres
def test_postgres_writes_with_every_statement_prepared(postgres_url: str) -> None:
    """``prepare_threshold=0`` (psycopg prepares every statement) is a connection option the
    store takes: a write's BEGIN, which also fetches its transaction id, is not one it can
    prepare, and must not fail every write."""
    store = open_store(postgres_url, prepare_threshold=0)
    try:
        with store.transaction() as tx:
            tx.execute("CREATE TABLE t (a INTEGER)")
            tx.execute("INSERT INTO t VALUES (?)", (1,))
        with store.transaction(write=False) as tx:
            assert tx.all("SELECT a FROM t") == [(1,)]
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_worker_checkpoints_although_its_parent_had_started_to(tmp_path: Path) -> None:
    """A store that had checkpointed in the parent (a preloading server's master) handed its
    dead checkpointer thread to the forked worker, which never started its own: commits never
    checkpoint inline, so the worker's write-ahead log grew without bound."""
    from fourmica_x402.core.store.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "x.db"))
    try:
        with store.transaction() as tx:
            tx.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        for i in range(100):
            with store.transaction() as tx:
                tx.execute("INSERT INTO t (k) VALUES (?)", (i,))
        for _ in range(500):  # bounded: the checkpointer runs on its own thread
            if store.checkpoints:
                break
            time.sleep(0.01)
        assert store.checkpoints == 1
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            done = 0
            try:
                for i in range(100, 300):
                    with store.transaction() as tx:
                        tx.execute("INSERT INTO t (k) VALUES (?)", (i,))
                for _ in range(200):
                    if store.checkpoints > 1:
                        break
                    time.sleep(0.01)
                done = store.checkpoints - 1
            finally:
                os.write(write, str(done).encode())
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as answer:
            checkpoints = int(answer.read() or "0")
        os.waitpid(pid, 0)
        assert checkpoints >= 1
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
@pytest.mark.parametrize("during", ["write", "read"])
def test_a_process_forked_during_another_threads_transaction_writes_and_checkpoints(
    tmp_path: Path, during: str
) -> None:
    """Another thread of the parent was inside a transaction when the process forked
    (``multiprocessing`` under a serving app, a preloading master whose flusher or checkpointer
    was at work). A write: the child inherited this process's writer lock held by a thread it
    does not have, and its first write waited for it forever (past it, SQLite's locks as the
    parent's connection held them in memory stayed taken: every write busy). A read: its
    snapshot stayed taken in the child, which could never checkpoint its log past it."""
    from fourmica_x402.core.store.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "x.db"))
    with store.transaction() as tx:
        tx.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with store.transaction(write=during == "write") as tx:
            tx.one("SELECT COUNT(*) FROM t")
            if during == "write":
                tx.execute("INSERT INTO t (k) VALUES (0)")
            inside.set()
            time.sleep(0.3)  # still inside as the process forks
        leave.wait(10)  # a thread still alive (not closing its connection as it forks)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert inside.wait(10)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            answer = "hung"
            try:
                signal.signal(signal.SIGALRM, lambda *_: os._exit(os.write(write, b"hung")))
                signal.alarm(5)  # bounded: a hang ends the child
                for k in range(1, 20):
                    with store.transaction() as tx:
                        tx.execute("INSERT INTO t (k) VALUES (?)", (k,))
                time.sleep(0.5)  # the parent's transaction is over by now in any case
                with store.transaction() as tx:  # this thread's connection, no transaction
                    pass
                busy = store._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                answer = "wrote" if busy[0] == 0 else f"checkpoint busy: {busy}"
            except BaseException as exc:
                answer = f"{type(exc).__name__}: {exc}"
            finally:
                os.write(write, answer.encode())
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            answer = pipe.read()
        os.waitpid(pid, 0)
        assert answer == "wrote"
    finally:
        leave.set()
        thread.join(10)
        store.close()
