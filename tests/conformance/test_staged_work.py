"""Staged work (docs/protocol.md, "Staged work"; docs/buyer.md, "Staged work").

On every adapter (a real Core on a SQLite file, each framework's own test client): stage 1
opens a job and names it, later stages carry its ``Job-Id`` and run in order, one at a time,
for the job's payer only; a stage that is not delivered is refunded and fails the job, and
every later stage is refused before anything is asked for or locked. The buyer client drives
the stages within one task budget, and refuses a job the budget cannot finish before paying
anything. Money is checked at the end of each test: what the buyer's collateral locked is
what it was served.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

import httpx
import pytest

from fourmica_x402 import Jobs, Stage
from fourmica_x402.client import (
    AsyncPaymentTransport,
    AsyncStagedJob,
    PaymentTransport,
    SpendingPolicy,
    StagedJob,
    StageFailed,
)
from fourmica_x402.core.store import StoreUnavailable
from fourmica_x402.errors import BudgetExhausted, ConfigurationError
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_header_json, decode_payment_required

harness = sys.modules["conformance_buyers"]  # loaded by conftest.py
CENT = 10_000  # "$0.01" in atomic units
OTHER_SELLER = TestBuyer.new().address  # another seller's payTo


#: The conformance apps' routes as a three-stage "report" job: gather (POST /echo, $0.01),
#: analyse (GET /items/:item_id, $0.02), write (GET /cached, $0.03).
def job(second: str = "GET /items/:item_id", third: str = "GET /cached") -> dict[str, Any]:
    return {
        "POST /echo": {"price": "$0.01", "stage": Stage("report", 1, of=3)},
        second: {"price": "$0.02", "stage": Stage("report", 2, of=3)},
        third: {"price": "$0.03", "stage": Stage("report", 3, of=3)},
    }


def stage_header(
    seller: Any, buyer: TestBuyer, path: str, method: str = "GET", job_id: str | None = None
) -> dict[str, str]:
    """A valid payment for one stage: its challenge (asked with the job's id), a tab, a
    signature; the job's id rides along."""
    headers = {"job-id": job_id} if job_id else {}
    resp = seller.request(
        method, path, headers=headers, json={"x": 1} if method == "POST" else None
    )
    assert resp.status == 402, (path, resp.status, resp.text)
    (offer,) = decode_payment_required(resp.headers["payment-required"]).accepts
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": offer.to_dict()}
    tab = seller.request("POST", "/x402/tab", json=body)
    assert tab.status == 200, tab.text
    name, value = payment_header(buyer, offer, tab.json())
    return {**headers, name: value}


def pay_stage(
    seller: Any, buyer: TestBuyer, path: str, method: str = "GET", job_id: str | None = None
) -> Any:
    headers = stage_header(seller, buyer, path, method, job_id)
    return seller.request(
        method, path, headers=headers, json={"x": 1} if method == "POST" else None
    )


def refused(resp: Any, status: int, reason: str) -> None:
    assert resp.status == status, (resp.status, resp.text)
    assert resp.json()["error"] == reason, resp.text
    assert "payment-required" not in resp.headers  # a refusal, not a challenge


def test_stages_run_in_order_each_charged_once(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, **job()})
    buyer = kit.funded(seller)
    first = decode_payment_required(
        seller.request("POST", "/echo", json={"x": 1}).headers["payment-required"]
    ).accepts[0]
    assert first.amount == str(CENT)
    assert first.extra["stage"] == {"job": "report", "stage": 1, "of": 3, "ahead": str(5 * CENT)}
    opened = pay_stage(seller, buyer, "/echo", "POST")
    assert opened.status == 200, opened.text
    job_id = opened.headers["job-id"]
    assert job_id.startswith("job_") and opened.headers["job-stage"] == "1/3"
    assert kit.locked(seller, buyer) == CENT
    # a later stage without its job is refused before it is priced: no challenge, no lock
    refused(seller.request("GET", "/items/7"), 400, "job_required")
    second = decode_payment_required(
        seller.request("GET", "/items/7", headers={"job-id": job_id}).headers["payment-required"]
    ).accepts[0]
    assert second.extra["stage"] == {"job": "report", "stage": 2, "of": 3, "ahead": str(3 * CENT)}
    # stage 3 before stage 2: refused, even with a valid payment for it
    early = stage_header(seller, buyer, "/items/7", job_id=job_id)
    refused(seller.request("GET", "/cached", headers={"job-id": job_id}), 409, "stage_out_of_order")
    analysed = seller.request("GET", "/items/7", headers=early)
    assert analysed.status == 200 and analysed.json() == {"item": "7"}
    assert analysed.headers["job-stage"] == "2/3" and analysed.headers["job-id"] == job_id
    # the same stage again, with a new valid payment: already served, nothing locked
    again = stage_header(seller, buyer, "/cached", job_id=job_id)
    again["job-id"] = job_id
    refused(seller.request("GET", "/items/7", headers={**again}), 409, "stage_done")
    written = seller.request("GET", "/cached", headers=again)
    assert written.status == 200 and written.headers["job-stage"] == "3/3"
    assert kit.locked(seller, buyer) == 6 * CENT
    assert seller.calls["/echo"] == seller.calls["/items/7"] == seller.calls["/cached"] == 1
    stored = Jobs(seller.core).get(job_id)
    assert stored is not None and stored.state == "done" and stored.done == 3
    assert [(s, o) for s, _, _, o in stored.history] == [
        (1, "delivered"),
        (2, "delivered"),
        (3, "delivered"),
    ]
    assert [a for _, _, a, _ in stored.history] == [CENT, 2 * CENT, 3 * CENT]
    # a done job sells nothing more
    refused(seller.request("GET", "/cached", headers={"job-id": job_id}), 409, "stage_done")


def test_a_later_stage_repriced_at_run_time_is_in_the_first_stages_ahead(
    make_seller: Any, base_routes: dict[str, Any]
) -> None:
    """``ahead`` is what the later stages cost now: a buyer's budget check must see a
    repriced stage before it pays for stage 1 (docs/operations.md, "Repricing")."""
    token = {"authorization": "Bearer stage-admin-token"}  # a throwaway token for this test

    def ahead() -> str:
        resp = seller.request("POST", "/echo", json={"x": 1})
        return (
            decode_payment_required(resp.headers["payment-required"])
            .accepts[0]
            .extra["stage"]["ahead"]
        )

    seller = make_seller(routes={**base_routes, **job()}, admin_token="stage-admin-token")
    assert ahead() == str(5 * CENT)
    change = {"prices": {"GET /cached": "$0.07"}}
    assert seller.request("POST", "/x402/admin/prices", headers=token, json=change).status == 200
    assert ahead() == str(9 * CENT)  # $0.02 + $0.07
    reset = {"prices": {"GET /cached": None}}
    assert seller.request("POST", "/x402/admin/prices", headers=token, json=reset).status == 200
    assert ahead() == str(5 * CENT)  # back to the configured prices


def test_a_per_handler_stage_repriced_shows_in_ahead_before_it_is_requested(
    tmp_path: Any,
) -> None:
    """Stages priced by ``@paid`` markers (Flask): a marker is re-priced when next asked, so
    stage 1's ``ahead`` must ask for stage 2's current price itself."""
    from flask import Flask
    from fourmica_x402.adapters.flask import FourmicaX402, paid

    from fourmica_x402.core import Core

    core = Core(str(tmp_path / "marker-stages.db"))
    app = Flask(__name__)
    settings = {"pay_to": TestBuyer.new().address, "network": NETWORK, "core": core}
    settings["admin_token"] = "marker-admin-token"  # a throwaway token for this test
    app.config.update({f"FOURMICA_X402_{k.upper()}": v for k, v in settings.items()})
    FourmicaX402(app)

    @app.get("/gather")
    @paid("$0.01", stage=Stage("memo", 1, of=2))
    def gather() -> Any:
        return {"ok": True}

    @app.get("/write")
    @paid("$0.02", stage=Stage("memo", 2, of=2))
    def write() -> Any:
        return {"ok": True}

    client = app.test_client()

    def ahead() -> str:
        resp = client.get("/gather")
        required = decode_payment_required(resp.headers["payment-required"])
        return str(required.accepts[0].extra["stage"]["ahead"])

    assert ahead() == str(2 * CENT)
    token = {"authorization": "Bearer marker-admin-token"}
    listed = client.get("/x402/admin/prices", headers=token).get_json()["routes"]
    (key,) = [r["route"] for r in listed if r["route"].endswith(" /write")]
    changed = client.post("/x402/admin/prices", headers=token, json={"prices": {key: "$0.06"}})
    assert changed.status_code == 200, changed.get_data(as_text=True)
    assert ahead() == str(6 * CENT)  # /write itself was not asked for meanwhile
    core.close()


def test_ahead_is_each_offers_own_cap_in_its_own_asset(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job sold in two tokens whose last stage is prepaid up to a cap: stage 1's offer in
    WETH said the stages ahead cost the USDC offer's cap (2 000 000, read as wei), where that
    stage charges 2 WETH. A buyer budgeting by ``ahead`` paid stage 1 for a job it could not
    finish. Each offer's ``ahead`` is now the later stages' charge in its own asset."""
    from fourmica_x402 import networks
    from fourmica_x402.networks import TokenAmount
    from fourmica_x402.routes import Offer, RouteConfig

    monkeypatch.setattr(networks, "_assets", {k: dict(v) for k, v in networks._assets.items()})
    weth = networks.register_asset(NETWORK, "0x" + "ee" * 20, symbol="WETH", decimals=18)
    pay_to = TestBuyer.new().address

    def sold(usd: str, wei: int, **options: Any) -> RouteConfig:
        offers = (
            Offer(usd, NETWORK, pay_to),
            Offer(TokenAmount(wei, weth.address), NETWORK, pay_to),
        )
        return RouteConfig(accepts=offers, **options)

    seller = make_seller(
        routes={
            **base_routes,
            "POST /echo": sold("$0.01", 10**16, stage=Stage("report", 1, of=2)),
            "GET /cached": sold("$0.10", 10**17, stage=Stage("report", 2, of=2), cap="$2"),
        }
    )
    first = seller.request("POST", "/echo", json={"x": 1})
    ahead = {
        offer.asset: offer.extra["stage"]["ahead"]
        for offer in decode_payment_required(first.headers["payment-required"]).accepts
    }
    buyer = kit.funded(seller)
    (usdc,) = [
        o
        for o in decode_payment_required(first.headers["payment-required"]).accepts
        if o.asset != weth.address
    ]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": usdc.to_dict()}
    name, value = payment_header(buyer, usdc, seller.request("POST", "/x402/tab", json=body).json())
    opened = seller.request("POST", "/echo", headers={name: value}, json={"x": 1})
    assert opened.status == 200, opened.text
    last = seller.request("GET", "/cached", headers={"job-id": opened.headers["job-id"]})
    charged = {
        offer.asset: offer.amount
        for offer in decode_payment_required(last.headers["payment-required"]).accepts
    }
    assert charged[weth.address] == str(2 * 10**18) and ahead == charged


@pytest.mark.parametrize("failing", ["GET /fail", "GET /boom", "GET /redirect", "GET /missing"])
def test_a_failed_stage_is_refunded_and_later_stages_are_never_charged(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, failing: str
) -> None:
    seller = make_seller(routes={**base_routes, **job(second=failing)})
    buyer = kit.funded(seller)
    opened = pay_stage(seller, buyer, "/echo", "POST")
    job_id = opened.headers["job-id"]
    path = failing.split()[1]
    failed = pay_stage(seller, buyer, path, job_id=job_id)
    assert failed.status >= 300, failed.text
    assert seller.calls[path] == 1
    assert kit.locked(seller, buyer) == CENT  # the failed stage's guarantee was voided
    # every later stage is refused before it is priced or paid: no challenge, no lock
    refused(seller.request("GET", "/cached", headers={"job-id": job_id}), 409, "job_failed")
    refused(seller.request("GET", path, headers={"job-id": job_id}), 409, "job_failed")
    assert seller.calls["/cached"] == 0
    assert kit.locked(seller, buyer) == CENT
    stored = Jobs(seller.core).get(job_id)
    assert stored is not None and stored.state == "failed" and stored.done == 1
    assert [o for _, _, _, o in stored.history] == ["delivered", "failed"]


def test_settle_after_a_stage_is_charged_only_when_delivered(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, **job(second="GET /fail")}, settle="after")
    buyer = kit.funded(seller)
    opened = pay_stage(seller, buyer, "/echo", "POST")
    assert opened.status == 200, opened.text
    job_id = opened.headers["job-id"]
    assert kit.locked(seller, buyer) == CENT
    assert pay_stage(seller, buyer, "/fail", job_id=job_id).status == 500
    assert kit.locked(seller, buyer) == CENT  # a failed handler is never settled
    refused(seller.request("GET", "/cached", headers={"job-id": job_id}), 409, "job_failed")
    stored = Jobs(seller.core).get(job_id)
    assert stored is not None and stored.state == "failed"
    assert stored.history[0][1] is not None  # delivered: settled, its guarantee named


def test_settle_after_each_delivered_stage_names_its_guarantee(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """``fx_job_stages`` keeps each stage's guarantee (docs/protocol.md, "Staged work"): with
    ``settle="after"`` a stage's row is written when it starts, before its settle, and kept
    no guarantee id for good, so a delivered stage could not be tied to what paid for it."""
    seller = make_seller(routes={**base_routes, **job()}, settle="after")
    buyer = kit.funded(seller)
    opened = pay_stage(seller, buyer, "/echo", "POST")
    assert opened.status == 200, opened.text
    job_id = opened.headers["job-id"]
    analysed = pay_stage(seller, buyer, "/items/7", job_id=job_id)
    assert analysed.status == 200, analysed.text
    stored = Jobs(seller.core).get(job_id)
    assert stored is not None and stored.done == 2
    named = [
        decode_header_json(r.headers["payment-response"])["transaction"] for r in (opened, analysed)
    ]
    assert [(s, g, o) for s, g, _, o in stored.history] == [
        (1, named[0], "delivered"),
        (2, named[1], "delivered"),
    ]


def test_a_replayed_stage_names_its_job_as_the_first_answer_did(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """With idempotent replay, a stage's payment sent again (its answer was lost) got the
    stage's body without ``Job-Id`` and ``Job-Stage``: the buyer had paid for stage 1 of a job
    it could not name, so it could only pay stage 1 again, for a new job."""
    seller = make_seller(routes={**base_routes, **job()}, idempotent_replay=True)
    buyer = kit.funded(seller)
    paying = stage_header(seller, buyer, "/echo", "POST")
    opened = seller.request("POST", "/echo", headers=paying, json={"x": 1})
    assert opened.status == 200, opened.text
    replayed = seller.request("POST", "/echo", headers=paying, json={"x": 1})
    assert replayed.status == 200 and replayed.body == opened.body
    assert replayed.headers.get("job-id") == opened.headers["job-id"]
    assert replayed.headers.get("job-stage") == "1/3"
    assert seller.calls["/echo"] == 1 and kit.locked(seller, buyer) == CENT
    job_id = replayed.headers["job-id"]
    second = stage_header(seller, buyer, "/items/7", job_id=job_id)
    analysed = seller.request("GET", "/items/7", headers=second)
    assert analysed.status == 200 and analysed.headers["job-stage"] == "2/3"
    again = seller.request("GET", "/items/7", headers=second)
    assert again.headers.get("job-id") == job_id and again.headers.get("job-stage") == "2/3"
    assert kit.locked(seller, buyer) == 3 * CENT


def test_a_stage_admitted_while_the_database_is_down_is_a_503_not_a_500(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later stage is admitted before it is priced, reading its job: a database that could
    not be read there answered a bare 500 (Flask raised it to the test client), where the same
    outage once the payment is read answers 503 with its reason, for the buyer to retry."""
    seller = make_seller(routes={**base_routes, **job()})
    buyer = kit.funded(seller)
    job_id = pay_stage(seller, buyer, "/echo", "POST").headers["job-id"]

    def down(self: Jobs, *args: Any) -> Any:
        raise StoreUnavailable("the database cannot be reached (injected)")

    monkeypatch.setattr(Jobs, "refusal", down)
    answer = seller.request("GET", "/items/7", headers={"job-id": job_id})
    assert answer.status == 503, answer.text
    assert answer.json()["error"] == "core_unavailable" and "payment-required" not in answer.headers
    monkeypatch.undo()
    assert pay_stage(seller, buyer, "/items/7", job_id=job_id).status == 200
    assert seller.calls["/items/7"] == 1 and kit.locked(seller, buyer) == 3 * CENT


def test_a_later_stage_is_only_for_the_jobs_payer(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, **job()})
    owner, other = kit.funded(seller), kit.funded(seller)
    job_id = pay_stage(seller, owner, "/echo", "POST").headers["job-id"]
    theirs = stage_header(seller, other, "/items/7", job_id=job_id)  # the challenge is open to all
    refused(seller.request("GET", "/items/7", headers=theirs), 403, "job_not_yours")
    assert kit.locked(seller, other) == 0 and seller.calls["/items/7"] == 0
    for bad in ("job_" + "0" * 32, "nonsense", "job_" + "Z" * 32, "x" * 500):
        refused(seller.request("GET", "/items/7", headers={"job-id": bad}), 404, "unknown_job")
    assert pay_stage(seller, owner, "/items/7", job_id=job_id).status == 200
    assert kit.locked(seller, owner) == 3 * CENT


# -- the buyer client ---------------------------------------------------------------------------


def test_a_job_opened_at_another_seller_on_the_same_database_is_not_this_sellers(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """Two sellers on one Core database (docs/buyer.md's travel agent runs six) both selling a
    job named ``report``: a buyer paid the first one's cheap stage 1, then bought the second
    one's stage 2 under that Job-Id, skipping the stage 1 it never paid there, and so used up
    the first seller's stage 2 as well (``stage_done`` there)."""
    first = make_seller(routes={**base_routes, **job()})
    second = make_seller(routes={**base_routes, **job()}, core=first.core, pay_to=OTHER_SELLER)
    buyer = kit.funded(first)
    opened = pay_stage(first, buyer, "/echo", "POST")
    assert opened.status == 200, opened.text
    job_id = opened.headers["job-id"]
    refused(second.request("GET", "/items/7", headers={"job-id": job_id}), 404, "unknown_job")
    analysed = pay_stage(first, buyer, "/items/7", job_id=job_id)  # its own seller goes on
    assert analysed.status == 200 and analysed.headers["job-stage"] == "2/3"
    assert kit.locked(first, buyer) == 3 * CENT  # its stages 1 and 2, nothing at the other


def test_the_buyer_client_drives_a_job_within_one_task_budget(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, **job()})
    buyer = kit.funded(seller)
    policy = SpendingPolicy()
    transport = PaymentTransport(
        buyer.key, policy=policy, transport=harness._inner(seller, is_async=False)
    )
    with httpx.Client(transport=transport, base_url=harness.BASE) as client:
        # a budget that cannot finish the job: refused at stage 1, nothing signed or locked
        with policy.task("too-small", budget="$0.05"), pytest.raises(BudgetExhausted) as small:
            StagedJob(client).stage("POST", "/echo", json={"topic": "tides"})
        assert "cannot finish this job" in small.value.message
        assert kit.locked(seller, buyer) == 0 and seller.calls["/echo"] == 0
        with policy.task("report", budget="$0.06"):
            staged = StagedJob(client)
            staged.stage("POST", "/echo", json={"topic": "tides"})
            staged.stage("GET", "/items/7")
            staged.stage("GET", "/cached")
        assert staged.id is not None and [r.status_code for r in staged.responses] == [200] * 3
        assert kit.locked(seller, buyer) == 6 * CENT
        # the budget runs out mid-task (spent meanwhile on another call): the next stage is
        # refused before it is signed; the job stays open for a later budget
        with policy.task("tight", budget="$0.065"):
            staged = StagedJob(client)
            staged.stage("POST", "/echo", json={"topic": "reefs"})
            assert client.get("/premium").status_code == 200
            with pytest.raises(BudgetExhausted):
                staged.stage("GET", "/items/7")
        assert kit.locked(seller, buyer) == 8 * CENT and seller.calls["/items/7"] == 1
        assert staged.id is not None
        left = Jobs(seller.core).get(staged.id)
        assert left is not None and left.state == "open" and left.done == 1
        resumed = StagedJob(client, staged.id)  # resumed under a budget that covers the rest
        with policy.task("resume", budget="$0.05"):
            resumed.stage("GET", "/items/7")
            resumed.stage("GET", "/cached")
    assert kit.locked(seller, buyer) == 13 * CENT


def test_the_async_buyer_client_stops_at_a_failed_stage(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, **job(second="GET /fail")})
    buyer = kit.funded(seller)

    async def run() -> AsyncStagedJob:
        transport = AsyncPaymentTransport(
            buyer.key, transport=harness._inner(seller, is_async=True)
        )
        async with httpx.AsyncClient(transport=transport, base_url=harness.BASE) as client:
            staged = AsyncStagedJob(client)
            await staged.stage("POST", "/echo", json={"topic": "tides"})
            with pytest.raises(StageFailed) as failed:
                await staged.stage("GET", "/fail")
            assert failed.value.response is not None and failed.value.response.status_code == 500
            with pytest.raises(StageFailed):  # no request goes out for a later stage
                await staged.stage("GET", "/cached")
            return staged

    staged = asyncio.run(run())
    assert len(staged.responses) == 2 and seller.calls["/cached"] == 0
    assert kit.locked(seller, buyer) == CENT


# -- concurrency and start-up checks ----------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_one_request_wins_a_stage_raced_by_many(store: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(f"{store}_url")
    jobs = Jobs(url)
    payer = TestBuyer.new().address
    opened = jobs.open(Stage("render", 1, of=2), payer, "0x01", CENT)
    jobs.delivered(opened)
    second = Stage("render", 2, of=2)
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        results.append(Jobs(url).claim(opened.id, second, payer, f"0x{i + 2:02x}", 2 * CENT))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    won = [r for r in results if not isinstance(r, str)]
    assert len(results) == 8 and len(won) == 1
    assert sorted(set(r for r in results if isinstance(r, str))) == ["stage_in_progress"]
    stored = jobs.get(opened.id)
    assert stored is not None and stored.running == 2 and len(stored.history) == 2


def test_a_stage_left_running_by_a_dead_process_fails_its_job(sqlite_url: str) -> None:
    jobs = Jobs(sqlite_url, stale_after=0.0)
    payer = TestBuyer.new().address
    opened = jobs.open(Stage("render", 1, of=2), payer, "0x01", CENT)  # never delivered
    assert jobs.refusal(opened.id, Stage("render", 2, of=2), payer) == "job_failed"
    assert jobs.claim(opened.id, Stage("render", 2, of=2), payer, "0x02", CENT) == "job_failed"
    stored = jobs.get(opened.id)
    assert stored is not None and stored.state == "failed"


@pytest.mark.parametrize(
    "args",
    [
        ("", 1, 1),
        ("a b", 1, 1),
        ("x", 0, 1),
        ("x", 3, 2),
        ("x", 1, 0),
        ("x", 1, 65),
        ("x", True, 2),
    ],
)
def test_a_bad_stage_fails_at_start_up(args: tuple[Any, ...]) -> None:
    with pytest.raises(ConfigurationError):
        Stage(*args)


def test_a_job_whose_routes_disagree_on_its_stage_count_fails_at_start_up() -> None:
    """Stage 1 said the job had 3 stages and stage 2 said 2 (one route left behind when a
    stage was added): stage 1 was sold, and every stage 2 was refused unknown_job, so each
    buyer paid for the first stage of a job it could never go on with."""
    from fourmica_x402.routes import RouteTable

    routes = job()
    routes["GET /items/:item_id"] = {"price": "$0.02", "stage": Stage("report", 2, of=2)}
    with pytest.raises(ConfigurationError, match="report"):
        RouteTable(routes, network=NETWORK, pay_to=TestBuyer.new().address)
    table = RouteTable(job(), network=NETWORK, pay_to=TestBuyer.new().address)
    with pytest.raises(ConfigurationError, match="report"):
        table.add("GET /extra", {"price": "$0.01", "stage": Stage("report", 3, of=4)})
    table.add("GET /cached", {"price": "$0.04", "stage": Stage("report", 3, of=3)})  # a change
    table.add("GET /other", {"price": "$0.01", "stage": Stage("audit", 1, of=1)})  # another job


def test_a_marked_stage_disagreeing_on_its_jobs_stage_count_fails_at_start_up(
    tmp_path: Any,
) -> None:
    """Stages priced by ``@paid`` markers were never checked against each other or the table
    (only table entries were): stage 1 said 3 stages and stage 2 said 2, so every buyer paid
    for stage 1 of a job whose stage 2 answered ``unknown_job`` for good."""
    from flask import Flask
    from fourmica_x402.adapters.flask import FourmicaX402, paid

    from fourmica_x402.core import Core

    core = Core(str(tmp_path / "marker-stages.db"))
    app = Flask(__name__)
    settings = {"pay_to": TestBuyer.new().address, "network": NETWORK, "core": core}
    settings["routes"] = {"POST /draft": {"price": "$0.01", "stage": Stage("essay", 1, of=2)}}
    app.config.update({f"FOURMICA_X402_{k.upper()}": v for k, v in settings.items()})
    payments = FourmicaX402(app)

    @app.post("/draft")
    def draft() -> Any:
        return {"ok": True}

    @app.get("/gather")
    @paid("$0.01", stage=Stage("memo", 1, of=3))
    def gather() -> Any:
        return {"ok": True}

    @app.get("/write")
    @paid("$0.02", stage=Stage("memo", 2, of=2))
    def write() -> Any:
        return {"ok": True}

    with pytest.raises(ConfigurationError, match="memo"):
        payments.check()
    core.close()
    core = Core(str(tmp_path / "marker-table.db"))  # a marker against a table entry
    app = Flask(__name__)
    settings["core"] = core
    app.config.update({f"FOURMICA_X402_{k.upper()}": v for k, v in settings.items()})
    payments = FourmicaX402(app)
    app.post("/draft")(draft)

    @app.get("/revise")
    @paid("$0.02", stage=Stage("essay", 2, of=3))
    def revise() -> Any:
        return {"ok": True}

    with pytest.raises(ConfigurationError, match="essay"):
        payments.check()
    core.close()


@pytest.mark.parametrize(
    ("ahead", "read"),
    [("30000", 30_000), ("²", 0), ("٣", 0), ("-5", 0), ("1" * 79, 0), (5, 0), (None, 0)],
)
def test_a_malformed_ahead_counts_as_nothing_ahead(ahead: Any, read: int) -> None:
    """``ahead`` is the seller's word for a budget check: ASCII digits, else nothing."""
    from fourmica_x402.client.jobs import ahead_of
    from fourmica_x402.wire import PaymentRequirements

    offer = PaymentRequirements(
        scheme="4mica-credit",
        network="eip155:84532",
        amount="10000",
        asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        pay_to="0x" + "11" * 20,
        max_timeout_seconds=300,
        extra={"stage": {"job": "report", "stage": 1, "of": 2, "ahead": ahead}},
    )
    assert ahead_of(offer) == read


#: A job relaying an upstream staged seller's answer headers at its first stage.
RELAYED = {"Job-Id": "job_" + "ab" * 16, "Job-Stage": "1/9", "Payment-Response": "e30="}


def _relay_config(core: Any) -> Any:
    from fourmica_x402 import PaymentConfig
    from fourmica_x402.testing import NETWORK

    routes = {
        "POST /gather": {"price": "$0.01", "stage": Stage("relay", 1, of=2)},
        "POST /write": {"price": "$0.01", "stage": Stage("relay", 2, of=2)},
    }
    return PaymentConfig(pay_to=TestBuyer.new().address, network=NETWORK, core=core, routes=routes)


def _bought_through_the_relay(app: Any, buyer: TestBuyer) -> None:
    """Both stages, bought by our client: the first answer carries the gate's headers once."""
    with (
        harness.loopback(app, "asgi") as url,
        httpx.Client(transport=PaymentTransport(buyer.key), base_url=url) as client,
    ):
        job = StagedJob(client)
        opened = job.stage("POST", "/gather")
        assert len(opened.headers.get_list("job-id")) == 1
        assert opened.headers["job-stage"] == "1/2" and opened.headers["job-id"] == job.id
        assert len(opened.headers.get_list("payment-response")) == 1
        assert job.stage("POST", "/write").json() == {"stage": 2}


def test_the_gates_job_headers_replace_the_handlers(tmp_path: Any) -> None:
    """A handler relaying an upstream staged seller's answer (its ``Job-Id``, ``Job-Stage``,
    ``PAYMENT-RESPONSE``): the buyer got two ``Job-Id`` values, read them as one id, and
    every later stage of the job it paid to open was refused 404 ``unknown_job``."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fourmica_x402.core import Core
    from fourmica_x402.testing import NETWORK

    async def gather(request: Request) -> JSONResponse:
        return JSONResponse({"stage": 1}, headers=RELAYED)

    async def write(request: Request) -> JSONResponse:
        return JSONResponse({"stage": 2})

    core, buyer = Core(str(tmp_path / "core.db")), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    config = _relay_config(core)
    app = Starlette(
        routes=[
            Route("/gather", gather, methods=["POST"]),
            Route("/write", write, methods=["POST"]),
        ],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    try:
        _bought_through_the_relay(app, buyer)
        assert core.position(buyer.address, network=NETWORK).locked == 2 * CENT
    finally:
        core.close()


def test_the_gates_job_headers_replace_the_handlers_under_a_wrapped_http_middleware(
    tmp_path: Any,
) -> None:
    """The same relay behind FastAPI's http middleware wrapped in another function (the gate
    sees call_next's copy): its Job-Id and Job-Stage were appended beside the handler's."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from fourmica_x402.adapters.fastapi import http_middleware

    from fourmica_x402.core import Core
    from fourmica_x402.testing import NETWORK

    core, buyer = Core(str(tmp_path / "core.db")), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    app, gate = FastAPI(), http_middleware(_relay_config(core))

    @app.middleware("http")
    async def wrapped(request: Any, call_next: Any) -> Any:
        return await gate(request, call_next)

    @app.post("/gather")
    def gather() -> JSONResponse:
        return JSONResponse({"stage": 1}, headers=RELAYED)

    @app.post("/write")
    def write() -> dict[str, int]:
        return {"stage": 2}

    try:
        _bought_through_the_relay(app, buyer)
    finally:
        core.close()
