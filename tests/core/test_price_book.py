"""The run-time price book under concurrent repricing (docs/operations.md, "Run-time prices")."""

from __future__ import annotations

import threading
import time

import pytest

from fourmica_x402.core.store import open_store
from fourmica_x402.gate.prices import PriceBook


@pytest.mark.postgres
def test_a_change_committed_after_a_later_one_is_not_missed_by_a_reader(postgres_url: str) -> None:
    """Two repricings at once on PostgreSQL: the first took change id 1 and committed after the
    second (id 2). A process that read the book between the two commits saw last id 2, and its
    polls compare that id only: the first change was never applied there, while processes that
    read later served it."""
    import psycopg

    store = open_store(postgres_url)
    try:
        book = PriceBook(store)
        with psycopg.connect(postgres_url, autocommit=True) as admin:  # the first one is slow
            admin.execute(
                "CREATE FUNCTION fx_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.route = 'GET /a' THEN PERFORM pg_sleep(1); END IF; RETURN NEW; END $$"
            )
            admin.execute(
                "CREATE TRIGGER fx_slow AFTER INSERT ON fx_prices FOR EACH ROW "
                "EXECUTE FUNCTION fx_slow()"
            )
        first = threading.Thread(target=book.set, args=({"GET /a": "$0.05"}, "one"))
        first.start()
        time.sleep(0.3)  # its row (id 1) is written, not committed
        book.set({"GET /b": "$0.07"}, source="two")
        seen, prices = book.current()  # a process reading the book now
        first.join(timeout=10)
        if book.latest() != seen:  # its next poll (Repricer._refresh)
            seen, prices = book.current()
        assert prices == {"GET /a": "$0.05", "GET /b": "$0.07"}
    finally:
        store.close()
