"""Paid MCP tools (docs/mcp.md): an MCP tool server (the official SDK's FastMCP, streamable
HTTP) behind the pure-ASGI adapter, served by uvicorn on loopback, one real embedded Core; the
buyer is the SDK's client session paying through :mod:`fourmica_x402.client.mcp`. Money is
checked at the end: what the buyer's collateral locked is the tool calls it was served.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("mcp")

import uvicorn
from fourmica_x402.adapters.asgi import PaymentMiddleware
from mcp.server.fastmcp import FastMCP

from fourmica_x402.client import SpendingPolicy
from fourmica_x402.client.mcp import SELLER_REFUSED, paid_session
from fourmica_x402.core import Core
from fourmica_x402.errors import BudgetExhausted, PaymentFailed
from fourmica_x402.mcp import McpTools, ToolPrice, classify
from fourmica_x402.testing import NETWORK, TestBuyer
from fourmica_x402.wire import decode_payment_required

SEARCH, SUMMARIZE = 10_000, 50_000
PRICES = {"search": "$0.01", "summarize": "$0.05", "flaky": "$0.02", "ping": None}
#: Bodies the gate refuses: longer than it reads (64 KiB); a key its parser and the server's
#: could read differently.
OVERSIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}' + b" " * 70_000 + b"}"
)
TWO_METHODS = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}'
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@dataclass
class Shop:
    """The tool server on loopback, its Core, a funded buyer; what each tool ran."""

    url: str
    core: Core
    buyer: TestBuyer
    ran: Counter[str] = field(default_factory=Counter)

    def locked(self) -> int:
        return int(self.core.position(self.buyer.address, network=NETWORK).locked)

    def settles_to(self, expected: int) -> None:
        """Wait for refunds (voids) completed just after a response."""
        deadline = time.monotonic() + 10
        while self.locked() != expected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.locked() == expected

    def guarantees(self) -> int:
        return len(self.core.guarantees(limit=1000))


def _server(ran: Counter[str], json_response: bool) -> FastMCP:
    server = FastMCP("shop", json_response=json_response)

    @server.tool()
    def search(query: str) -> str:
        ran["search"] += 1
        return f"results for {query}"

    @server.tool()
    def summarize(text: str) -> str:
        ran["summarize"] += 1
        return text[:12]

    @server.tool()
    def ping() -> str:
        ran["ping"] += 1
        return "pong"

    @server.tool()
    def flaky() -> str:
        ran["flaky"] += 1
        raise RuntimeError("the upstream index is down")

    @server.tool()
    def secret() -> str:  # served by the server, not listed in the prices: refused
        ran["secret"] += 1
        return "free lunch"

    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on loopback: its ``/mcp`` URL."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(params=["sse", "json", "json-gzip"])
def shop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shop]:
    """``json-gzip``: the tool server's answers compressed inside the gate (GZipMiddleware),
    as the buyer's ``Accept-Encoding: gzip`` asks: judged decoded."""
    core = Core(str(tmp_path / "core.db"))
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    ran: Counter[str] = Counter()
    tools = McpTools(PRICES)
    config = tools.config(pay_to=seller.address, core=core, network=NETWORK)
    inner: Any = _server(ran, request.param.startswith("json")).streamable_http_app()
    if request.param == "json-gzip":
        from starlette.middleware.gzip import GZipMiddleware

        inner = GZipMiddleware(inner, minimum_size=1)
    app = PaymentMiddleware(inner, config)
    try:
        with _serving(app) as url:
            yield Shop(url, core, buyer, ran)
    finally:
        core.close()


def _text(result: Any) -> str:
    return str(result.content[0].text)


def test_free_methods_pass_and_each_tool_call_is_paid_once(shop: Shop) -> None:
    async def session() -> list[Any]:
        async with paid_session(shop.url, shop.buyer.key, policy=SpendingPolicy()) as s:
            listed = sorted(t.name for t in (await s.list_tools()).tools)
            assert listed == ["flaky", "ping", "search", "secret", "summarize"]
            assert shop.locked() == 0  # initialize, notifications and tools/list: free
            assert _text(await s.call_tool("ping", {})) == "pong"  # a free tool
            assert shop.locked() == 0
            assert _text(await s.call_tool("search", {"query": "x402"})) == "results for x402"
            assert shop.locked() == SEARCH
            assert _text(await s.call_tool("summarize", {"text": "a long text"})) == "a long text"
            return list(s.payments.ledger)

    receipts = asyncio.run(session())
    assert [(r.outcome, r.amount) for r in receipts] == [("paid", SEARCH), ("paid", SUMMARIZE)]
    assert shop.ran == {"ping": 1, "search": 1, "summarize": 1}
    assert shop.locked() == SEARCH + SUMMARIZE and shop.guarantees() == 2


def test_budget_running_out_mid_task_refuses_cleanly_and_charges_nothing_more(shop: Shop) -> None:
    policy = SpendingPolicy()

    async def session() -> tuple[BudgetExhausted, list[Any]]:
        async with paid_session(
            shop.url, shop.buyer.key, policy=policy, task="research", budget="$0.065"
        ) as s:
            await s.call_tool("search", {"query": "a"})
            await s.call_tool("summarize", {"text": "b"})
            with pytest.raises(BudgetExhausted) as refused:
                await s.call_tool("search", {"query": "c"})  # 0.06 + 0.01 > 0.065
            assert _text(await s.call_tool("ping", {})) == "pong"  # the session goes on
            return refused.value, list(s.payments.ledger)

    refusal, receipts = asyncio.run(session())
    assert refusal.reason == "budget_exhausted" and "research" in str(refusal)
    assert [r.outcome for r in receipts] == ["paid", "paid", "budget_exhausted"]
    assert receipts[-1].claims is None  # nothing was signed for the refused call
    assert shop.ran == {"search": 1, "summarize": 1, "ping": 1}
    assert shop.locked() == SEARCH + SUMMARIZE and shop.guarantees() == 2


def test_a_tool_error_is_refunded(shop: Shop) -> None:
    async def session() -> Any:
        async with paid_session(shop.url, shop.buyer.key) as s:
            return await s.call_tool("flaky", {})

    result = asyncio.run(session())
    assert result.isError and shop.ran == {"flaky": 1}
    assert shop.guarantees() == 1
    shop.settles_to(0)  # the payment was voided: an isError result is not delivered


class PaysForSearchCallsSummarize(httpx.AsyncBaseTransport):
    """An attacker's transport: the paid retry of a cheap call asks for the expensive tool."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        if "payment-signature" in request.headers and b'"search"' in request.content:
            body = request.content.replace(b'"search"', b'"summarize"')
            headers = [(k, v) for k, v in request.headers.items() if k != "content-length"]
            request = httpx.Request(request.method, request.url, headers=headers, content=body)
        return await self.inner.handle_async_request(request)


def test_a_payment_for_a_cheap_tool_does_not_buy_an_expensive_one(shop: Shop) -> None:
    async def session() -> PaymentFailed:
        async with paid_session(
            shop.url, shop.buyer.key, transport=PaysForSearchCallsSummarize()
        ) as s:
            with pytest.raises(PaymentFailed) as refused:
                await s.call_tool("search", {"query": "x"})
            return refused.value

    refusal = asyncio.run(session())
    assert refusal.reason == "payment_failed" and refusal.message == "no_matching_requirements"
    assert "summarize" not in shop.ran and shop.locked() == 0 and shop.guarantees() == 0


def _post(shop: Shop, body: bytes | Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(shop.url, content=content, headers=HEADERS, timeout=10)


def _call(name: str, rid: int = 1, method: str = "tools/call") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": {"name": name}}


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ([_call("search"), _call("summarize", 2)], 400, "mcp_batch_refused"),
        ([{"jsonrpc": "2.0", "method": "notifications/initialized"}, _call("ping")], 400, "mcp_batch_refused"),
        (OVERSIZE, 413, "mcp_body_too_large"),
        (b"not json", 400, "mcp_invalid_request"),
        (TWO_METHODS, 400, "mcp_invalid_request"),
        (b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"tools/list"}', 400, "mcp_invalid_request"),
        ({"id": 1, "method": "tools/call", "params": {"name": "search"}}, 400, "mcp_invalid_request"),
        (_call("secret"), 400, "mcp_unknown_tool"),
        (_call("Search"), 400, "mcp_ambiguous_tool"),
        (_call(" search"), 400, "mcp_ambiguous_tool"),
        (_call("se\u200barch"), 400, "mcp_ambiguous_tool"),
        (_call("PING"), 400, "mcp_ambiguous_tool"),
        (_call("search", method="Tools/Call"), 400, "mcp_ambiguous_tool"),
        (_call("search"), 402, "payment_required"),
    ],
)  # fmt: skip
def test_what_the_gate_refuses_before_any_payment(
    shop: Shop, body: Any, status: int, reason: str
) -> None:
    answer = _post(shop, body)
    assert answer.status_code == status, answer.text
    if status == 402:  # the search's price, and no other
        required = decode_payment_required(answer.headers["payment-required"])
        assert [int(offer.amount) for offer in required.accepts] == [SEARCH]
    else:
        assert answer.json()["error"] == reason
    assert not shop.ran and shop.locked() == 0


def test_a_refusal_is_an_mcp_error_in_the_session(shop: Shop) -> None:
    from mcp.shared.exceptions import McpError

    async def session() -> McpError:
        async with paid_session(shop.url, shop.buyer.key) as s:
            with pytest.raises(McpError) as refused:
                await s.call_tool("secret", {})
            assert _text(await s.call_tool("ping", {})) == "pong"
            return refused.value

    error = asyncio.run(session()).error
    assert error.code == SELLER_REFUSED and error.data == {
        "reason": "mcp_unknown_tool",
        "status": 400,
    }
    assert shop.ran == {"ping": 1}


# -- the pieces, without a server ------------------------------------------------------------


def test_classify_reads_one_message_or_a_batch_without_calls() -> None:
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    assert classify(json.dumps(listing).encode()) is None
    assert (
        classify(json.dumps([listing, {"jsonrpc": "2.0", "id": 2, "result": {}}]).encode()) is None
    )
    assert classify(json.dumps(_call("search")).encode()).name == "search"  # type: ignore[union-attr]
    assert classify(b"[]").reason == "mcp_invalid_request"  # type: ignore[union-attr]
    assert classify(None).status == 413  # type: ignore[union-attr]


def test_unlisted_tools_take_the_default_price_but_lookalikes_are_refused() -> None:
    tools = McpTools({"search": "$0.01"}, default="$0.002")
    assert tools.lookup("anything") == "$0.002"
    assert tools.lookup("SEARCH").reason == "mcp_ambiguous_tool"  # type: ignore[union-attr]
    with pytest.raises(Exception, match="differ only"):
        McpTools({"search": "$0.01", "Search": "$0.02"})


@pytest.mark.parametrize("price", ["$0", "$0.0000001", "0.01 USDC", 0.01, -1])
def test_a_tool_price_no_call_could_be_charged_fails_at_start_up(price: Any) -> None:
    """A tool's price was first resolved on a call: ``"$0.0000001"`` (finer than USDC), ``"$0"``
    or a float answered every call of the tool 500 ``pricing_failed`` while the app started
    fine. Checked when the route is built now, on the app's network, as a route's price is."""
    from fourmica_x402.errors import ConfigurationError

    seller = TestBuyer.new().address
    for tools in (McpTools({"search": "$0.01", "fetch": price}), McpTools({}, default=price)):
        with pytest.raises(ConfigurationError, match="MCP tool"):
            tools.config(pay_to=seller, network=NETWORK)
        with pytest.raises(ConfigurationError, match="MCP tool"):
            tools.route()
    tools = McpTools({"search": "$0.01", "free": None}, default=None)  # None: free, no price
    assert tools.config(pay_to=seller, network=NETWORK).routes["POST /mcp"].price is tools.price


DEEP = {"tree": functools.reduce(lambda tree, _: [tree], range(300), 0)}  # 300 levels
LONE = {"type": "text", "text": "\ud800"}  # a lone surrogate, as json.dumps writes it


@pytest.mark.parametrize(
    ("kind", "body", "why"),
    [
        ("application/json", {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}, None),
        ("application/json", {"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "x"}}, "mcp_tool_error"),
        ("text/event-stream", {"jsonrpc": "2.0", "id": 1, "result": {"isError": True}}, "mcp_tool_error"),
        ("text/event-stream", {"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "x"}}, "mcp_tool_error"),
        ("text/event-stream", {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}, None),
        ("text/event-stream", {"jsonrpc": "2.0", "method": "notifications/progress"}, "mcp_tool_error"),
        # the server's own answer, read as json.loads reads it: deep or odd text is delivered
        ("application/json", {"jsonrpc": "2.0", "id": 1, "result": {"structuredContent": DEEP}}, None),
        ("text/event-stream", {"jsonrpc": "2.0", "id": 1, "result": {"content": [LONE]}}, None),
        # no MCP answer: an app's error handler answering the failed call with a page
        ("text/plain", "Internal error (cached page)", "mcp_tool_error"),
        ("text/html; charset=utf-8", "<h1>Sorry</h1>", "mcp_tool_error"),
    ],
)  # fmt: skip
def test_a_paid_answer_is_judged_by_its_json_rpc_message(
    kind: str, body: Any, why: str | None
) -> None:
    judge = ToolPrice(McpTools(PRICES)).judge_response
    data = json.dumps(body).encode()
    raw = b"event: message\r\ndata: " + data + b"\r\n\r\n" if "event" in kind else data
    assert judge(200, [("content-type", kind)], raw) == why
    assert judge(200, [("content-type", kind)], None) is None  # too long to read: by status


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_answer_is_judged_decoded(encoding: str) -> None:
    import gzip
    import zlib

    judge = ToolPrice(McpTools(PRICES)).judge_response
    pack = gzip.compress if encoding == "gzip" else zlib.compress
    ok = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}).encode()
    bad = json.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "x"}}).encode()
    headers = [("content-type", "application/json"), ("content-encoding", encoding)]
    assert judge(200, headers, pack(ok)) is None
    assert judge(200, headers, pack(bad)) == "mcp_tool_error"
    # what cannot be read here is judged by its status, as a long answer is
    assert judge(200, headers, b"not compressed") is None
    assert judge(200, headers, pack(ok)[:-8]) is None  # cut short
    assert (
        judge(200, [("content-type", "application/json"), ("content-encoding", "br")], bad) is None
    )


def test_the_buyer_pays_tool_calls_only(tmp_path: Path) -> None:
    """A seller pricing the session's GET stream, and ending it at once with ``retry: 0``,
    drained the buyer: the SDK reopens that stream without end, and every reopening was
    paid. Only a ``tools/call`` is ever paid; a 402 on anything else is refused unpaid."""
    core = Core(str(tmp_path / "core.db"))
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    ran: Counter[str] = Counter()
    inner = _server(ran, json_response=False).streamable_http_app()
    streams = Counter[str]()

    async def hostile(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/mcp":
            streams["get"] += 1
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"retry: 0\n\n"})
            return
        await inner(scope, receive, send)

    config = McpTools(PRICES).config(
        pay_to=seller.address, core=core, network=NETWORK, routes={"GET /mcp": "$0.01"}
    )
    app = PaymentMiddleware(hostile, config, router=inner.router)

    async def session(url: str) -> list[Any]:
        async with paid_session(url, buyer.key, policy=SpendingPolicy()) as s:
            await asyncio.sleep(1.0)  # an idle session: the SDK opens its GET stream
            assert _text(await s.call_tool("search", {"query": "x"})) == "results for x"
            return list(s.payments.ledger)

    with _serving(app) as url:
        receipts = asyncio.run(session(url))
    assert [(r.outcome, r.amount) for r in receipts] == [("paid", SEARCH)]
    assert core.position(buyer.address, network=NETWORK).locked == SEARCH
    assert streams["get"] == 0  # the priced GET stream was never paid for, never reached
    core.close()


@pytest.mark.parametrize(
    ("status", "location"),
    [(302, "http://other.test/mcp"), (307, "/mcp")],
    ids=["elsewhere", "same-origin"],
)
def test_a_paid_call_answered_with_a_redirect_is_refused_and_the_session_goes_on(
    tmp_path: Path, status: int, location: str
) -> None:
    """A seller answering a paid ``tools/call`` with a redirect ended the whole session (the
    SDK raised ``HTTPStatusError`` in its task group); one within the endpoint's origin was
    followed by the SDK, unpaid, answered 402, paid again: each hop a new guarantee. The call
    gets an ``McpError`` now (docs/mcp.md, "Gate errors"), once paid, and the session goes on."""
    from mcp.shared.exceptions import McpError

    core = Core(str(tmp_path / "core.db"))
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    ran: Counter[str] = Counter()
    inner = _server(ran, json_response=True).streamable_http_app()
    config = McpTools(PRICES).config(pay_to=seller.address, core=core, network=NETWORK)
    gate = PaymentMiddleware(inner, config)

    async def hostile(scope: Any, receive: Any, send: Any) -> None:
        paid = any(name == b"payment-signature" for name, _ in scope.get("headers", []))
        if scope["type"] == "http" and paid:  # the paid retry of the call: redirected
            headers = [(b"location", location.encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await gate(scope, receive, send)

    async def session(url: str) -> tuple[McpError, list[Any]]:
        async with paid_session(url, buyer.key, policy=SpendingPolicy()) as s:
            with pytest.raises(McpError) as refused:
                await s.call_tool("search", {"query": "x"})
            assert _text(await s.call_tool("ping", {})) == "pong"  # the session goes on
            return refused.value, list(s.payments.ledger)

    with _serving(hostile) as url:
        refused, receipts = asyncio.run(session(url))
    assert refused.error.code == SELLER_REFUSED
    assert refused.error.data == {"reason": f"http_{status}", "status": status}
    assert [(r.amount, r.status) for r in receipts] == [(SEARCH, status)]  # paid once, counted
    assert ran == {"ping": 1} and core.position(buyer.address, network=NETWORK).locked == 0
    core.close()


def test_get_and_delete_on_the_endpoint_are_405(shop: Shop) -> None:
    """As docs/mcp.md says: no free GET stream or resumption (it could replay a refunded
    paid answer), no DELETE; the session's POSTs go on."""
    for method in ("GET", "DELETE"):
        answer = httpx.request(method, shop.url, headers=HEADERS, timeout=10)
        assert answer.status_code == 405 and answer.headers["allow"] == "OPTIONS, POST"
    assert shop.locked() == 0


def _slow_tools(
    core: Core, pay_to: str, json_response: bool = False
) -> tuple[Any, threading.Event]:
    """A tool server selling ``summarize`` ($0.05, a second's work: longer than the half
    second before the exchange listens) beside a free ``ping``; and an event set once
    ``summarize`` answered."""
    server = FastMCP("slow", json_response=json_response)
    finished = threading.Event()

    @server.tool()
    async def summarize(text: str) -> str:  # an upstream call that takes a while
        await asyncio.sleep(1.0)
        finished.set()
        return f"SECRET summary of {text}"

    @server.tool()
    async def ping() -> str:
        return "pong"

    @server.tool()
    async def nap() -> str:  # free, and slow
        await asyncio.sleep(1.0)
        return "FREE nap answer"

    tools = McpTools({"summarize": "$0.05", "ping": None, "nap": None})
    app = PaymentMiddleware(server.streamable_http_app(), tools.config(pay_to=pay_to, core=core))
    return app, finished


#: A free call reusing the paid call's id 7.
_REUSE_7 = json.dumps(_call("ping", 7) | {"params": {"name": "ping", "arguments": {}}})


async def _paid_summarize(
    client: httpx.AsyncClient, url: str, core: Core, buyer: TestBuyer
) -> tuple[dict[str, str], str, dict[str, str]]:
    """Open a session, and pay for ``summarize`` as request 7: the session's headers, the
    call's body, and the headers that pay for it."""
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    opened = await client.post(url, json=init, headers=HEADERS)
    session = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await client.post(url, json=done, headers=session)).status_code == 202
    paid = json.dumps(
        _call("summarize", 7) | {"params": {"name": "summarize", "arguments": {"text": "doc"}}}
    )
    challenge = await client.post(url, content=paid, headers=session)
    name, value = buyer.pay_challenge(core, challenge.headers["payment-required"])
    return session, paid, {**session, name: value}


def test_a_request_id_in_flight_cannot_be_reused_in_its_session(tmp_path: Path) -> None:
    """The server routes each answer by request id: a second request reusing the id of a
    paid call still running (a cheap or free tool) got the paid call's answer, and the paid
    call, never answered, was refunded. A reused id is now refused while the first runs."""
    core = Core(str(tmp_path / "core.db"))
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    app, _ = _slow_tools(core, seller.address)

    async def run(url: str) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            session, paid, payment = await _paid_summarize(client, url, core, buyer)
            first = asyncio.create_task(client.post(url, content=paid, headers=payment))
            await asyncio.sleep(0.4)  # the paid call runs
            second = await client.post(url, content=_REUSE_7, headers=session)
            answered = await first
            for _ in range(50):  # bounded: once the first request is over, its id is free again
                after = await client.post(url, content=_REUSE_7, headers=session)
                if after.status_code != 409:
                    break
                await asyncio.sleep(0.05)
            return second, answered, after

    with _serving(app) as url:
        second, answered, after = asyncio.run(run(url))
    assert second.status_code == 409 and second.json()["error"] == "mcp_request_id_in_use"
    assert answered.status_code == 200 and "summary of doc" in answered.text
    assert after.status_code == 200 and "pong" in after.text
    assert core.position(buyer.address, network=NETWORK).locked == SUMMARIZE
    core.close()


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
def test_a_paid_call_left_unanswered_keeps_its_id_and_is_not_charged(
    tmp_path: Path, json_response: bool
) -> None:
    """The client drops a paid call's connection while the tool runs: the payment is voided
    (in JSON mode too, where the server never reads the connection again), and the server,
    which still answers the call by its id, must not hand that answer to a free request of
    the session reusing the id: it is refused (409) for good."""
    core = Core(str(tmp_path / "core.db"))
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    app, finished = _slow_tools(core, seller.address, json_response=json_response)

    async def run(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            session, paid, payment = await _paid_summarize(client, url, core, buyer)
            sending = asyncio.create_task(client.post(url, content=paid, headers=payment))
            await asyncio.sleep(0.2)  # the tool runs; the client gives up on it
            sending.cancel()
            answers = []
            for _ in range(60):  # bounded: until well after the tool answered
                answers.append(await client.post(url, content=_REUSE_7, headers=session))
                await asyncio.sleep(0.025)
            return answers

    with _serving(app) as url:
        answers = asyncio.run(run(url))
        assert finished.wait(5)
        time.sleep(0.3)  # the gate's refund is written after the exchange
    assert {a.status_code for a in answers} == {409}
    assert not any("SECRET" in a.text for a in answers)
    assert answers[-1].json()["error"] == "mcp_request_id_in_use"
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
    assert core.position(buyer.address, network=NETWORK).locked == 0
    core.close()


def test_a_free_call_left_unanswered_keeps_its_id_from_a_paid_one(tmp_path: Path) -> None:
    """A free call's id was freed when its client left, though the server still answers it:
    a paid call reusing the id then got that free answer, and was charged."""
    core = Core(str(tmp_path / "core.db"))
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    app, _ = _slow_tools(core, seller.address)
    nap = json.dumps(_call("nap", 7) | {"params": {"name": "nap", "arguments": {}}})

    async def run(url: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            session, paid, payment = await _paid_summarize(client, url, core, buyer)
            leaving = asyncio.create_task(client.post(url, content=nap, headers=session))
            await asyncio.sleep(0.3)  # the free tool runs; its client gives up on it
            leaving.cancel()
            await asyncio.sleep(0.2)
            return await client.post(url, content=paid, headers=payment)

    with _serving(app) as url:
        refused = asyncio.run(run(url))
    assert refused.status_code == 409 and refused.json()["error"] == "mcp_request_id_in_use"
    assert "FREE" not in refused.text and core.guarantees(address=buyer.address) == []
    core.close()


def _answering(status: int, answer: dict[str, Any]) -> Any:
    """A tool server (ASGI, with a lifespan) answering every message ``status`` with
    ``answer`` as its JSON body."""

    async def server(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})

    return server


@pytest.mark.parametrize(
    ("answered", "state"), [(7, "payable"), (99, "voided"), ("7", "voided")], ids=str
)
def test_a_paid_call_is_delivered_only_by_an_answer_to_its_own_id(
    tmp_path: Path, answered: Any, state: str
) -> None:
    """A session's server routes answers by id: a paid call could be answered with another
    request's (free) result and still be charged. Only an answer carrying the paid call's
    id delivers it; any other is refunded."""
    from starlette.testclient import TestClient

    server = _answering(200, {"jsonrpc": "2.0", "id": answered, "result": {"content": []}})

    core = Core(str(tmp_path / "core.db"))
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    tools = McpTools({"search": "$0.01"})
    app = PaymentMiddleware(server, tools.config(pay_to=seller.address, core=core))
    call = json.dumps(_call("search", 7) | {"params": {"name": "search", "arguments": {}}})
    with TestClient(app) as client:
        challenge = client.post("/mcp", content=call, headers=HEADERS)
        name, value = buyer.pay_challenge(core, challenge.headers["payment-required"])
        paid = client.post("/mcp", content=call, headers={**HEADERS, name: value})
        assert paid.status_code == 200
        app.gate.flush()
    assert [g.state for g in core.guarantees(address=buyer.address)] == [state]
    core.close()


@pytest.mark.parametrize("status", [404, 500])
def test_a_paid_call_answered_with_an_error_status_is_refunded_even_with_refund_on_error_off(
    tmp_path: Path, status: int
) -> None:
    """docs/protocol.md ("Delivery"): a paid MCP tool call not delivered is refunded even with
    ``refund_on_error`` off. A call answered 200 with a JSON-RPC error was; one the server
    answered 404 (a session it does not know) or 500 was charged, and its G-v1 guarantee
    (no delivery policy) stayed payable: the buyer paid for a tool that never ran."""
    from starlette.testclient import TestClient

    error = {"code": -32600, "message": "x"}
    server = _answering(status, {"jsonrpc": "2.0", "id": 7, "error": error})

    core = Core(str(tmp_path / "core.db"))
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    config = McpTools({"search": "$0.01"}).config(
        pay_to=seller.address, core=core, refund_on_error=False, delivery_policy=False
    )
    app = PaymentMiddleware(server, config)
    call = json.dumps(_call("search", 7) | {"params": {"name": "search", "arguments": {}}})
    with TestClient(app) as client:
        challenge = client.post("/mcp", content=call, headers=HEADERS)
        name, value = buyer.pay_challenge(core, challenge.headers["payment-required"])
        paid = client.post("/mcp", content=call, headers={**HEADERS, name: value})
        assert paid.status_code == status
        app.gate.flush()
    result = json.loads(base64.b64decode(paid.headers["payment-response"]))
    assert result["success"] is False and result["errorReason"] == "refunded"
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
    assert core.position(buyer.address, network=NETWORK).locked == 0
    core.close()


def test_the_tool_route_cannot_be_repriced_as_one_price(tmp_path: Path) -> None:
    """The admin call took ``POST /mcp=$0.02`` as it takes any route's price: every message of
    the endpoint then cost $0.02 (``initialize``, ``tools/list``, a free tool: 402, so no
    session could open) and no paid answer was judged any more (a tool error charged). The
    route's prices are its tools' (docs/mcp.md): the change is refused, nothing changes."""
    from starlette.testclient import TestClient

    server = _answering(200, {"jsonrpc": "2.0", "id": 1, "result": {"content": []}})

    core = Core(str(tmp_path / "core.db"))
    config = McpTools(PRICES).config(
        pay_to=TestBuyer.new().address, core=core, admin_token="test-admin-token"
    )
    app = PaymentMiddleware(server, config)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    admin = {"authorization": "Bearer test-admin-token"}
    with TestClient(app) as client:
        changed = client.post(
            "/x402/admin/prices", headers=admin, json={"prices": {"POST /mcp": "$0.02"}}
        )
        assert changed.status_code == 400 and changed.json()["error"] == "invalid_price"
        assert client.post("/mcp", json=init, headers=HEADERS).status_code == 200
        assert client.post("/mcp", json=_call("ping"), headers=HEADERS).status_code == 200
        search = client.post("/mcp", json=_call("search"), headers=HEADERS)
        assert search.status_code == 402
        (offer,) = decode_payment_required(search.headers["payment-required"]).accepts
        assert int(offer.amount) == SEARCH
    core.close()


def test_the_ids_kept_have_a_fixed_size_however_long_a_client_makes_them() -> None:
    """Ids of requests left unanswered are kept (the last 100 000): kept as sent, a 60 000
    character id in a long session id made each entry some 60 KB, about 6 GB in all."""
    from fourmica_x402.gate.types import RequestView

    class Body:
        async def peek(self) -> bytes:
            return json.dumps(_call("search", "7" * 60_000)).encode()

    session = (("mcp-session-id", "s" * 60_000),)
    request = RequestView("POST", "/mcp", "/mcp", "", session, read_body=Body())
    (key,) = asyncio.run(McpTools(PRICES).session_ids(request))
    assert isinstance(key[0], int) and key[1] == "7" * 40


def test_a_tool_server_mounted_under_another_gate_gets_the_call_it_was_paid_for(
    tmp_path: Path,
) -> None:
    """A tool server with its own gate, mounted in an app whose gate prices its path at the
    same terms: the inner gate read the call's body to price it and never gave it back, so
    the tool server waited for it until the buyer gave up (the payment refunded)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from fourmica_x402 import PaymentConfig
    from fourmica_x402.client.transport import PaymentTransport

    core = Core(str(tmp_path / "core.db"))
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    ran: Counter[str] = Counter()
    server = _server(ran, True)
    server.settings.stateless_http = True  # one call, no session to open first
    tools = McpTools(PRICES).config(pay_to=seller.address, core=core, network=NETWORK)
    inner = PaymentMiddleware(server.streamable_http_app(), tools)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        async with server.session_manager.run():
            yield

    outer = PaymentConfig(
        pay_to=seller.address, core=core, network=NETWORK, routes={"POST /tools/*": "$0.05"}
    )
    app = Starlette(routes=[Mount("/tools", app=inner)], lifespan=lifespan)
    app.add_middleware(PaymentMiddleware, config=outer)
    policy = SpendingPolicy(max_per_request="$0.05")
    try:
        with (
            _serving(app) as url,
            httpx.Client(
                transport=PaymentTransport(buyer.key, policy=policy), timeout=10
            ) as client,
        ):
            call = {
                **_call("summarize"),
                "params": {"name": "summarize", "arguments": {"text": "hi"}},
            }
            resp = client.post(url.replace("/mcp", "/tools/mcp"), json=call, headers=HEADERS)
            assert resp.status_code == 200 and "hi" in resp.text, resp.text
        assert ran["summarize"] == 1
        states = [g.state for g in core.guarantees(address=buyer.address)]
        assert states == ["payable"] and core.position(buyer.address, network=NETWORK).locked
    finally:
        core.close()


def test_a_served_payment_sent_again_with_another_tools_call_replays_its_first_answer(
    tmp_path: Path,
) -> None:
    """With ``idempotent_replay`` on, a replay is matched on route, method, path and query, not
    the body (docs/operations.md): a cheap tool's payment, once served, sent again with a dear
    tool's call gets the cheap call's answer back; the dear tool never runs and nothing more
    is locked (docs/mcp.md)."""
    from starlette.testclient import TestClient

    core = Core(str(tmp_path / "core.db"))
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    answer = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "s"}]}}
    config = McpTools(PRICES).config(pay_to=seller.address, core=core, idempotent_replay=True)
    app = PaymentMiddleware(_answering(200, answer), config)
    with TestClient(app) as client:
        challenge = client.post("/mcp", json=_call("search"), headers=HEADERS)
        name, value = buyer.pay_challenge(core, challenge.headers["payment-required"])
        first = client.post("/mcp", json=_call("search"), headers={**HEADERS, name: value})
        again = client.post("/mcp", json=_call("summarize"), headers={**HEADERS, name: value})
        app.gate.flush()
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() == answer
    assert [g.amount for g in core.guarantees(address=buyer.address)] == [SEARCH]
    assert core.position(buyer.address, network=NETWORK).locked == SEARCH
    core.close()
