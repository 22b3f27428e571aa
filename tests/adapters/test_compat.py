"""Sellers migrating from the official 4Mica package keep their route dict and function names."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from fourmica_x402.errors import ConfigurationError
from fourmica_x402.http import compat_config, fastapi_payment_middleware_from_config
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OFFICIAL_ROUTES = {
    "GET /premium": {
        "accepts": {
            "scheme": "4mica-credit",
            "price": "$0.01",
            "network": NETWORK,
            "payTo": SELLER,
        },
        "description": "Premium content",
    }
}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(tmp_path)  # the embedded Core's default file lands here
    app = FastAPI()
    middleware = fastapi_payment_middleware_from_config(
        OFFICIAL_ROUTES, tab_endpoint="http://testserver/payment/tab"
    )
    app.middleware("http")(middleware)

    @app.get("/premium")
    def premium(request: Request) -> dict[str, Any]:
        return {"payer": request.state.payment.payer}

    app.state.gate = middleware.gate
    return app


def test_official_route_dict_and_fastapi_function_name(app: Any, tmp_path: Path) -> None:
    client = TestClient(app)
    resp = client.get("/premium")
    assert resp.status_code == 402
    req = decode_payment_required(resp.headers["payment-required"]).accepts[0]
    assert req.amount == "10000" and req.pay_to == SELLER
    assert req.extra["tabEndpoint"] == "http://testserver/payment/tab"  # advertised verbatim
    assert (
        decode_payment_required(resp.headers["payment-required"]).resource.description
        == "Premium content"
    )

    buyer = TestBuyer.new()
    app.state.gate.core.deposit(buyer.address, 100_000, network=NETWORK)
    tab = client.post(
        "/payment/tab",
        json={
            "x402Version": 2,
            "userAddress": buyer.address,
            "paymentRequirements": req.to_dict(),
        },
    ).json()
    name, value = payment_header(buyer, req, tab)
    paid = client.get("/premium", headers={name: value})
    assert paid.status_code == 200 and paid.json() == {"payer": buyer.address}
    result = json.loads(base64.b64decode(paid.headers["payment-response"]))
    assert result["success"] is True and result["payer"] == buyer.address
    assert (tmp_path / "fourmica_x402.db").exists()


def test_accepts_may_be_a_list_and_bad_prices_fail_at_start() -> None:
    routes = {"GET /a": {"accepts": [{"price": "$1", "network": NETWORK, "payTo": SELLER}]}}
    assert compat_config(routes, "http://x/tab").routes == routes
    with pytest.raises(ConfigurationError):
        fastapi_payment_middleware_from_config(
            {"GET /a": {"accepts": {"price": "$0.0000001", "network": NETWORK, "payTo": SELLER}}},
            tab_endpoint="http://x/tab",
        )
    with pytest.raises(ConfigurationError):
        compat_config(routes, "http://x/tab", facilitator_client=object())


def _streaming_app(core: Any, body: Any) -> FastAPI:
    """The official style: ``app.middleware("http")``, a paid streaming route."""
    from fastapi.responses import StreamingResponse
    from fourmica_x402.adapters.fastapi import http_middleware

    from fourmica_x402.config import PaymentConfig

    app = FastAPI()
    config = PaymentConfig(pay_to=SELLER, core=core, routes={"GET /report": "$0.50"})
    app.middleware("http")(http_middleware(config))

    @app.get("/report")
    def report() -> StreamingResponse:
        return StreamingResponse(body(), media_type="text/plain")

    return app


async def _call(
    app: Any,
    headers: dict[str, str],
    gone_after: int | None = None,
    method: str = "GET",
    path: str = "/report",
    body: bytes = b"",
) -> list[Any]:
    """One request straight through ASGI; ``gone_after``: body messages before the client
    leaves (a later send raises, as servers on ASGI 2.4 do). The client sends ``body`` once;
    asked again, it waits, then leaves."""
    import asyncio

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(b"host", b"t"), (b"content-length", str(len(body)).encode())]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    sent: list[Any] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3)  # the client says nothing more
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        bodies = sum(m["type"] == "http.response.body" for m in sent)
        gone = gone_after is not None and bodies >= gone_after
        if message["type"] == "http.response.body" and gone:
            raise OSError("the client is gone")
        sent.append(message)

    try:
        await app(scope, receive, send)
    except Exception as exc:
        sent.append(exc)
    return sent


def _paid_call(app: Any, core: Any, gone_after: int | None = None) -> tuple[TestBuyer, list[Any]]:
    import asyncio

    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**7, network=NETWORK)
    (start, *_) = asyncio.run(_call(app, {}))
    challenge = dict(start["headers"])[b"payment-required"].decode()
    name, value = buyer.pay_challenge(core, challenge)
    return buyer, asyncio.run(_call(app, {name: value}, gone_after))


def test_a_stream_that_raises_midway_is_refunded_under_the_http_middleware(
    audited_core: Any,
) -> None:
    """call_next's copy of a stream ends quietly when the app raises in it: the buyer, who
    got part of the body, was charged."""

    def body() -> Any:
        yield b"part 1 of 3\n"
        raise RuntimeError("upstream failed mid-stream")

    buyer, sent = _paid_call(_streaming_app(audited_core, body), audited_core)
    assert sent[0]["status"] == 200 and isinstance(sent[-1], RuntimeError)
    [kept] = audited_core.guarantees(address=buyer.address)
    assert kept.state == "voided"
    assert audited_core.position(buyer.address, network=NETWORK).locked == 0


def test_a_wrapped_http_middleware_says_what_it_cannot_see(
    audited_core: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrapped in a seller's own function, the middleware cannot find the app below it: it
    falls back on call_next's copy of the response, and says so once (it used not to)."""
    from fastapi.responses import PlainTextResponse
    from fourmica_x402.adapters.fastapi import http_middleware

    from fourmica_x402.config import PaymentConfig

    app = FastAPI()
    inner = http_middleware(
        PaymentConfig(pay_to=SELLER, core=audited_core, routes={"GET /r": "$0.5"})
    )

    @app.middleware("http")
    async def outer(request: Any, call_next: Any) -> Any:
        return await inner(request, call_next)

    @app.get("/r")
    def report() -> PlainTextResponse:
        return PlainTextResponse("ok")

    import asyncio

    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 10**7, network=NETWORK)
    (start, *_) = asyncio.run(_call(app, {}, path="/r"))
    assert not [r for r in caplog.records if "not registered as the app's own" in r.message]
    name, value = buyer.pay_challenge(
        audited_core, dict(start["headers"])[b"payment-required"].decode()
    )
    for _ in range(2):
        sent = asyncio.run(_call(app, {name: value}, path="/r"))
        name, value = buyer.pay_challenge(
            audited_core, dict(start["headers"])[b"payment-required"].decode()
        )
    assert sent[0]["status"] == 200
    warned = [r for r in caplog.records if "not registered as the app's own" in r.message]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"


def test_a_client_that_leaves_midstream_is_refunded_under_the_http_middleware(
    audited_core: Any,
) -> None:
    def body() -> Any:
        for i in range(5):
            yield f"chunk {i}\n".encode()

    buyer, sent = _paid_call(_streaming_app(audited_core, body), audited_core, gone_after=1)
    assert isinstance(sent[-1], Exception)  # the server's disconnect error, as Starlette raises it
    [kept] = audited_core.guarantees(address=buyer.address)
    assert kept.state == "voided"
    assert audited_core.position(buyer.address, network=NETWORK).locked == 0
    buyer, sent = _paid_call(_streaming_app(audited_core, body), audited_core)
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"".join(body())  # whole: kept
    [kept] = audited_core.guarantees(address=buyer.address)
    assert kept.state in ("payable", "pending_validation") and kept.state != "voided"


def test_a_body_the_gate_read_reaches_the_app_under_the_http_middleware(
    audited_core: Any,
) -> None:
    """Paid MCP tools: the gate reads the JSON-RPC body to price the call. The app below the
    http middleware asked the client for it again, and waited until the client left."""
    import asyncio

    from fourmica_x402.adapters.fastapi import http_middleware

    from fourmica_x402.mcp import McpTools

    seen: list[str] = []
    app = FastAPI()
    tools = McpTools({"search": "$0.01", "ping": None})
    config = tools.config(pay_to=SELLER, network=NETWORK, core=audited_core)
    app.middleware("http")(http_middleware(config))

    @app.post("/mcp")
    async def mcp(request: Request) -> dict[str, Any]:
        call = json.loads(await request.body())
        seen.append(call["method"])
        return {"jsonrpc": "2.0", "id": call["id"], "result": {"content": []}}

    def post(method: str, headers: dict[str, str]) -> list[Any]:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "search"}}
        data = json.dumps(body).encode()
        return asyncio.run(_call(app, headers, method="POST", path="/mcp", body=data))

    assert post("tools/list", {})[0]["status"] == 200 and seen == ["tools/list"]
    (challenge, *_) = post("tools/call", {})
    assert challenge["status"] == 402 and seen == ["tools/list"]
    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 10**7, network=NETWORK)
    required = dict(challenge["headers"])[b"payment-required"].decode()
    name, value = buyer.pay_challenge(audited_core, required)
    assert post("tools/call", {name: value})[0]["status"] == 200
    assert seen == ["tools/list", "tools/call"]
    [kept] = audited_core.guarantees(address=buyer.address)
    assert kept.state != "voided"
