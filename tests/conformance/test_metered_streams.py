"""Metered streams (docs/protocol.md, "Metered streams"; docs/buyer.md, "Metered streams").

Every adapter serves the conformance app's ``GET /stream?n=N`` over a real socket (uvicorn for
ASGI, a threaded wsgiref server for WSGI) as a stream sold per slice of 2 events: the request
pays slice 1, each later slice is paid at its pay URL before any of it is sent, and the stream
ends with an ``end`` event saying why. The buyer client pays the slices inside its policy and
stops the stream when its budget runs out. Money is checked at the end of each test: what the
buyer's collateral locked is the slices whose events went out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fourmica_x402 import Slices, Stage
from fourmica_x402.client import (
    AsyncPaidStream,
    AsyncPaymentTransport,
    PaidStream,
    PaymentTransport,
    SpendingPolicy,
    StreamFailed,
)
from fourmica_x402.core import Core
from fourmica_x402.core.store import StoreUnavailable
from fourmica_x402.errors import (
    BudgetExhausted,
    ConfigurationError,
    PaymentFailed,
    PaymentRefused,
)
from fourmica_x402.gate import metered as metered_gate
from fourmica_x402.networks import default_asset
from fourmica_x402.records import Records
from fourmica_x402.routes import RouteTable
from fourmica_x402.streams import Streams
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_header_json, decode_payment_required

harness = sys.modules["conformance_buyers"]  # loaded by conftest.py
CENT = 10_000


def metered(**slices: Any) -> dict[str, Any]:
    return {"GET /stream": {"price": "$0.01", "slices": Slices(**{"units": 2, **slices})}}


@contextlib.contextmanager
def served(seller: Any, **options: Any) -> Iterator[httpx.Client]:
    """An httpx client on ``seller``'s app, served on 127.0.0.1 (a port of its own)."""
    with (
        harness.loopback(seller.client.app, seller.client.interface) as url,
        httpx.Client(base_url=url, timeout=30, **options) as client,
    ):
        yield client


def events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """``(event, data)`` of a raw SSE response, read as it arrives."""
    name, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])


def paid_header(
    client: httpx.Client,
    buyer: TestBuyer,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """A valid payment for ``method path`` (challenge, tab, signature) through ``client``;
    ``headers`` go with the challenge and come back with the payment (they may price it)."""
    challenge = client.request(method, path, headers=headers)
    assert challenge.status_code == 402, challenge.text
    (offer,) = decode_payment_required(challenge.headers["payment-required"]).accepts
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": offer.to_dict()}
    tab = client.post("/x402/tab", json=body)
    assert tab.status_code == 200, tab.text
    name, value = payment_header(buyer, offer, tab.json())
    return {name: value, **(headers or {})}


def read_stream(seller: Any, buyer: TestBuyer, n: int) -> tuple[PaidStream, list[Any]]:
    """The buyer client reads the seller's ``/stream?n=`` to its end, over a real socket."""
    with served(seller, transport=PaymentTransport(buyer.key)) as client:
        stream = PaidStream(client, "GET", "/stream", params={"n": str(n)})
        return stream, [event.json() for event in stream]


def eventually(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_buyer_client_pays_each_slice_before_it_is_sent(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, **metered()})
    buyer = kit.funded(seller)
    stream, got = read_stream(seller, buyer, 5)
    assert got == [{"tick": i} for i in range(5)]
    assert (stream.ended, stream.slices) == ("complete", 3)  # 2 + 2 + 1 events
    assert kit.locked(seller, buyer) == 3 * CENT
    assert stream.id is not None
    rows = Streams(seller.core).slices(stream.id)
    assert [(r.slice, r.outcome, r.amount) for r in rows] == [
        (i, "delivered", CENT) for i in (1, 2, 3)
    ]
    # One stream: a slice paid at the pay URL used to open a phantom stream of its own, left
    # open for good with the slice's guarantee as its "slice 1".
    with seller.core.store.transaction(write=False) as tx:
        assert tx.all("SELECT stream_id, state FROM fx_streams") == [(stream.id, "complete")]
    assert seller.core.audit() == []


def test_a_settle_after_slice_record_names_its_guarantee(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """With ``settle="after"`` a slice's record is written before its settle at the pay URL,
    and the slice's completion did not name the guarantee: the records of slices 2 and on
    kept no guarantee id, so the seller's record of a slice could not be found by its
    guarantee (``fourmica-x402 evidence``, the dashboard)."""
    seller = make_seller(routes={**base_routes, **metered()}, settle="after")
    buyer = kit.funded(seller)
    stream, got = read_stream(seller, buyer, 5)
    assert got == [{"tick": i} for i in range(5)] and (stream.ended, stream.slices) == (
        "complete",
        3,
    )
    assert stream.id is not None
    records = Records(seller.core.store)
    later = [row for row in Streams(seller.core).slices(stream.id) if row.slice > 1]
    assert len(later) == 2
    for gid in [row.guarantee_id for row in later]:
        assert gid is not None
        eventually(lambda gid=gid: bool(records.query(guarantee_id=gid)))
        (record,) = records.query(guarantee_id=gid)
        assert (record.outcome, record.amount) == ("delivered", CENT)


def test_a_settle_after_streams_first_slice_names_its_guarantee(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """``Streams(db).slices(id)`` gives each slice's guarantee (docs/protocol.md): with
    ``settle="after"`` slice 1's row is written when the stream opens, before the request's
    settle, and kept no guarantee id for good."""
    seller = make_seller(routes={**base_routes, **metered()}, settle="after")
    buyer = kit.funded(seller)
    stream, _ = read_stream(seller, buyer, 3)
    assert (stream.ended, stream.slices) == ("complete", 2) and stream.id is not None
    assert stream.response is not None
    opened = stream.response.headers["payment-response"]
    rows = Streams(seller.core).slices(stream.id)
    assert [(r.slice, r.outcome) for r in rows] == [(1, "delivered"), (2, "delivered")]
    assert rows[0].guarantee_id == decode_header_json(opened)["transaction"]
    assert rows[1].guarantee_id is not None


def test_nothing_unpaid_is_sent_and_the_stream_ends_when_the_buyer_stops_paying(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, **metered(pay_timeout=1.0)})
    buyer = kit.funded(seller)
    with served(seller) as client:
        (offer,) = decode_payment_required(
            client.get("/stream?n=6").headers["payment-required"]
        ).accepts
        assert offer.amount == str(CENT)
        assert offer.extra["slices"] == {"units": 2, "payTimeout": 1.0}
        headers = paid_header(client, buyer, "/stream?n=6")
        with client.stream("GET", "/stream?n=6", headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            seen = list(events(response))  # nobody pays slice 2: the seller waits, then ends
        names = [name for name, _ in seen]
        assert names == ["stream", "message", "message", "payment-required", "end"]
        opened, asked, end = seen[0][1], seen[3][1], seen[-1][1]
        assert [data for _, data in seen[1:3]] == [{"tick": 0}, {"tick": 1}]
        assert (
            asked["slice"] == 2
            and asked["amount"] == str(CENT)
            and asked["stream"] == opened["stream"]
        )
        assert end == {"reason": "payment_timeout", "slices": 1}
        # a payment that comes too late is refused before anything is asked for or locked
        late = client.post(asked["pay"])
        assert late.status_code == 409 and late.json()["error"] == "stream_closed"
        assert "payment-required" not in late.headers
    assert kit.locked(seller, buyer) == CENT
    assert Streams(seller.core).get(opened["stream"]).state == "payment_timeout"  # type: ignore[union-attr]


def test_a_budget_that_runs_out_mid_stream_stops_it_cleanly(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, **metered()})
    buyer = kit.funded(seller)
    policy = SpendingPolicy()
    got: list[Any] = []

    async def run(url: str) -> AsyncPaidStream:
        transport = AsyncPaymentTransport(buyer.key, policy=policy)
        async with httpx.AsyncClient(transport=transport, base_url=url, timeout=30) as client:
            stream = AsyncPaidStream(client, "GET", "/stream", params={"n": "9"})
            with policy.task("listen", budget="$0.02"), pytest.raises(BudgetExhausted):
                async for event in stream:
                    got.append(event.json())
            return stream

    with harness.loopback(seller.client.app, seller.client.interface) as url:
        stream = asyncio.run(run(url))
    assert got == [{"tick": i} for i in range(4)]  # two slices paid, nothing of the third sent
    assert (stream.ended, stream.slices) == ("buyer_stopped", 2)
    assert stream.refusal is not None
    assert kit.locked(seller, buyer) == 2 * CENT


def test_a_later_slice_is_only_for_the_streams_payer(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, **metered(pay_timeout=10.0)})
    owner, other = kit.funded(seller), kit.funded(seller)
    with (
        harness.loopback(seller.client.app, seller.client.interface) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        httpx.Client(transport=PaymentTransport(other.key), base_url=url, timeout=30) as theirs,
    ):
        opening = paid_header(client, owner, "/stream?n=4")
        with client.stream("GET", "/stream?n=4", headers=opening) as response:
            seen = events(response)
            first = [next(seen) for _ in range(4)]
            assert [name for name, _ in first][-1] == "payment-required"
            asked = first[-1][1]
            # another payer's valid payment for the slice: voided after its settle, 403
            refused = theirs.post(asked["pay"])
            assert refused.status_code == 403 and refused.json()["error"] == "stream_not_yours"
            assert kit.locked(seller, other) == 0
            ahead = client.post(asked["pay"][: -len("2")] + "5")  # not the slice it asked for
            assert ahead.status_code == 409 and ahead.json()["error"] == "slice_out_of_order"
            for bad in ("/x402/streams/str_" + "0" * 32 + "/2", "/x402/streams/nonsense/2"):
                missing = client.post(bad)
                assert missing.status_code == 404 and missing.json()["error"] == "unknown_stream"
            # a slice number of digits int() refuses ('²', '¹'): no such slice, not a 500
            # nor a slice 0, nor slice 2 at a second URL ("02": sold twice, once at each)
            for digit in ("%C2%B2", "%C2%B9", "0", "02", "0002"):
                odd = client.post(asked["pay"][: -len("2")] + digit)
                assert odd.status_code == 404 and odd.json()["error"] == "unknown_stream"
            paid = client.post(
                asked["pay"], headers=paid_header(client, owner, asked["pay"], "POST")
            )
            assert paid.status_code == 200, paid.text
            assert paid.json() == {"stream": asked["stream"], "slice": 2, "paid": True}
            assert "payment-response" in paid.headers
            wrong = client.get(asked["pay"])
            assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
            again = client.post(asked["pay"])  # paid already: refused before any challenge
            assert again.status_code == 409 and again.json()["error"] == "slice_paid"
            rest = list(seen)
    assert rest == [
        ("message", {"tick": 2}),
        ("message", {"tick": 3}),
        ("end", {"reason": "complete", "slices": 2}),
    ]
    assert kit.locked(seller, owner) == 2 * CENT and kit.locked(seller, other) == 0


def test_a_slice_the_store_cannot_add_after_its_payment_is_given_back(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding the paid slice to the stream met a store error once, after the Core accepted
    its payment: the buyer got a 503 for a slice never sent, and was charged for it."""
    seller = make_seller(routes={**base_routes, **metered(pay_timeout=10.0)})
    owner = kit.funded(seller)
    real, calls = Streams.add_slice, [0]

    def flaky(self: Streams, *args: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise StoreUnavailable("database is locked (injected)")
        return real(self, *args)

    with served(seller) as client:
        opening = paid_header(client, owner, "/stream?n=4")
        with client.stream("GET", "/stream?n=4", headers=opening) as response:
            seen = events(response)
            asked = next(data for name, data in seen if name == "payment-required")
            monkeypatch.setattr(Streams, "add_slice", flaky)
            failed = client.post(
                asked["pay"], headers=paid_header(client, owner, asked["pay"], "POST")
            )
            assert failed.status_code == 503, failed.text
            eventually(lambda: kit.locked(seller, owner) == CENT)  # the opening slice only
            client.delete(asked["pay"].rsplit("/", 1)[0])  # the buyer stops the stream
    assert calls[0] == 1 and kit.locked(seller, owner) == CENT


def test_a_later_slice_is_priced_as_the_stream_was_whatever_its_pay_request_says(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """A per-request payTo (picked by a header) was worked out again from each slice's pay
    request: the buyer chose who got slices 2 on (an accomplice's shop), and a header the
    payTo could not price answered a bare 500. A slice is paid to the stream's payTo; one
    past ``max_slices`` is refused before anything is asked for."""
    shops = [TestBuyer.new().address for _ in range(3)]

    def shop(request: Any) -> str:
        return shops[int(request.header("x-shop") or 0)]

    stream = {"price": "$0.01", "pay_to": shop}
    stream["slices"] = Slices(units=2, pay_timeout=10.0, max_slices=2)
    seller = make_seller(routes={**base_routes, "GET /stream": stream})
    buyer = kit.funded(seller)
    with served(seller) as client:
        opening = paid_header(client, buyer, "/stream?n=6", headers={"x-shop": "2"})
        with client.stream("GET", "/stream?n=6", headers=opening) as response:
            seen = events(response)
            asked = [next(seen) for _ in range(4)][-1][1]
            beyond = client.post(asked["pay"][: -len("2")] + "3")
            assert beyond.status_code == 409 and beyond.json()["error"] == "max_slices"
            for other in ("1", "9"):  # another shop; one the payTo cannot price
                challenge = client.post(asked["pay"], headers={"x-shop": other})
                assert challenge.status_code == 402, challenge.text
                (offer,) = decode_payment_required(challenge.headers["payment-required"]).accepts
                assert offer.pay_to == shops[2]
            paying = paid_header(client, buyer, asked["pay"], "POST", {"x-shop": "1"})
            paid = client.post(asked["pay"], headers={**paying, "x-shop": "1"})
            assert paid.status_code == 200, paid.text
            rest = list(seen)
    assert rest[-1] == ("end", {"reason": "max_slices", "slices": 2})
    assert {g.recipient_address for g in seller.core.guarantees()} == {shops[2]}
    assert kit.locked(seller, buyer) == 2 * CENT


def test_the_opening_payment_of_a_stream_does_not_replay_its_slices(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """With idempotent replay on, the stream's opening header sent again got the whole
    stream back, every slice bought after it included, for nothing more."""
    seller = make_seller(routes={**base_routes, **metered()}, idempotent_replay=True)
    buyer = kit.funded(seller)
    with served(seller) as client:
        opening = paid_header(client, buyer, "/stream?n=2")
        with client.stream("GET", "/stream?n=2", headers=opening) as response:
            assert [name for name, _ in events(response)] == ["stream", "message", "message", "end"]
        eventually(lambda: [r.status for r in seller.gate.records.query()] == ["delivered"])
        again = client.get("/stream?n=2", headers=opening)
    assert again.status_code == 409 and again.json()["error"] == "replay_unavailable"
    assert kit.locked(seller, buyer) == CENT


@pytest.mark.parametrize("kind", ["starlette", "fastapi", "django_async"])
def test_a_slice_paid_after_the_client_left_is_never_charged(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """ASGI servers see the client leave at once; the slice it paid for on the way out (or
    just after) is never sent, so never charged. (A WSGI server only learns it when a write
    fails: the first event written to the dead connection counts as sent.)"""
    seller = make_seller(routes={**base_routes, **metered(pay_timeout=10.0)})
    buyer = kit.funded(seller)
    with served(seller) as client:
        with client.stream(
            "GET", "/stream?n=4", headers=paid_header(client, buyer, "/stream?n=4")
        ) as response:
            seen = events(response)
            asked = [next(seen) for _ in range(4)][-1][1]
        # the connection is closed: pay for slice 2 anyway (when the seller, seeing the
        # client gone, has not closed the stream already)
        challenge = client.post(asked["pay"])
        if challenge.status_code == 402:
            tab = client.post(
                "/x402/tab",
                json={
                    "x402Version": 2,
                    "userAddress": buyer.address,
                    "paymentRequirements": decode_payment_required(
                        challenge.headers["payment-required"]
                    )
                    .accepts[0]
                    .to_dict(),
                },
            )
            offer = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
            name, value = payment_header(buyer, offer, tab.json())
            paid = client.post(asked["pay"], headers={name: value})
            assert paid.status_code in (200, 409), paid.text
        else:
            assert challenge.json()["error"] == "stream_closed", challenge.text
    streams = Streams(seller.core)
    eventually(lambda: all(r.outcome != "paid" for r in streams.slices(asked["stream"])))
    eventually(lambda: kit.locked(seller, buyer) == CENT)
    assert [r.outcome for r in streams.slices(asked["stream"])][1:] in ([], ["refunded"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"units": 0},
        {"units": 2.5},
        {"seconds": 0},
        {"units": 1, "pay_timeout": -1},
        {"units": 1, "max_slices": 0},
    ],
)
def test_bad_slices_fail_at_start_up(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Slices(**kwargs)


@pytest.mark.parametrize(
    "extra",
    [
        {"cap": "$1"},
        {"units": lambda request: 1},
        {"stage": Stage("x", 1, of=1)},
        {"price": lambda request: "$0.01"},
    ],
)
def test_slices_refuse_what_they_cannot_combine_with(extra: dict[str, Any]) -> None:
    route = {"price": "$0.01", "slices": Slices(units=1), **extra}
    with pytest.raises(ConfigurationError):
        RouteTable({"GET /ticks": route}, network=NETWORK, pay_to=TestBuyer.new().address)


def test_a_slice_paid_in_another_process_is_found_in_the_database(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker process of the seller takes the payment: the serving process is not
    woken, and finds the slice paid when it looks in the records database."""
    from fourmica_x402.gate import metered as metering

    monkeypatch.setattr(metering, "_wake", lambda stream_id: None)  # as if paid elsewhere
    seller = make_seller(routes={**base_routes, **metered(pay_timeout=10.0)})
    buyer = kit.funded(seller)
    stream, got = read_stream(seller, buyer, 4)
    assert got == [{"tick": i} for i in range(4)] and (stream.ended, stream.slices) == (
        "complete",
        2,
    )
    # found by polling: without it the stream would have ended "payment_timeout" after slice 1
    assert kit.locked(seller, buyer) == 2 * CENT


def _compute_app(core: Any, slices: Slices, steps: Any) -> Any:
    """A Starlette app selling ``GET /compute``: ``steps()`` (an async generator) metered."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from fourmica_x402 import PaymentConfig

    async def compute(request: Request) -> StreamingResponse:
        return StreamingResponse(request.state.payment.stream.events(steps()))

    routes = {"GET /compute": {"price": "$0.01", "slices": slices}}
    config = PaymentConfig(
        pay_to=TestBuyer.new().address, network=NETWORK, core=core, routes=routes
    )
    return Starlette(
        routes=[Route("/compute", compute)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )


def _bought(core: Any, app: Any) -> tuple[PaidStream, list[Any], int]:
    """A funded buyer reads the app's ``/compute`` stream: the stream, its events, the lock."""
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    with harness.loopback(app, "asgi") as url:  # noqa: SIM117
        with httpx.Client(transport=PaymentTransport(buyer.key), base_url=url) as client:
            stream = PaidStream(client, "GET", "/compute")
            got = [event.json() for event in stream]
    return stream, got, int(core.position(buyer.address, network=NETWORK).locked)


def test_a_metered_handler_that_does_not_stream_is_refunded_and_named_once(
    tmp_path: Any, caplog: Any
) -> None:
    """A seller's mistake: the handler answers without ``payment.stream.events``. Nothing
    was sold, so the payment is refunded, and the log names the route (once)."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fourmica_x402 import PaymentConfig

    async def forgot(request: Request) -> JSONResponse:
        return JSONResponse({"text": "all of it at once"})

    async def rejects(request: Request) -> JSONResponse:  # no mistake: a refusal, not a sale
        return JSONResponse({"error": "bad topic"}, status_code=400)

    metered_gate._WARNED.difference_update({"GET /forgot", "GET /rejects"})  # once per process
    core = Core(str(tmp_path / "forgot.db"))
    slices = {"price": "$0.01", "slices": Slices(units=2)}
    routes = {"GET /forgot": slices, "GET /rejects": slices}
    config = PaymentConfig(
        pay_to=TestBuyer.new().address, network=NETWORK, core=core, routes=routes
    )
    app = Starlette(
        routes=[Route("/forgot", forgot), Route("/rejects", rejects)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    caplog.set_level("WARNING", logger="fourmica_x402.gate")
    with harness.loopback(app, "asgi") as url:  # noqa: SIM117
        with httpx.Client(transport=PaymentTransport(buyer.key), base_url=url) as client:
            assert client.get("/rejects").status_code == 400
            for _ in range(2):
                assert client.get("/forgot").status_code == 200
    eventually(lambda: core.position(buyer.address, network=NETWORK).locked == 0)
    assert not [r for r in caplog.records if "GET /rejects" in r.getMessage()]
    named = [r for r in caplog.records if "GET /forgot" in r.getMessage()]
    assert len(named) == 1 and "payment.stream.events()" in named[0].getMessage()
    assert "refunded" in named[0].getMessage()
    assert core.audit() == []
    core.close()


def test_time_slices_charge_each_started_slice_of_seconds(tmp_path: Any) -> None:
    """``Slices(seconds=T)``: a slow source (compute that takes time) is charged per started
    slice of T seconds; whatever the timing, what was locked is the slices paid."""

    async def steps() -> Any:
        for i in range(6):
            await asyncio.sleep(0.1)
            yield {"step": i}

    stream, got = _time_sliced(tmp_path, steps)
    assert [e["step"] for e in got] == list(range(6)) and stream.ended == "complete"
    assert stream.slices >= 2  # 0.6 s of work in slices of 0.25 s


def _time_sliced(tmp_path: Any, source: Any) -> tuple[PaidStream, list[Any]]:
    """``source`` sold in slices of 0.25 s and read whole by the buyer client: what was
    locked is the slices paid, and every slice was delivered."""
    core = Core(str(tmp_path / "core.db"))
    try:
        stream, got, locked = _bought(core, _compute_app(core, Slices(seconds=0.25), source))
        assert locked == stream.slices * CENT
        assert stream.id is not None
        outcomes = [r.outcome for r in Streams(core).slices(stream.id)]
        assert outcomes == ["delivered"] * stream.slices
    finally:
        core.close()
    return stream, got


def test_a_source_slower_than_a_slice_of_seconds_is_read_whole(tmp_path: Any) -> None:
    """A slice of seconds runs until its first event at least: a source slower than the
    slice was asked for the next payment before anything was delivered, which the buyer
    client (rightly) refuses, so such a stream could not be read at all."""

    async def slow() -> Any:
        for i in range(3):
            await asyncio.sleep(0.4)
            yield {"step": i}

    stream, got = _time_sliced(tmp_path, slow)
    assert [e["step"] for e in got] == [0, 1, 2] and stream.ended == "complete"


@pytest.mark.parametrize(
    ("slices", "fail_at", "ended", "events", "charged"),
    [
        (Slices(units=2), 3, "source_failed", 3, 2),  # fails in slice 2: both slices started
        (Slices(units=2), 2, "source_failed", 2, 1),  # fails before slice 2 was asked for
        (Slices(units=2, max_slices=2), None, "max_slices", 4, 2),
    ],
)
def test_a_stream_ends_with_its_reason_and_charges_only_slices_started(
    tmp_path: Any, slices: Slices, fail_at: int | None, ended: str, events: int, charged: int
) -> None:

    async def steps() -> Any:
        for i in range(9):
            if i == fail_at:
                raise RuntimeError("the model crashed")
            yield {"step": i}

    core = Core(str(tmp_path / "core.db"))
    try:
        stream, got, locked = _bought(core, _compute_app(core, slices, steps))
        assert [e["step"] for e in got] == list(range(events))
        assert (stream.ended, stream.slices) == (ended, charged)
        assert locked == charged * CENT
    finally:
        core.close()


def test_settle_after_a_slice_is_settled_at_its_pay_url(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, **metered()}, settle="after")
    buyer = kit.funded(seller)
    stream, got = read_stream(seller, buyer, 5)
    assert got == [{"tick": i} for i in range(5)]
    assert (stream.ended, stream.slices) == ("complete", 3)
    assert kit.locked(seller, buyer) == 3 * CENT
    assert stream.id is not None
    outcomes = [r.outcome for r in Streams(seller.core).slices(stream.id)]
    assert outcomes == ["delivered"] * 3


def test_settle_after_the_after_settle_hook_runs_for_every_slice(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """Settle-after mode runs ``after_settle`` as a payment settles: a later slice is settled
    at its pay URL, where the hook was never called, so the seller's bookkeeping saw slice 1
    only. A hook that raises there gives the slice back, as for any paid request."""
    seen: list[Any] = []
    seller = make_seller(
        routes={**base_routes, **metered()},
        settle="after",
        after_settle=lambda request, result: seen.append(result.guarantee_id),
    )
    buyer = kit.funded(seller)
    stream, _ = read_stream(seller, buyer, 5)
    assert (stream.ended, stream.slices) == ("complete", 3)
    assert len(seen) == len(set(seen)) == 3 and kit.locked(seller, buyer) == 3 * CENT

    def failing(request: Any, result: Any) -> None:
        if "/streams/" in request.path:  # a later slice, at its pay URL
            raise RuntimeError("the seller's bookkeeping is down")

    seller = make_seller(routes={**base_routes, **metered()}, settle="after", after_settle=failing)
    buyer = kit.funded(seller)
    with pytest.raises(StreamFailed, match="answered 503"):
        read_stream(seller, buyer, 5)
    assert kit.locked(seller, buyer) == CENT  # slice 1 only: slice 2 was given back


@pytest.mark.parametrize(
    "meter",
    [
        'event: payment-required\ndata: {"pay": "http://elsewhere.test/streams/s1/pay"}',
        'event: payment-required\ndata: {"pay": "//elsewhere.test/streams/s1/pay"}',
        'event: payment-required\ndata: {"pay": "https://seller.test/streams/s1/pay"}',
        'event: payment-required\ndata: {"pay": 5}',
        "event: payment-required\ndata: {not json",
        "event: payment-required\ndata: [1]",
        'event: end\ndata: {"slices": "many"}',
        "event: stream\ndata: " + "[" * 100_000,
    ],
    ids=[
        "other-host",
        "scheme-relative",
        "other-scheme",
        "not-a-url",
        "not-json",
        "a-list",
        "bad-slices",
        "deep-json",
    ],
)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_hostile_meter_event_fails_the_stream_and_pays_nowhere(
    meter: str, is_async: bool
) -> None:
    """A seller (here a hostile one, outside the machine) cannot send the buyer's payment, or
    the client's credentials, to another origin, nor crash the stream with a bad event."""
    sent: list[str] = []
    body = f'event: stream\ndata: {{"stream": "s1"}}\n\ndata: {{"tick": 0}}\n\n{meter}\n\n'

    def seller(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.method} {request.url}")
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)

    key, headers = TestBuyer.new().key, {"authorization": "Bearer secret"}
    got: list[Any] = []
    with pytest.raises(StreamFailed):
        if is_async:

            async def read() -> None:
                transport = AsyncPaymentTransport(key, transport=httpx.MockTransport(seller))
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://seller.test", headers=headers
                ) as client:
                    async for event in AsyncPaidStream(client, "GET", "/ticks"):
                        got.append(event.json())

            asyncio.run(read())
        else:
            transport = PaymentTransport(key, transport=httpx.MockTransport(seller))
            with httpx.Client(
                transport=transport, base_url="http://seller.test", headers=headers
            ) as client:
                got.extend(event.json() for event in PaidStream(client, "GET", "/ticks"))
    assert sent == ["GET http://seller.test/ticks"]  # nothing posted anywhere
    assert got == [{"tick": 0}]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_slice_that_delivered_nothing_is_not_followed_by_another_payment(
    is_async: bool,
) -> None:
    """A seller (hostile, outside the machine) asking for slice after slice with no event in
    between gets one payment; the slice count stays the buyer's own, whatever ``end`` says."""
    sent: list[str] = []
    pay = 'event: payment-required\ndata: {"pay": "/x402/streams/s1/pay"}\n\n'
    tick = 'data: {"tick": 0}\n\n'
    bodies = {
        "/empty": f'event: stream\ndata: {{"stream": "s1"}}\n\n{tick}{pay}{pay}{pay}',
        "/boast": f'event: stream\ndata: {{"stream": "s1"}}\n\n{tick}{pay}{tick}'
        'event: end\ndata: {"reason": "complete", "slices": 99}\n\n',
    }

    def seller(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.method} {request.url.path}")
        text = bodies.get(request.url.path, "")
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=text)

    key = TestBuyer.new().key

    def read(path: str) -> tuple[list[Any], Any]:
        got: list[Any] = []
        if is_async:

            async def run() -> Any:
                transport = AsyncPaymentTransport(key, transport=httpx.MockTransport(seller))
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://seller.test"
                ) as client:
                    stream = AsyncPaidStream(client, "GET", path)
                    async for event in stream:
                        got.append(event.json())
                    return stream

            return got, asyncio.run(run())
        transport = PaymentTransport(key, transport=httpx.MockTransport(seller))
        with httpx.Client(transport=transport, base_url="http://seller.test") as client:
            stream = PaidStream(client, "GET", path)
            got.extend(event.json() for event in stream)
            return got, stream

    with pytest.raises(StreamFailed, match="before slice 2 delivered any event"):
        read("/empty")
    assert sent == ["GET /empty", "POST /x402/streams/s1/pay"]  # slice 2 paid, slice 3 not
    sent.clear()
    got, stream = read("/boast")
    assert got == [{"tick": 0}, {"tick": 0}]
    assert stream.slices == 2 and stream.ended == "complete"


def test_an_event_text_holding_carriage_returns_stays_one_event() -> None:
    """An SSE reader ends a line at CR, LF or CRLF: a bare CR in a source's text forged
    events at the buyer (a fake ``end``). Every line of the text is a ``data:`` line; a
    name or id holding a line break is refused."""
    from fourmica_x402.gate.sse import sse

    forged = 'tick\revent: end\rdata: {"reason": "complete"}\r\nmore'
    assert sse(None, forged) == (
        b'data: tick\ndata: event: end\ndata: data: {"reason": "complete"}\ndata: more\n\n'
    )
    for name, event_id in (("message\revent: end", None), ("message", "1\n"), ("a\nb", None)):
        with pytest.raises(ValueError, match="line break"):
            sse(name, "x", event_id)


def test_a_slice_paid_ahead_is_held_open_while_the_slice_before_it_streams(
    tmp_path: Any,
) -> None:
    """A slice paid at its pay URL while the one before it still streams: that slice may
    outlast the validation timeout (2 s here, an hour by default); the paid-ahead slice's
    guarantee is held open until it is charged, not cancelled under it and sent unpaid."""
    from fourmica_x402.core import CoreConfig

    async def slow() -> Any:
        for i in range(4):
            await asyncio.sleep(1.5)  # slice 1 (two events) lasts 3 s
            yield {"tick": i}

    core = Core(str(tmp_path / "core.db"), config=CoreConfig(validation_timeout=2.0))
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    try:
        app = _compute_app(core, Slices(units=2, pay_timeout=10), slow)
        with (
            harness.loopback(app, "asgi") as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            opening = paid_header(client, buyer, "/compute")
            with client.stream("GET", "/compute", headers=opening) as response:
                seen = events(response)
                name, opened = next(seen)
                assert name == "stream"
                ahead = f"/x402/streams/{opened['stream']}/2"
                paid = client.post(ahead, headers=paid_header(client, buyer, ahead, "POST"))
                assert paid.status_code == 200, paid.text
                rest = list(seen)
        assert [d["tick"] for n, d in rest if n == "message"] == [0, 1, 2, 3]
        core.tick()  # past every deadline it would have had: nothing delivered is cancelled
        assert sorted(g.state for g in core.guarantees()) == ["payable", "payable"]
        assert core.position(buyer.address, network=NETWORK).locked == 2 * CENT
    finally:
        core.close()


def _hostile_challenge(amount: str = "10000", pay_to: str = "0x" + "ab" * 20) -> str:
    """A PAYMENT-REQUIRED header of a seller outside the machine (http://seller.test/s)."""
    offer = {
        "scheme": "4mica-credit",
        "network": NETWORK,
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "amount": amount,
        "payTo": pay_to,
        "maxTimeoutSeconds": 300,
        "extra": {"tabEndpoint": "http://seller.test/tab"},
    }
    required = {"x402Version": 2, "accepts": [offer], "resource": {"url": "http://seller.test/s"}}
    return base64.b64encode(json.dumps(required).encode()).decode()


def test_the_stop_of_a_refused_slice_is_never_paid() -> None:
    """When a slice's payment is refused (here the seller answers it 402 again), the stream is
    stopped with a DELETE: a seller answering that stop with a 402 got it paid."""
    challenge = _hostile_challenge()
    body = (
        'event: stream\ndata: {"stream": "abc"}\n\ndata: {"tick": 0}\n\n'
        'event: payment-required\ndata: {"pay": "http://seller.test/streams/abc/2"}\n\n'
    )
    paid: list[str] = []

    def seller(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tab":
            user = json.loads(request.content)["userAddress"]
            answer = {"tabId": "0x1", "nextReqId": hex(len(paid) + 1), "userAddress": user}
            return httpx.Response(200, json=answer)
        if "payment-signature" in request.headers:
            paid.append(f"{request.method} {request.url.path}")
            if request.url.path == "/s":
                return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)
        return httpx.Response(402, headers={"payment-required": challenge})  # the stop too

    transport = PaymentTransport(TestBuyer.new().key, transport=httpx.MockTransport(seller))
    client = httpx.Client(transport=transport, base_url="http://seller.test")
    with client, pytest.raises(PaymentRefused):  # slice 2's payment is refused: 402 again
        list(PaidStream(client, "GET", "/s"))
    assert paid == ["GET /s", "POST /streams/abc/2"]  # never the stop


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_slice_payment_redirected_to_another_origin_fails_the_stream(is_async: bool) -> None:
    """A pay URL is paid on the stream's origin only: a seller (hostile, outside the machine)
    answering it with a redirect elsewhere got that origin's 402 paid, with the client's
    credentials, by a client that follows redirects. The 3xx fails the stream now."""
    challenge = _hostile_challenge()
    body = (
        'event: stream\ndata: {"stream": "abc"}\n\ndata: {"tick": 0}\n\n'
        'event: payment-required\ndata: {"pay": "/streams/abc/2"}\n\n'
    )
    sent: list[str] = []
    other: list[str] = []

    def seller(request: httpx.Request) -> httpx.Response:
        if request.url.host != "seller.test":
            other.append(f"{request.method} {request.url}")
            return httpx.Response(402, headers={"payment-required": challenge})
        sent.append(f"{request.method} {request.url.path}")
        if request.url.path == "/tab":
            user = json.loads(request.content)["userAddress"]
            return httpx.Response(
                200, json={"tabId": "0x1", "nextReqId": hex(len(sent)), "userAddress": user}
            )
        if request.url.path.startswith("/streams/"):
            return httpx.Response(307, headers={"location": "http://other.test/collect"})
        if "payment-signature" in request.headers:
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)
        return httpx.Response(402, headers={"payment-required": challenge})

    key, options = TestBuyer.new().key, {"base_url": "http://seller.test", "follow_redirects": True}
    options["headers"] = {"authorization": "Bearer secret"}
    with pytest.raises(StreamFailed, match="answered 307"):
        if is_async:

            async def read() -> None:
                transport = AsyncPaymentTransport(key, transport=httpx.MockTransport(seller))
                async with httpx.AsyncClient(transport=transport, **options) as client:
                    async for _ in AsyncPaidStream(client, "GET", "/s"):
                        pass

            asyncio.run(read())
        else:
            transport = PaymentTransport(key, transport=httpx.MockTransport(seller))
            with httpx.Client(transport=transport, **options) as client:
                list(PaidStream(client, "GET", "/s"))
    assert other == []  # nothing, not even the credentials, went to the other origin
    assert sent[-1] == "POST /streams/abc/2"


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_stream_redirected_to_another_origin_pays_no_slice_there(is_async: bool) -> None:
    """The buyer asks seller.test for the stream, which redirects it to other.test; httpx
    drops the client's credentials on that hop, but slices were paid at the final origin,
    with them. A later slice is paid on the origin the buyer asked only; a redirect within
    that origin still streams and pays as before."""
    sent: list[tuple[str, str | None]] = []
    body = (
        'event: stream\ndata: {"stream": "s1"}\n\ndata: {"tick": 0}\n\n'
        'event: payment-required\ndata: {"pay": "/streams/s1/2"}\n\ndata: {"tick": 1}\n\n'
        'event: end\ndata: {"reason": "complete", "slices": 2}\n\n'
    )

    def seller(request: httpx.Request) -> httpx.Response:
        sent.append((f"{request.method} {request.url}", request.headers.get("authorization")))
        if request.url.path == "/away":
            return httpx.Response(302, headers={"location": "http://other.test/s"})
        if request.url.path == "/here":
            return httpx.Response(302, headers={"location": "/s"})
        if request.url.path == "/s":
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)
        return httpx.Response(200, json={})  # a slice's pay URL (free here)

    key, options = TestBuyer.new().key, {"base_url": "http://seller.test", "follow_redirects": True}
    options["headers"] = {"authorization": "Bearer secret"}

    def read(path: str) -> list[Any]:
        got: list[Any] = []
        if is_async:

            async def run() -> None:
                transport = AsyncPaymentTransport(key, transport=httpx.MockTransport(seller))
                async with httpx.AsyncClient(transport=transport, **options) as client:
                    async for event in AsyncPaidStream(client, "GET", path):
                        got.append(event.json())

            asyncio.run(run())
        else:
            transport = PaymentTransport(key, transport=httpx.MockTransport(seller))
            with httpx.Client(transport=transport, **options) as client:
                got.extend(event.json() for event in PaidStream(client, "GET", path))
        return got

    with pytest.raises(StreamFailed, match="redirected to another origin"):
        read("/away")
    assert sent == [
        ("GET http://seller.test/away", "Bearer secret"),
        ("GET http://other.test/s", None),  # httpx's own redirect: no credentials
    ]  # nothing posted there, neither a payment nor a stop
    sent.clear()
    assert read("/here") == [{"tick": 0}, {"tick": 1}]
    assert [line for line, _ in sent] == [
        "GET http://seller.test/here",
        "GET http://seller.test/s",
        "POST http://seller.test/streams/s1/2",
    ]


@pytest.mark.parametrize("after_stop", ["keep-alive", "silence"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_seller_ignoring_the_stop_holds_the_buyer_only_a_short_while(
    after_stop: str, is_async: bool
) -> None:
    """The policy refuses slice 2 and the buyer stops the stream; a seller (hostile, on a real
    socket) ignoring the stop, with a keep-alive comment each 0.2 s (no event the caller
    could break on) or with nothing at all, held the buyer for as long as it liked, the
    refusal never raised. The buyer now waits its ``stop_grace`` (or one read timeout) for
    the ``end`` event, then closes the stream and raises the refusal."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    stops: list[float] = []

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> Any:
            yield b'event: stream\ndata: {"stream": "s1"}\n\ndata: {"tick": 0}\n\n'
            yield b'event: payment-required\ndata: {"pay": "/streams/s1/2"}\n\n'
            for _ in range(75):  # 15 s, then it ends (without an end event)
                await asyncio.sleep(0.2)
                if after_stop == "keep-alive":
                    yield b": keep-alive\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def pay(request: Request) -> Response:  # slice 2: over the buyer's cap
        return Response(status_code=402, headers={"payment-required": _hostile_challenge()})

    async def stop(request: Request) -> Response:
        stops.append(time.monotonic())
        return Response(status_code=204)

    app = Starlette(
        routes=[
            Route("/s", stream),
            Route("/streams/s1/2", pay, methods=["POST"]),
            Route("/streams/s1", stop, methods=["DELETE"]),
        ]
    )
    key, policy = TestBuyer.new().key, SpendingPolicy(max_per_request="$0.001")
    got: list[Any] = []
    with harness.loopback(app, "asgi") as url, pytest.raises(PaymentRefused):
        options: dict[str, Any] = {"base_url": url, "timeout": 1.0}
        if is_async:

            async def read() -> None:
                transport = AsyncPaymentTransport(key, policy=policy)
                async with httpx.AsyncClient(transport=transport, **options) as client:
                    stream = AsyncPaidStream(client, "GET", "/s")
                    stream.stop_grace = 1.0
                    async for event in stream:
                        got.append(event.json())

            asyncio.run(read())
        else:
            transport = PaymentTransport(key, policy=policy)
            with httpx.Client(transport=transport, **options) as client:
                stream = PaidStream(client, "GET", "/s")
                stream.stop_grace = 1.0
                got.extend(event.json() for event in stream)
    assert len(stops) == 1 and time.monotonic() - stops[0] < 5  # not the seller's 15 s
    assert got == [{"tick": 0}]


@pytest.mark.parametrize("slow", ["pay", "stop"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_slices_payment_or_stop_answered_a_byte_at_a_time_does_not_hold_the_buyer(
    slow: str, is_async: bool
) -> None:
    """The answers to a slice's payment (POST) and to the stop (DELETE) were read whole with
    no bound: a seller (hostile, on a real socket) sending their bodies a byte just within
    each read's timeout held the buyer for as long as it liked. A payment's answer is read
    bounded now (``httpx.ReadTimeout`` at the read timeout, docs/buyer.md, "Challenges"); the
    stop's is not read: the buyer waits ``stop_grace`` for the stream's end, no longer."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    async def drip() -> Any:
        for _ in range(40):  # 10 s, each byte well within the read timeout
            await asyncio.sleep(0.25)
            yield b" "
        yield b"{}"

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> Any:
            yield b'event: stream\ndata: {"stream": "s1"}\n\ndata: {"tick": 0}\n\n'
            yield b'event: payment-required\ndata: {"pay": "/streams/s1/2"}\n\n'
            for _ in range(75):  # 15 s, then it ends (without an end event)
                await asyncio.sleep(0.2)
                yield b": keep-alive\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def pay(request: Request) -> Response:  # free (slow) or over the buyer's cap (stop)
        if slow == "pay":
            return StreamingResponse(drip(), media_type="application/json")
        return Response(status_code=402, headers={"payment-required": _hostile_challenge()})

    async def stop(request: Request) -> Response:
        return StreamingResponse(drip(), media_type="application/json")

    app = Starlette(
        routes=[
            Route("/s", stream),
            Route("/streams/s1/2", pay, methods=["POST"]),
            Route("/streams/s1", stop, methods=["DELETE"]),
        ]
    )
    key, policy = TestBuyer.new().key, SpendingPolicy(max_per_request="$0.001")
    # a stream opened unpaid pays no slice: its 402 is refused (PaymentFailed), then stopped
    raised: type[Exception] = httpx.ReadTimeout if slow == "pay" else PaymentRefused
    with harness.loopback(app, "asgi") as url, pytest.raises(raised):
        options: dict[str, Any] = {"base_url": url, "timeout": 1.0}
        started = time.monotonic()
        if is_async:

            async def read() -> None:
                transport = AsyncPaymentTransport(key, policy=policy)
                async with httpx.AsyncClient(transport=transport, **options) as client:
                    stream = AsyncPaidStream(client, "GET", "/s")
                    stream.stop_grace = 1.0
                    async for _ in stream:
                        pass

            asyncio.run(read())
        else:
            transport = PaymentTransport(key, policy=policy)
            with httpx.Client(transport=transport, **options) as client:
                stream = PaidStream(client, "GET", "/s")
                stream.stop_grace = 1.0
                list(stream)
    assert time.monotonic() - started < 6  # not the seller's 10 s


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_garbled_answer_to_the_stop_still_raises_the_refusal(is_async: bool) -> None:
    """The buyer refuses slice 2 (the stream opened unpaid: no terms) and stops the stream; the
    seller answers the stop with a body labelled gzip that is not: httpx's DecodingError (no
    TransportError) reached the caller instead of the refusal (docs/buyer.md, "Metered
    streams")."""
    body = (
        'event: stream\ndata: {"stream": "s1"}\n\ndata: {"tick": 0}\n\n'
        'event: payment-required\ndata: {"pay": "/streams/s1/2"}\n\n'
        'event: end\ndata: {"reason": "buyer_stopped", "slices": 1}\n\n'
    )
    stops: list[str] = []

    def seller(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            stops.append(request.url.path)
            return httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"not gzip")
        if request.url.path == "/s":
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)
        return httpx.Response(402, headers={"payment-required": _hostile_challenge()})

    with pytest.raises(PaymentRefused):
        _read_hostile(seller, SpendingPolicy(max_per_request="$0.001"), is_async)
    assert stops == ["/streams/s1"]


def _read_hostile(
    seller: Any, policy: SpendingPolicy, is_async: bool, got: list[Any] | None = None
) -> None:
    """Read the stream at ``/s`` of ``seller`` (a MockTransport handler) to its end, paying
    under ``policy``; each event's JSON goes to ``got``."""
    key, options = TestBuyer.new().key, {"base_url": "http://seller.test"}
    sink = got if got is not None else []
    if is_async:

        async def read() -> None:
            inner = httpx.MockTransport(seller)
            transport = AsyncPaymentTransport(key, policy=policy, transport=inner)
            async with httpx.AsyncClient(transport=transport, **options) as client:
                async for event in AsyncPaidStream(client, "GET", "/s"):
                    sink.append(event.json())

        asyncio.run(read())
    else:
        transport = PaymentTransport(key, policy=policy, transport=httpx.MockTransport(seller))
        with httpx.Client(transport=transport, **options) as client:
            sink.extend(event.json() for event in PaidStream(client, "GET", "/s"))


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    "terms", [("50000", "0x" + "ab" * 20), ("10000", "0x" + "cd" * 20)], ids=["price", "payTo"]
)
def test_a_later_slice_is_paid_only_on_the_terms_of_the_first(
    terms: tuple[str, str], is_async: bool
) -> None:
    """A seller (hostile, outside the machine) selling slice 1 at $0.01 asked $0.05 for slice
    2, or named another payTo: the buyer paid it, within its per-request cap, though a stream's
    price is fixed. Now the slice is refused (PaymentFailed) and the stream stopped."""
    body = (
        'event: stream\ndata: {"stream": "s1"}\n\ndata: {"tick": 0}\n\n'
        'event: payment-required\ndata: {"pay": "/streams/s1/2"}\n\ndata: {"tick": 1}\n\n'
        'event: end\ndata: {"reason": "complete", "slices": 2}\n\n'
    )
    paid: list[tuple[str, str, str]] = []

    def seller(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tab":
            user = json.loads(request.content)["userAddress"]
            answer = {"tabId": "0x1", "nextReqId": hex(len(paid) + 1), "userAddress": user}
            return httpx.Response(200, json=answer)
        if request.method == "DELETE":
            return httpx.Response(200)
        if "payment-signature" in request.headers:
            accepted = json.loads(base64.b64decode(request.headers["payment-signature"]))
            offer = accepted["accepted"]
            paid.append((request.url.path, offer["amount"], offer["payTo"]))
            if request.url.path == "/s":
                return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)
            return httpx.Response(200, json={"paid": True})
        if request.url.path == "/s":
            return httpx.Response(402, headers={"payment-required": _hostile_challenge()})
        return httpx.Response(402, headers={"payment-required": _hostile_challenge(*terms)})

    policy, got = SpendingPolicy(max_per_request="$0.05"), []
    with pytest.raises(PaymentFailed, match="no offer on the stream's terms"):
        _read_hostile(seller, policy, is_async, got)
    assert paid == [("/s", "10000", "0x" + "ab" * 20)]  # slice 1 only
    assert got[0] == {"tick": 0}
    assert policy.spent("0x036CbD53842c5426634e7929541eC2318f3dCF7e") == 10_000


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_first_slice_said_refunded_still_fixes_the_streams_terms(is_async: bool) -> None:
    """A seller (hostile, outside the machine) answering slice 1's payment with its events and
    a result saying "refunded" (success false) left the buyer with no terms: it then asked
    $0.05 for slice 2 and the buyer paid it, 5 times slice 1's price. The signed slice 1 fixes
    the terms whatever the seller says became of it."""
    body = (
        'event: stream\ndata: {"stream": "s1"}\n\ndata: {"tick": 0}\n\n'
        'event: payment-required\ndata: {"pay": "/streams/s1/2"}\n\ndata: {"tick": 1}\n\n'
        'event: end\ndata: {"reason": "complete", "slices": 2}\n\n'
    )
    said = {"success": False, "errorReason": "refunded", "transaction": "", "network": NETWORK}
    refunded = base64.b64encode(json.dumps(said).encode()).decode()
    paid: list[tuple[str, str]] = []

    def seller(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tab":
            user = json.loads(request.content)["userAddress"]
            answer = {"tabId": "0x1", "nextReqId": hex(len(paid) + 1), "userAddress": user}
            return httpx.Response(200, json=answer)
        if request.method == "DELETE":
            return httpx.Response(200)
        if "payment-signature" in request.headers:
            accepted = json.loads(base64.b64decode(request.headers["payment-signature"]))
            paid.append((request.url.path, accepted["accepted"]["amount"]))
            if request.url.path == "/s":
                headers = {"content-type": "text/event-stream", "payment-response": refunded}
                return httpx.Response(200, headers=headers, text=body)
            return httpx.Response(200, json={"paid": True})
        price = "10000" if request.url.path == "/s" else "50000"
        return httpx.Response(402, headers={"payment-required": _hostile_challenge(price)})

    policy, got = SpendingPolicy(max_per_request="$0.05"), []
    with pytest.raises(PaymentFailed, match="no offer on the stream's terms"):
        _read_hostile(seller, policy, is_async, got)
    assert paid == [("/s", "10000")]  # slice 1 only
    assert got[0] == {"tick": 0}
    assert policy.spent("0x036CbD53842c5426634e7929541eC2318f3dCF7e") == 10_000


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_stream_opened_unpaid_pays_no_later_slice(is_async: bool) -> None:
    """A seller (hostile, outside the machine) opening its stream free, with no 402, then
    asking $0.05 to another payTo for slice 2 was paid: with no first slice paid, no terms
    held. A stream whose first slice was not paid pays no later slice: refused before a tab is
    opened, and the stream stopped."""
    body = (
        'event: stream\ndata: {"stream": "s1"}\n\ndata: {"tick": 0}\n\n'
        'event: payment-required\ndata: {"pay": "/streams/s1/2"}\n\ndata: {"tick": 1}\n\n'
        'event: end\ndata: {"reason": "complete", "slices": 2}\n\n'
    )
    asked: list[str] = []

    def seller(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path}")
        if request.url.path == "/tab":
            user = json.loads(request.content)["userAddress"]
            return httpx.Response(
                200, json={"tabId": "0x1", "nextReqId": "0x1", "userAddress": user}
            )
        if request.url.path == "/s":
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)
        if "payment-signature" in request.headers:
            return httpx.Response(200, json={"paid": True})
        challenge = _hostile_challenge("50000", "0x" + "cd" * 20)
        return httpx.Response(402, headers={"payment-required": challenge})

    policy, got = SpendingPolicy(max_per_request="$0.05"), []
    with pytest.raises(PaymentFailed, match="its first slice was not paid"):
        _read_hostile(seller, policy, is_async, got)
    assert asked == ["GET /s", "POST /streams/s1/2", "DELETE /streams/s1"]  # no tab opened
    assert got[0] == {"tick": 0}
    assert policy.spent("0x036CbD53842c5426634e7929541eC2318f3dCF7e") == 0


@pytest.mark.parametrize(
    "body",
    [
        b"data: " + b"x" * (2 * 1024 * 1024),  # one endless line
        b"data: x\n" * (300 * 1024),  # one endless event of short lines
    ],
    ids=["line", "event"],
)
def test_a_huge_event_fails_the_stream_instead_of_filling_memory(body: bytes) -> None:
    """One event of the seller's was read whole, whatever its size (200 MiB: 404 MiB)."""
    opened = b'event: stream\ndata: {"stream": "s1"}\n\ndata: {"tick": 0}\n\n'

    def seller(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=opened + body
        )

    transport = PaymentTransport(TestBuyer.new().key, transport=httpx.MockTransport(seller))
    client = httpx.Client(transport=transport, base_url="http://seller.test")
    with client, pytest.raises(StreamFailed, match="an event larger than"):
        for _ in PaidStream(client, "GET", "/ticks"):
            pass


class _Bomb(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A stream's body in nested gzip, 16 MiB of one event packed in a few kilobytes; says
    whether it was read."""

    def __init__(self) -> None:
        import zlib

        self.read = False
        inner = zlib.compressobj(9, zlib.DEFLATED, 31)
        packed = inner.compress(b"data: ") + b"".join(
            inner.compress(b"A" * (1 << 20)) for _ in range(16)
        )
        outer = zlib.compressobj(9, zlib.DEFLATED, 31)
        self.data = outer.compress(packed + inner.flush()) + outer.flush()

    def __iter__(self) -> Any:
        self.read = True
        yield self.data

    async def __aiter__(self) -> Any:
        self.read = True
        yield self.data


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_compressed_stream_is_refused_before_anything_is_unpacked(is_async: bool) -> None:
    """httpx unpacks each chunk whole: a stream in nested gzip ("gzip, gzip") of 427 bytes
    unpacked to 300 MiB before the parser's 1 MiB event limit looked at it. The buyer asks
    for the stream unpacked (``Accept-Encoding: identity``) and refuses one in a content
    coding (docs/buyer.md, "Metered streams")."""
    bomb, asked = _Bomb(), []

    def seller(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("accept-encoding"))
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip, gzip"}
        return httpx.Response(200, headers=headers, stream=bomb)

    key = TestBuyer.new().key
    with pytest.raises(StreamFailed, match="gzip, gzip"):
        if is_async:

            async def read() -> None:
                transport = AsyncPaymentTransport(key, transport=httpx.MockTransport(seller))
                async with httpx.AsyncClient(transport=transport) as client:
                    async for _ in AsyncPaidStream(client, "GET", "http://seller.test/s"):
                        pass

            asyncio.run(read())
        else:
            transport = PaymentTransport(key, transport=httpx.MockTransport(seller))
            with httpx.Client(transport=transport) as client:
                list(PaidStream(client, "GET", "http://seller.test/s"))
    assert asked == ["identity"] and not bomb.read


def test_events_split_anywhere_across_chunks_read_the_same() -> None:
    """Lines end at CR, LF or CRLF, a CRLF split between two chunks included."""
    from fourmica_x402.client.streams import _Parser

    body = (
        'event: stream\r\ndata: {"stream": "s1"}\r\n\r\ndata: a\rdata: b\n\nid: 7\ndata: c\r\n\r\n'
    )
    whole = [(e.event, e.data) for e in _Parser().events(body.encode(), last=True)]
    assert whole == [("stream", '{"stream": "s1"}'), ("message", "a\nb"), ("message", "c")]
    for cut in range(1, len(body)):
        parser = _Parser()
        events = [*parser.events(body[:cut].encode()), *parser.events(body[cut:].encode())]
        events += parser.events(b"", last=True)
        assert [(e.event, e.data) for e in events] == whole, cut


def test_a_repricing_leaves_a_stream_already_open_at_its_price(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """A stream's terms are its first slice's: repricing the route mid-stream charged its
    later slices the new price while its own events still asked the old one (and a payment
    at the price asked was refused). New streams take the new price."""
    token = "test-admin-token"  # a throwaway token for this test
    seller = make_seller(routes={**base_routes, **metered(pay_timeout=10.0)}, admin_token=token)
    buyer = kit.funded(seller)
    with served(seller) as client:
        opening = paid_header(client, buyer, "/stream?n=4")
        with client.stream("GET", "/stream?n=4", headers=opening) as response:
            seen = events(response)
            asked = next(e for e in seen if e[0] == "payment-required")
            assert asked[1]["amount"] == str(CENT)
            repriced = client.post(
                "/x402/admin/prices",
                json={"prices": {"GET /stream": "$0.05"}},
                headers={"authorization": f"Bearer {token}"},
            )
            assert repriced.status_code == 200, repriced.text
            challenge = client.post(asked[1]["pay"])
            (offer,) = decode_payment_required(challenge.headers["payment-required"]).accepts
            assert offer.amount == str(CENT)  # the stream's price, as its event said
            paying = paid_header(client, buyer, asked[1]["pay"], "POST")
            assert client.post(asked[1]["pay"], headers=paying).status_code == 200
            rest = list(seen)
        assert rest[-1] == ("end", {"reason": "complete", "slices": 2})
        fresh = client.get("/stream?n=2")
        (offer,) = decode_payment_required(fresh.headers["payment-required"]).accepts
        assert offer.amount == str(5 * CENT)  # a new stream: the new price
    assert kit.locked(seller, buyer) == 2 * CENT


def _two_token_seller(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any, Any]:
    """A seller whose ``GET /stream`` (2 units a slice) is sold at $0.01 in USDC or 10**16 wei
    of a WETH registered for the test, a buyer funded in both, and the WETH asset."""
    from fourmica_x402 import networks
    from fourmica_x402.networks import TokenAmount
    from fourmica_x402.routes import Offer, RouteConfig

    monkeypatch.setattr(networks, "_assets", {k: dict(v) for k, v in networks._assets.items()})
    weth = networks.register_asset(NETWORK, "0x" + "ee" * 20, symbol="WETH", decimals=18)
    pay_to = TestBuyer.new().address
    route = RouteConfig(
        accepts=(
            Offer("$0.01", NETWORK, pay_to),
            Offer(TokenAmount(10**16, weth.address), NETWORK, pay_to),
        ),
        slices=Slices(units=2, pay_timeout=10.0),
    )
    seller = make_seller(routes={**base_routes, "GET /stream": route})
    buyer = kit.funded(seller)
    seller.core.deposit(buyer.address, 10**18, network=NETWORK, asset=weth.address)
    return seller, buyer, weth


@pytest.mark.parametrize("kind", ["starlette"])  # pricing is the gate's: one adapter is enough
def test_each_offer_of_a_metered_route_keeps_its_own_price_per_slice(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A metered route sold in two tokens: a later slice may be paid in either, each at its
    own price (a slice was once offered at the first slice's amount in every token, and
    10 000 wei bought a slice priced 10**16)."""
    seller, buyer, weth = _two_token_seller(make_seller, base_routes, kit, monkeypatch)
    with served(seller) as client:

        def pay_in(asset: str, method: str, path: str) -> dict[str, str]:
            challenge = client.request(method, path)
            offers = decode_payment_required(challenge.headers["payment-required"]).accepts
            assert {(o.asset, o.amount) for o in offers} == {
                (default_asset(NETWORK).address, str(CENT)),
                (weth.address, str(10**16)),
            }
            offer = next(o for o in offers if o.asset == asset)
            body = {"x402Version": 2, "userAddress": buyer.address}
            tab = client.post("/x402/tab", json={**body, "paymentRequirements": offer.to_dict()})
            name, value = payment_header(buyer, offer, tab.json())
            return {name: value}

        opening = pay_in(default_asset(NETWORK).address, "GET", "/stream?n=4")
        with client.stream("GET", "/stream?n=4", headers=opening) as response:
            seen = events(response)
            pay = next(e for e in seen if e[0] == "payment-required")[1]["pay"]
            assert client.post(pay, headers=pay_in(weth.address, "POST", pay)).status_code == 200
            list(seen)
    locked = seller.core.position(buyer.address, network=NETWORK, asset=weth.address).locked
    assert locked == 10**16


def test_a_stream_opened_in_its_second_token_asks_each_slice_in_that_token(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A metered route sold in USDC and WETH, opened in WETH: each ``payment-required`` event
    named the first offer's terms (0.01 USDC) whatever the stream was opened in, and another
    process of the seller sells a slice only in the first slice's token and at its amount: a
    buyer paying the terms the event said was refused there. The event names the first slice's
    terms (docs/protocol.md, "Metered streams")."""
    seller, buyer, weth = _two_token_seller(make_seller, base_routes, kit, monkeypatch)
    with served(seller) as client:
        challenge = client.get("/stream?n=4")
        offers = decode_payment_required(challenge.headers["payment-required"]).accepts
        offer = next(o for o in offers if o.asset == weth.address)
        body = {"x402Version": 2, "userAddress": buyer.address}
        tab = client.post("/x402/tab", json={**body, "paymentRequirements": offer.to_dict()})
        name, value = payment_header(buyer, offer, tab.json())
        with client.stream("GET", "/stream?n=4", headers={name: value}) as response:
            asked = next(data for event, data in events(response) if event == "payment-required")
            client.delete(asked["pay"].rsplit("/", 1)[0])
    assert (asked["asset"], asked["amount"], asked["network"]) == (
        weth.address,
        str(10**16),
        NETWORK,
    )


@pytest.mark.parametrize("kind", ["starlette"])  # a cancelled request: an ASGI task
@pytest.mark.parametrize("apart", [False, True], ids=["records-in-core", "records-apart"])
def test_a_slice_whose_pay_request_is_cancelled_during_its_settle_is_not_charged(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, tmp_path: Any, apart: bool
) -> None:
    """Settle-after: a later slice's pay request cancelled while its settle ran in a worker
    thread (async Django cancels the view of a client that left) left the settle to go on,
    accepted, with nothing to refund it: a slice charged and never sent."""
    from fourmica_x402.testing import http_scope, slowed_settle

    extra = {"records": str(tmp_path / "records.db")} if apart else {}
    seller = make_seller(
        routes={**base_routes, **metered(pay_timeout=4.0)}, settle="after", **extra
    )
    gate = seller.gate
    buyer = kit.funded(seller)

    async def leave_when(path: str, header: dict[str, str], ready: Any) -> None:
        (name, value), *_ = header.items()
        scope = http_scope("POST", path, [(name.lower().encode(), value.encode())])

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            pass

        task = asyncio.create_task(seller.client.app(scope, receive, send))
        for _ in range(300):  # bounded
            if ready():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(1.0)  # the settle's thread finishes meanwhile

    with served(seller) as client:
        opening = paid_header(client, buyer, "/stream?n=4")
        with client.stream("GET", "/stream?n=4", headers=opening) as response:
            feed = events(response)  # kept: a closed generator would close the response
            asked = next(data for event, data in feed if event == "payment-required")
            pay = httpx.URL(asked["pay"]).path
            header = paid_header(client, buyer, pay, "POST")
            real = gate.facilitator.settle
            started = slowed_settle(gate)
            asyncio.run(leave_when(pay, header, started.is_set))
            gate.facilitator.settle = real

    def only_the_first_slice_is_charged() -> bool:
        gate.flush()
        gate.reconcile(time.time() + 10)
        return bool(kit.locked(seller, buyer) == CENT)

    eventually(only_the_first_slice_is_charged)
    assert seller.core.audit() == []


def test_a_metered_refusal_says_refunded_with_refund_on_error_off(tmp_path: Any) -> None:
    """A metered route's non-2xx is refunded whatever ``refund_on_error`` says, but with it
    off the refund came after the response: its result header said ``success: true`` for a
    payment the Core then voided. It is refunded as the response starts, as a stage's is."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from fourmica_x402 import PaymentConfig
    from fourmica_x402.testing import paid_headers
    from fourmica_x402.wire import decode_header_json

    async def busy(request: Any) -> JSONResponse:
        return JSONResponse({"error": "busy"}, status_code=503)

    core = Core(str(tmp_path / "core.db"))
    routes = {"GET /busy": {"price": "$0.01", "slices": Slices(units=2)}}
    config = PaymentConfig(
        pay_to=TestBuyer.new().address,
        network=NETWORK,
        core=core,
        routes=routes,
        refund_on_error=False,
    )
    app = Starlette(
        routes=[Route("/busy", busy)], middleware=[Middleware(PaymentMiddleware, config=config)]
    )
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    with TestClient(app) as client:
        answer = client.get("/busy", headers=paid_headers(client, buyer, client.get("/busy")))
    assert answer.status_code == 503
    result = decode_header_json(answer.headers["payment-response"])
    assert (result["success"], result.get("errorReason")) == (False, "refunded")
    assert core.position(buyer.address, network=NETWORK).locked == 0
    core.close()


def test_a_source_event_named_as_a_meter_event_fails_the_stream(tmp_path: Any) -> None:
    """A source relaying events (an upstream's names) cannot forge the meter's own: a
    ``payment-required`` the buyer client would pay at any URL of the seller's origin, an
    ``end``, a ``stream``. The stream ends ``source_failed`` before it, nothing more is paid."""
    from fourmica_x402.gate.sse import METER_EVENTS, encode

    for name in METER_EVENTS:
        with pytest.raises(ValueError, match="meter's own"):
            encode((name, {"x": 1}))
    forged = {"stream": "s", "slice": 2, "pay": "/compute", "amount": "1", "timeout": 30}

    async def relayed() -> Any:
        yield {"step": 0}
        yield ("payment-required", forged)
        yield {"step": 1}

    core = Core(str(tmp_path / "core.db"))
    try:
        stream, got, locked = _bought(core, _compute_app(core, Slices(units=5), relayed))
        assert got == [{"step": 0}]
        assert (stream.ended, stream.slices, locked) == ("source_failed", 1, CENT)
    finally:
        core.close()


@pytest.mark.parametrize("kind", ["starlette"])  # pricing is the gate's: one adapter is enough
def test_a_repricing_leaves_a_stream_open_at_its_price_in_another_process(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slice paid at a worker process that does not serve the stream (and so holds
    neither its request nor its route as opened) is sold at the stream's price, not the
    route's new one: a repricing another process polled sold its slices cheaper (or dearer)
    than the stream's own events asked."""
    import weakref

    from fourmica_x402.gate import metered as metering

    token = "test-admin-token"  # a throwaway token for this test
    seller = make_seller(routes={**base_routes, **metered(pay_timeout=10.0)}, admin_token=token)
    buyer = kit.funded(seller)
    with served(seller) as client:
        opening = paid_header(client, buyer, "/stream?n=4")
        with client.stream("GET", "/stream?n=4", headers=opening) as response:
            seen = events(response)
            asked = next(e for e in seen if e[0] == "payment-required")
            assert asked[1]["amount"] == str(CENT)
            # from now on the pay requests reach a process that does not serve the stream
            monkeypatch.setattr(metering, "_LOCAL", weakref.WeakValueDictionary())
            repriced = client.post(
                "/x402/admin/prices",
                json={"prices": {"GET /stream": "$0.001"}},
                headers={"authorization": f"Bearer {token}"},
            )
            assert repriced.status_code == 200, repriced.text
            challenge = client.post(asked[1]["pay"])
            assert challenge.status_code == 402, challenge.text
            offers = decode_payment_required(challenge.headers["payment-required"]).accepts
            assert [o.amount for o in offers] == [str(CENT)]  # the stream's price
            paying = paid_header(client, buyer, asked[1]["pay"], "POST")
            assert client.post(asked[1]["pay"], headers=paying).status_code == 200
            rest = list(seen)
        assert rest[-1] == ("end", {"reason": "complete", "slices": 2})
    assert kit.locked(seller, buyer) == 2 * CENT
