"""A seller upgrades the package under a live database: what an older release left is kept.

``tests/data/release_31295bb.json`` is a SQLite database written by that release's own code
(its schema: Core 6, records 6, jobs 1, prices 1), frozen as SQL: buyers' collateral, locks and
tabs, payments settled before and after the handler, failed and refunded ones, a closed cycle
and an open one, a pending withdrawal, a dispute, staged jobs at stage 1 of 2, and a paid
request whose process was killed (SIGKILL) in its handler.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402 import PaymentConfig, Stage
from fourmica_x402.core import Core
from fourmica_x402.core.schema import SCHEMA_VERSION
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

OLD = Path(__file__).parents[1] / "data" / "release_31295bb.json"
SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # the release's gate settling before
BUYER2 = TestBuyer.from_key("0x" + "44" * 32)  # the staged jobs' payer


#: When the frozen database was written; its times are moved to a minute ago when loaded.
FROZEN_AT = 1796664478
#: Its time columns (the guarantees' signed timestamps stay as they were signed).
TIMES = {
    "fx_tabs": ["start_ts"],
    "fx_guarantees": ["accepted_at", "resolved_at", "validation_deadline"],
    "fx_flows": ["at"],
    "fx_cycles": ["opened_at", "closes_at", "closed_at", "resolve_at", "pay_by", "final_at"],
    "fx_withdrawals": ["requested_at", "available_at", "finished_at"],
    "fx_records": ["created_at", "delivered_at"],
    "fx_disputes": ["at"],
    "fx_jobs": ["running_since", "created_at", "updated_at"],
    "fx_job_stages": ["at"],
}


def _old_database(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(OLD.read_text())
    shift = int(time.time()) - 60 - FROZEN_AT
    with sqlite3.connect(path) as conn:
        conn.executescript("\n".join(data["sql"]))
        for table, columns in TIMES.items():
            moved = ", ".join(f"{c} = {c} + {shift}" for c in columns)
            conn.execute(f"UPDATE {table} SET {moved}")
    conn.close()
    return data


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(sql).fetchall()
    conn.close()
    return rows


def _app(core: Core, pay_to: str = SELLER) -> Starlette:
    async def report(request: Request) -> JSONResponse:
        return JSONResponse(
            {"report": request.query_params.get("q", ""), "payer": request.state.payment.payer}
        )

    async def stage(request: Request) -> JSONResponse:
        return JSONResponse({"job": request.state.payment.job.id})

    routes = {
        "GET /report": "$0.01",
        "POST /job": {"price": "$0.01", "stage": Stage("job", 1, of=2)},
        "POST /job/2": {"price": "$0.02", "stage": Stage("job", 2, of=2)},
    }
    config = PaymentConfig(
        pay_to=pay_to, network=NETWORK, core=core, routes=routes, idempotent_replay=True
    )
    return Starlette(
        routes=[
            Route("/report", report),
            Route("/job", stage, methods=["POST"]),
            Route("/job/2", stage, methods=["POST"]),
        ],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )


def _pay(
    core: Core, client: TestClient, buyer: TestBuyer, path: str, headers: dict[str, str]
) -> Any:
    asked = client.post(path, headers=headers)
    assert asked.status_code == 402, asked.text
    req = decode_payment_required(asked.headers["payment-required"]).accepts[0]
    tab = core.open_tab(
        buyer.address, req.pay_to, network=NETWORK, asset=req.asset, guarantee_version=2
    )
    name, value = payment_header(buyer, req, tab.to_json())
    return client.post(path, headers={**headers, name: value})


def test_an_older_releases_database_keeps_its_money_and_the_buyer_keeps_paying(
    tmp_path: Path,
) -> None:
    db = tmp_path / "core.db"
    old = _old_database(db)
    money = "SELECT * FROM fx_positions ORDER BY address"
    guarantees = "SELECT guarantee_id, state, amount, cycle_id FROM fx_guarantees ORDER BY 1"
    records = "SELECT record_id, status, outcome, guarantee_id FROM fx_records ORDER BY 1"
    positions, held, kept = _rows(db, money), _rows(db, guarantees), _rows(db, records)
    in_flight = [r for r in kept if r[1] == "settled" and r[2] is None]
    assert len(in_flight) == 1  # the request killed in its handler

    core = Core(str(db))
    try:
        with TestClient(_app(core)) as client:
            meta = dict(_rows(db, "SELECT key, value FROM fx_meta WHERE key LIKE '%schema%'"))
            assert meta == {
                "schema_version": str(SCHEMA_VERSION),
                "records_schema_version": "8",
                "jobs_schema_version": "3",
                "prices_schema_version": "1",
            }
            assert core.audit() == []
            assert (_rows(db, money), _rows(db, guarantees)) == (positions, held)
            assert _rows(db, records) == kept
            # the killed request's payment waits for its validation deadline, not forgotten
            assert _rows(db, "SELECT guarantee_id, kind, status FROM fx_followups") == [
                (in_flight[0][3], "unknown", "open")
            ]

            name, value = old["replay"]["header"]  # sent again: its recorded answer, no charge
            again = client.get(old["replay"]["path"], headers={name: value})
            assert again.status_code == 200 and again.json() == old["replay"]["body"]
            assert _rows(db, money) == positions

            # the job the older release opened goes on to its stage 2, paid now
            done = _pay(core, client, BUYER2, "/job/2", {"job-id": old["job"]})
            assert done.status_code == 200, done.text
            assert done.json() == {"job": old["job"]}
        assert core.audit() == []
        assert len(_rows(db, records)) == len(kept) + 1
    finally:
        core.close()


def test_a_job_an_older_release_opened_is_not_another_sellers_to_go_on_with(
    tmp_path: Path,
) -> None:
    """Jobs an older release opened did not keep the payTo of their stage 1: another seller on
    the database with a job of the same name sold its stage 2 under that job id (skipping its
    own stage 1) and so used up the first seller's (docs/protocol.md, "Staged work"). The
    payTo is now taken from the record of the stage 1 payment."""
    db = tmp_path / "core.db"
    old = _old_database(db)
    other = TestBuyer.from_key("0x" + "55" * 32).address  # a seller selling a job "job" too
    core = Core(str(db))
    try:
        with TestClient(_app(core, other)) as theirs, TestClient(_app(core)) as mine:
            refused = theirs.post("/job/2", headers={"job-id": old["job"]})
            assert refused.status_code == 404 and refused.json()["error"] == "unknown_job"
            done = _pay(core, mine, BUYER2, "/job/2", {"job-id": old["job"]})
            assert done.status_code == 200, done.text
        assert core.audit() == []
    finally:
        core.close()
