"""ASGI: a paid response counts as delivered when its last byte went out, and not before.

- Work the app does after the response (a background task, a dependency's cleanup) cannot
  undo a delivery by failing: the buyer got the whole answer.
- A client that leaves mid-stream on a server speaking ASGI 2.3 (uvicorn) is seen only as an
  ``http.disconnect`` (sending after it does nothing and Starlette's streaming response just
  stops): the payment is voided, as when the send fails (ASGI 2.4).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from fourmica_x402.adapters.asgi import PaymentMiddleware
from fourmica_x402.adapters.fastapi import FourmicaX402, Paid
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402.config import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_header_json, decode_payment_required

SELLER = TestBuyer.new().address
ROUTES = {"GET /report": "$0.01", "GET /stream": "$0.01"}


@pytest.fixture
def core(audited_core: Core) -> Core:
    return audited_core


def header(core: Core, client: TestClient, path: str) -> tuple[bytes, bytes]:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**9, network=NETWORK)
    req = decode_payment_required(client.get(path).headers["payment-required"]).accepts[0]
    version = 2 if "validatorAddress" in req.extra else 1
    tab = core.open_tab(
        buyer.address, req.pay_to, network=NETWORK, asset=req.asset, guarantee_version=version
    )
    name, value = payment_header(buyer, req, tab.to_json())
    return name.encode(), value.encode()


def settled(core: Core, gate: Any) -> list[tuple[str, str | None]]:
    """(guarantee state, record outcome) of every payment, once completions are committed."""
    gate.flush()
    outcomes = {r.guarantee_id: r.outcome for r in gate.records.query()}
    return [(g.state, outcomes.get(g.guarantee_id)) for g in core.guarantees()]


def gate_of(app: Any) -> Any:
    while not isinstance(app, PaymentMiddleware):
        app = app.app
    return app.gate


def scope_of(path: str, paid: tuple[bytes, bytes], spec: str = "2.3", **extra: Any) -> Any:
    """A GET of ``path`` carrying the payment header ``paid``, as a server hands it over."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), paid],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        **extra,
    }


async def lifespan(scope: Any, receive: Any, send: Any) -> bool:
    """A raw app's lifespan scope answered (startup, then shutdown); False for any other."""
    while scope["type"] == "lifespan":
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return True
    return False


def exchange(app: Any, scope: Any) -> list[dict[str, Any]]:
    """What ``app`` sends for ``scope``, its request read whole and the client staying."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    return sent


def _report_app(core: Core, report: Any, *, policy: bool) -> Starlette:
    """``GET /report`` sold at $0.01 on ``core`` (``policy``: the G-v2 delivery policy)."""
    options = {"pay_to": SELLER, "network": NETWORK, "delivery_policy": policy}
    return Starlette(
        routes=[Route("/report", report)],
        middleware=[
            Middleware(PaymentMiddleware, core=core, routes={"GET /report": "$0.01"}, **options)
        ],
    )


def starlette_app(ran: list[str]) -> Starlette:
    def fail() -> None:
        ran.append("background")
        raise RuntimeError("the background task failed after the response")

    async def report(request: Any) -> PlainTextResponse:
        return PlainTextResponse("the report", background=BackgroundTask(fail))

    async def ticks() -> AsyncIterator[bytes]:
        for i in range(5):
            ran.append(f"chunk-{i}")
            yield f"chunk-{i}\n".encode()
            await asyncio.sleep(0.02)

    async def stream(request: Any) -> StreamingResponse:
        return StreamingResponse(ticks(), media_type="text/plain")

    options = {"pay_to": SELLER, "network": NETWORK, "routes": ROUTES}
    return Starlette(
        routes=[Route("/report", report), Route("/stream", stream)],
        middleware=[Middleware(PaymentMiddleware, core=None, **options)],
    )


def test_a_background_task_failing_after_a_paid_answer_keeps_the_payment(core: Core) -> None:
    ran: list[str] = []
    app = starlette_app(ran)
    app.user_middleware[0].kwargs["core"] = core
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/report", headers=[header(core, client, "/report")])
        assert resp.status_code == 200 and resp.text == "the report"
        assert ran == ["background"]  # it ran, after the answer, and raised
        assert settled(core, gate_of(app.middleware_stack)) == [("payable", "delivered")]


@pytest.mark.parametrize("netted", [False, True], ids=["refunded", "netted-meanwhile"])
def test_a_failed_response_says_refunded_only_when_it_was(core: Core, netted: bool) -> None:
    """A failed paid response (G-v1: payable, in the open cycle, at once) is refunded as it
    starts, so its result header tells the truth: refunded, or, when a cycle netted the
    guarantee while the handler ran, the settle result (charged)."""

    async def report(request: Any) -> PlainTextResponse:
        if netted:
            core.close_cycle(network=NETWORK)  # the operator closes it meanwhile
        return PlainTextResponse("upstream down", status_code=502)

    app = _report_app(core, report, policy=False)
    with TestClient(app) as client:
        resp = client.get("/report", headers=[header(core, client, "/report")])
        assert resp.status_code == 502
        result = decode_header_json(resp.headers["payment-response"])
        gate = gate_of(app.middleware_stack)
        if netted:
            assert result["success"] is True and result["transaction"]
            assert settled(core, gate) == [("netted", "kept")]
        else:
            assert (result["success"], result["errorReason"]) == (False, "refunded")
            assert settled(core, gate) == [("voided", "refunded")]


@pytest.mark.parametrize("key", [Exception, 500], ids=["Exception", "500"])
@pytest.mark.parametrize("status", [200, 503])
@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_an_error_handler_answering_outside_the_middleware_is_judged_by_its_status(
    core: Core, key: Any, status: int, sync: bool
) -> None:
    """Starlette runs the app's 500 (or ``Exception``) handler outside every middleware: the
    gate saw the error and refunded it while the client got the handler's 200. That handler
    now answers inside the gate: a 2xx is delivered, any other status refunded."""
    ran: list[str] = []

    async def report(request: Any) -> PlainTextResponse:
        raise RuntimeError("the upstream failed")

    def answer(request: Any, exc: Exception) -> PlainTextResponse:
        ran.append(str(exc))
        return PlainTextResponse("the cached report", status_code=status)

    async def answer_async(request: Any, exc: Exception) -> PlainTextResponse:
        return answer(request, exc)

    app = _report_app(core, report, policy=True)
    app.add_exception_handler(key, answer if sync else answer_async)
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/report", headers=[header(core, client, "/report")])
    assert (resp.status_code, resp.text) == (status, "the cached report")
    assert ran == ["the upstream failed"]  # once: the outer layer did not answer again
    expected = ("payable", "delivered") if status == 200 else ("voided", "refunded")
    assert settled(core, gate_of(app.middleware_stack)) == [expected]


@pytest.mark.parametrize("fails", ["handler", "its-background-task"])
def test_an_error_handler_that_fails_runs_once_and_its_failure_is_logged(
    core: Core, fails: str, caplog: Any
) -> None:
    """A 500 handler that raised was called again by Starlette's outer layer (its alerts sent
    twice); a failure while its answer went out (a background task) vanished unlogged."""
    calls: list[str] = []

    async def report(request: Any) -> PlainTextResponse:
        raise RuntimeError("the upstream failed")

    def alert() -> None:
        raise ValueError("the alert could not be sent")

    async def answer(request: Any, exc: Exception) -> PlainTextResponse:
        calls.append(str(exc))
        if fails == "handler":
            raise exc
        return PlainTextResponse("the cached report", background=BackgroundTask(alert))

    app = _report_app(core, report, policy=True)
    app.add_exception_handler(500, answer)
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/report", headers=[header(core, client, "/report")])
    assert calls == ["the upstream failed"]
    logged = caplog.text
    if fails == "handler":
        assert resp.status_code == 500 and "the app's error handler failed" in logged
        assert settled(core, gate_of(app.middleware_stack)) == [("voided", "refunded")]
    else:
        assert (resp.status_code, resp.text) == (200, "the cached report")
        assert "the alert could not be sent" in logged
        assert settled(core, gate_of(app.middleware_stack)) == [("payable", "delivered")]


def test_an_error_without_a_handler_is_still_the_servers_500_and_refunded(core: Core) -> None:
    async def report(request: Any) -> PlainTextResponse:
        raise RuntimeError("the upstream failed")

    app = _report_app(core, report, policy=True)
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/report", headers=[header(core, client, "/report")])
    assert resp.status_code == 500
    assert settled(core, gate_of(app.middleware_stack)) == [("voided", "refunded")]


def test_the_servers_500_for_an_unhandled_error_says_the_payment_was_refunded(
    core: Core,
) -> None:
    """With no error handler the 500 was the server's, written outside the gate: refunded,
    but its buyer had no result header to tell (Flask's and Django's say "refunded"). The
    gate sends that plain 500 now, with the header; the error still reaches the server."""
    import base64
    import json

    async def report(request: Any) -> PlainTextResponse:
        raise RuntimeError("the upstream failed")

    app = _report_app(core, report, policy=True)
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/report", headers=[header(core, client, "/report")])
    assert (resp.status_code, resp.text) == (500, "Internal Server Error")
    result = json.loads(base64.b64decode(resp.headers["payment-response"]))
    assert (result["success"], result["errorReason"]) == (False, "refunded")
    assert settled(core, gate_of(app.middleware_stack)) == [("voided", "refunded")]
    with TestClient(app) as client, pytest.raises(RuntimeError, match="upstream"):
        client.get("/report", headers=[header(core, client, "/report")])


def test_fastapi_cleanup_failing_after_a_paid_answer_keeps_the_payment(core: Core) -> None:
    app = FastAPI()
    payments = FourmicaX402(app, pay_to=SELLER, network=NETWORK, core=core)
    cleaned: list[str] = []

    def fail() -> None:
        cleaned.append("task")
        raise RuntimeError("the background task failed")

    async def session() -> AsyncIterator[str]:
        yield "session"
        cleaned.append("dependency")
        raise RuntimeError("the cleanup failed after the answer")

    @app.get("/task", dependencies=[Paid("$0.01")])
    def task(background: BackgroundTasks) -> dict[str, bool]:
        background.add_task(fail)
        return {"ok": True}

    @app.get("/cleanup", dependencies=[Paid("$0.01")])
    def cleanup(s: str = Depends(session)) -> dict[str, str]:
        return {"session": s}

    with TestClient(app, raise_server_exceptions=False) as client:
        for path in ("/task", "/cleanup"):
            resp = client.get(path, headers=[header(core, client, path)])
            assert resp.status_code == 200, resp.text
    assert sorted(cleaned) == ["dependency", "task"]
    assert settled(core, payments.gate) == [("payable", "delivered")] * 2


def test_a_client_leaving_mid_stream_on_asgi_2_3_is_not_charged(core: Core) -> None:
    ran: list[str] = []
    app = starlette_app(ran)
    app.user_middleware[0].kwargs["core"] = core
    with TestClient(app) as client:
        paid = header(core, client, "/stream")
    sent: list[dict[str, Any]] = []

    async def exchange() -> None:
        first = asyncio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await first.wait()  # the client reads the first chunk, then hangs up
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)  # ASGI 2.3: a send after the client left goes nowhere
            if message["type"] == "http.response.body" and message.get("body"):
                first.set()

        await asyncio.wait_for(app(scope_of("/stream", paid), receive, send), 10)

    asyncio.run(exchange())
    assert sent[0]["status"] == 200 and "chunk-4" not in ran  # the stream stopped early
    assert settled(core, gate_of(app.middleware_stack)) == [("voided", "refunded")]


def test_a_stream_read_to_its_end_on_asgi_2_3_is_charged(core: Core) -> None:
    ran: list[str] = []
    app = starlette_app(ran)
    app.user_middleware[0].kwargs["core"] = core
    with TestClient(app) as client:
        resp = client.get("/stream", headers=[header(core, client, "/stream")])
        assert resp.status_code == 200 and resp.text.count("chunk-") == 5
        assert settled(core, gate_of(app.middleware_stack)) == [("payable", "delivered")]


_DOC = [b'{"doc": "x"}']


@pytest.mark.parametrize(
    ("chunks", "reads"),
    [([b""], ""), (_DOC, "first"), (_DOC, ""), ([b"x" * 40_000] * 3, "late")],
    ids=["get", "post-read-first", "post-unread", "post-large-read-late"],
)
@pytest.mark.parametrize("leaves", [True, False], ids=["client-leaves", "client-stays"])
def test_a_client_leaving_while_a_handler_computes_its_answer_is_not_charged(
    core: Core, chunks: list[bytes], reads: str, leaves: bool
) -> None:
    """A handler that computes its whole answer never reads ``receive`` again, so the app is
    not told the client left (uvicorn drops the late write silently): the exchange listens
    itself, and a client gone before the answer is not charged. So is a POST whose body the
    handler never reads (a FastAPI route without a body parameter): it was charged, as
    nothing listened before the app read the body. A body the app reads late is read ahead
    for it, in parts, and handed over whole."""
    computed: list[str] = []
    body = b"".join(chunks)

    async def read_body(receive: Any) -> bytes:
        parts = [await receive()]
        while parts[-1].get("more_body"):
            parts.append(await receive())
        return b"".join(part["body"] for part in parts)

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await Starlette()(scope, receive, send)  # type: ignore[no-any-return]
        if reads == "first":  # reads its request whole first, as a JSON handler does
            assert await read_body(receive) == body
        await asyncio.sleep(0.8)  # the work (the exchange listens after half a second)
        if reads == "late":
            assert await read_body(receive) == body
            await asyncio.sleep(0.3)
        computed.append("answer")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the answer"})
        return None

    method = "POST" if body else "GET"
    app = PaymentMiddleware(handler, pay_to=SELLER, routes={f"{method} /work": "$0.01"}, core=core)
    with TestClient(app) as client:
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 10**9, network=NETWORK)
        challenge = client.request(method, "/work", content=body)
        req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
        version = 2 if "validatorAddress" in req.extra else 1
        tab = core.open_tab(buyer.address, SELLER, network=NETWORK, guarantee_version=version)
        name, value = payment_header(buyer, req, tab.to_json())
    sent: list[dict[str, Any]] = []

    async def exchange() -> None:
        done = asyncio.Event()
        told: list[str] = []

        async def receive() -> dict[str, Any]:
            if len(told) < len(chunks):
                told.append("body")
                more = len(told) < len(chunks)
                return {"type": "http.request", "body": chunks[len(told) - 1], "more_body": more}
            if leaves:
                await asyncio.sleep(0.05)  # the client hangs up while the handler works
            else:
                await done.wait()  # as servers do once the response is complete
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)  # ASGI 2.3: a send after the client left goes nowhere
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        headers = [(b"host", b"testserver"), (name.lower().encode(), value.encode())]
        if body:
            headers.append((b"content-length", str(len(body)).encode()))
        scope = {**scope_of("/work", (b"x-unused", b"")), "method": method, "headers": headers}
        await asyncio.wait_for(app(scope, receive, send), 10)

    asyncio.run(exchange())
    assert computed == ["answer"] and sent[0]["status"] == 200
    expected = ("voided", "refunded") if leaves else ("payable", "delivered")
    assert settled(core, app.gate) == [expected]


@pytest.mark.parametrize("ending", ["cut-body", "no-body", "nothing"])
def test_an_app_that_returns_before_its_response_ended_is_not_charged(
    core: Core, ending: str
) -> None:
    """The response started (200, Content-Length 100) but its last body message never came:
    the client got 7 bytes and a closed connection, not the answer it paid for."""

    async def unfinished(scope: Any, receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        if ending == "nothing":
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
        )
        if ending == "cut-body":
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})

    app = PaymentMiddleware(unfinished, pay_to=SELLER, routes={"GET /raw": "$0.01"}, core=core)
    with TestClient(app, raise_server_exceptions=False) as client:
        paid = header(core, client, "/raw")
    sent = exchange(app, scope_of("/raw", paid))
    assert [m["type"] for m in sent] == {
        "cut-body": ["http.response.start", "http.response.body"],
        "no-body": ["http.response.start"],
        "nothing": [],
    }[ending]
    assert settled(core, app.gate) == [("voided", "refunded")]


@pytest.mark.parametrize("after", ["raises", "returns", "client-closes"])
def test_a_body_out_to_its_content_length_is_delivered_whatever_follows(
    core: Core, after: str
) -> None:
    """Every byte of the declared Content-Length went out, but the closing (empty) body
    message did not: the app failed, returned, or the client, having read the whole body,
    closed first. The client has the answer it paid for; it was refunded all the same."""

    async def lingering(scope: Any, receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"0123456789", "more_body": True})
        if after == "raises":
            raise RuntimeError("closing an upstream connection failed")
        while after == "client-closes" and (await receive())["type"] != "http.disconnect":
            pass  # the request (empty), then the client closing

    app = PaymentMiddleware(lingering, pay_to=SELLER, routes={"GET /raw": "$0.01"}, core=core)
    with TestClient(app, raise_server_exceptions=False) as client:
        paid = header(core, client, "/raw")
    sent: list[dict[str, Any]] = []
    asked = [0]

    async def receive() -> dict[str, Any]:
        asked[0] += 1
        if asked[0] == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with contextlib.suppress(RuntimeError):
        asyncio.run(asyncio.wait_for(app(scope_of("/raw", paid), receive, send), 10))
    assert b"".join(m.get("body", b"") for m in sent) == b"0123456789"
    assert settled(core, app.gate) == [("payable", "delivered")]


@pytest.mark.parametrize("case", ["send-fails", "left-then-raises"])
def test_a_body_the_server_did_not_take_whole_is_not_charged_when_the_app_then_fails(
    core: Core, case: str
) -> None:
    """The whole declared body was handed to ``send``, but the server did not take it: the
    send raised (ASGI 2.4, the client gone), or the client was heard leaving first and the
    server dropped the rest (ASGI 2.3); then the app raised. Not delivered."""
    heard = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-length", b"10")]})
        if case == "left-then-raises":
            while (await receive())["type"] != "http.disconnect":
                pass
        await send({"type": "http.response.body", "body": b"0123456789", "more_body": True})
        raise RuntimeError("closing an upstream connection failed")

    gate_app = PaymentMiddleware(app, pay_to=SELLER, routes={"GET /raw": "$0.01"}, core=core)
    with TestClient(gate_app, raise_server_exceptions=False) as client:
        paid = header(core, client, "/raw")
    asked = [0]

    async def receive() -> dict[str, Any]:
        asked[0] += 1
        if asked[0] == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        heard.set()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if case == "send-fails" and message["type"] == "http.response.body":
            raise OSError("the client is gone")  # ASGI 2.4

    scope = scope_of("/raw", paid, spec="2.4" if case == "send-fails" else "2.3")
    with contextlib.suppress(RuntimeError, OSError):
        asyncio.run(asyncio.wait_for(gate_app(scope, receive, send), 10))
    assert heard.is_set() == (case == "left-then-raises")
    assert settled(core, gate_app.gate) == [("voided", "refunded")]


@pytest.mark.parametrize("pathsend", [True, False], ids=["pathsend", "body"])
def test_a_file_the_server_sends_for_the_app_is_delivered(
    core: Core, tmp_path: Any, pathsend: bool
) -> None:
    """Starlette's FileResponse hands the file to a server offering ``http.response.pathsend``
    (Granian does): that message, not a body message, ends the response."""
    from starlette.responses import FileResponse

    report = tmp_path / "report.txt"
    report.write_text("the report")

    async def download(request: Any) -> FileResponse:
        return FileResponse(report)

    inner = Starlette(routes=[Route("/file", download)])
    app = PaymentMiddleware(inner, pay_to=SELLER, routes={"GET /file": "$0.01"}, core=core)
    with TestClient(app) as client:
        paid = header(core, client, "/file")
    extensions = {"http.response.pathsend": {}} if pathsend else {}
    sent = exchange(app, scope_of("/file", paid, "2.4", extensions=extensions))
    last = "http.response.pathsend" if pathsend else "http.response.body"
    assert sent[0]["status"] == 200 and sent[-1]["type"] == last
    assert settled(core, app.gate) == [("payable", "delivered")]


@pytest.mark.parametrize(
    "after",
    [
        [{"type": "http.response.pathsend", "path": "report.txt"}],
        [{"type": "http.response.zerocopysend", "file": 0, "count": 10}],
        [{"type": "http.response.body", "body": b"the report"}, {"type": "http.response.trailers"}],
    ],
    ids=["pathsend", "zerocopysend", "trailers"],
)
def test_a_refused_settle_after_sends_nothing_of_the_apps_after_its_402(
    core: Core, after: list[dict[str, Any]]
) -> None:
    """Settle-after answers a refused settle with a 402 in place of the app's 2xx; the app's
    file-sending message (or its trailers) went on to the server after that 402 had ended:
    a server offering the extension sends the paid file unpaid, others fail the request."""
    from fourmica_x402.errors import PaymentError

    async def download(scope: Any, receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        start = {"type": "http.response.start", "status": 200, "trailers": True}
        await send({**start, "headers": [(b"content-length", b"10")]})
        for message in after:
            await send(message)

    app = PaymentMiddleware(
        download, pay_to=SELLER, routes={"GET /file": "$0.01"}, core=core, settle="after"
    )
    with TestClient(app) as client:
        paid = header(core, client, "/file")

    def refuse(payload: Any, chosen: Any) -> Any:
        raise PaymentError("the facilitator refused it", reason="invalid_signature")

    app.gate.facilitator.settle = refuse  # type: ignore[method-assign]
    sent = exchange(app, scope_of("/file", paid, "2.4"))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 402 and b"the report" not in sent[1]["body"]
    assert settled(core, app.gate) == []  # nothing accepted, nothing charged


def test_a_response_outlasting_the_validation_timeout_is_still_charged(tmp_path: Any) -> None:
    """The Core cancels a G-v2 guarantee nobody scored by its deadline; a paid response still
    streaming then used to be delivered free (its score, posted at the end, was refused).
    The gate holds the deadline open while the response lasts (docs/protocol.md, "Delivery")."""
    import threading
    import time

    from fourmica_x402.core import CoreConfig

    core = Core(f"sqlite:///{tmp_path}/core.db", config=CoreConfig(validation_timeout=1.0))

    async def slow(request: Any) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(5):  # 2 s: twice the timeout
                yield f"part {i}\n".encode()
                await asyncio.sleep(0.4)

        return StreamingResponse(chunks())

    options = {
        "pay_to": SELLER,
        "core": core,
        "network": NETWORK,
        "routes": {"GET /stream": "$0.01"},
    }
    app = Starlette(
        routes=[Route("/stream", slow)], middleware=[Middleware(PaymentMiddleware, **options)]
    )
    stop = threading.Event()

    def ticks() -> None:  # what `fourmica-x402 serve` (or a cron job) does
        while not stop.wait(0.1):
            core.expire_validations()

    ticker = threading.Thread(target=ticks)
    ticker.start()
    try:
        with TestClient(app) as client:
            name, value = header(core, client, "/stream")
            began = time.monotonic()
            got = client.get("/stream", headers={name.decode(): value.decode()})
            assert got.status_code == 200 and got.text.count("part") == 5
            assert time.monotonic() - began > 1.5  # it did outlast the timeout
            assert settled(core, gate_of(app.middleware_stack)) == [("payable", "delivered")]
    finally:
        stop.set()
        ticker.join(5)
    [guarantee] = core.guarantees()
    assert core.position(guarantee.user_address, network=NETWORK).locked == 10_000
    assert core.audit() == []
    core.close()


def test_the_next_stage_waits_until_this_one_was_delivered(core: Core) -> None:
    """A job moved on when a stage's 2xx response *started*: a buyer bought stage 3 while
    stage 2 still streamed, then left before stage 2's last chunk; stage 2 was refunded,
    stage 3 stood, and the job read "done" (docs/protocol.md, "Staged work")."""
    from fourmica_x402 import Jobs, Stage

    gate: dict[str, Any] = {}

    async def plain(request: Any) -> PlainTextResponse:
        return PlainTextResponse("stage")

    async def streamed(request: Any) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"part 1 of stage 2\n"
            await gate["go"].wait()  # the test decides when (and whether) the rest goes out
            yield b"part 2 of stage 2\n"

        return StreamingResponse(chunks())

    routes = {
        "GET /s1": {"price": "$0.01", "stage": Stage("report", 1, of=3)},
        "GET /s2": {"price": "$0.02", "stage": Stage("report", 2, of=3)},
        "GET /s3": {"price": "$0.03", "stage": Stage("report", 3, of=3)},
    }
    options = {"pay_to": SELLER, "core": core, "network": NETWORK, "routes": routes}
    app = Starlette(
        routes=[Route("/s1", plain), Route("/s2", streamed), Route("/s3", plain)],
        middleware=[Middleware(PaymentMiddleware, **options)],
    )
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**9, network=NETWORK)

    def paying(client: TestClient, path: str, job: str | None) -> list[tuple[bytes, bytes]]:
        extra = {"job-id": job} if job else {}
        challenge = client.get(path, headers=extra)
        assert challenge.status_code == 402, challenge.text
        req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
        tab = core.open_tab(
            buyer.address, req.pay_to, network=NETWORK, asset=req.asset, guarantee_version=2
        )
        name, value = payment_header(buyer, req, tab.to_json())
        return [(k.encode(), v.encode()) for k, v in {**extra, name.lower(): value}.items()]

    for leaves in (False, True):
        with TestClient(app) as client:
            first = client.get(
                "/s1", headers=[(k.decode(), v.decode()) for k, v in paying(client, "/s1", None)]
            )
            job = first.headers["job-id"]
            second = paying(client, "/s2", job)

        async def run(
            second: list[tuple[bytes, bytes]], job: str, leaves: bool
        ) -> tuple[list[Any], int, str]:
            gate["go"] = asyncio.Event()
            sent: list[Any] = []
            left, asked = asyncio.Event(), []

            async def receive() -> dict[str, Any]:
                if asked:  # the request was read: wait, then leave if this round says so
                    await left.wait()
                    return {"type": "http.disconnect"}
                asked.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = scope_of("/s2", second[-1])
            scope["headers"] = [(b"host", b"testserver"), *second]
            streaming = asyncio.create_task(app(scope, receive, send))
            while len(sent) < 2:  # the 200 started and its first chunk went out
                await asyncio.sleep(0.01)
            third: list[Any] = []

            async def third_send(message: dict[str, Any]) -> None:
                third.append(message)

            async def third_receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            probe = scope_of("/s3", (b"job-id", job.encode()))
            await app(probe, third_receive, third_send)
            body = b"".join(m.get("body", b"") for m in third[1:]).decode()
            if leaves:
                left.set()
            else:
                gate["go"].set()
            await asyncio.wait_for(streaming, 10)
            return sent, third[0]["status"], body

        sent, status, body = asyncio.run(run(second, job, leaves))
        assert sent[0]["status"] == 200
        assert status == 409 and "stage_out_of_order" in body, (status, body)  # not a 402
        with TestClient(app) as client:
            after = client.get("/s3", headers={"job-id": job})
        state = Jobs(core.store).get(job)
        assert state is not None
        if leaves:  # stage 2 broke off: refunded, the job failed, stage 3 never sold
            assert after.status_code == 409 and after.json()["error"] == "job_failed"
            assert state.state == "failed"
        else:  # delivered whole: now stage 3 is for sale
            assert after.status_code == 402, after.text
            assert state.state == "open" and state.done == 2
    gate_of(app.middleware_stack).flush()
    # Two stage 1s and one stage 2 delivered; the other stage 2 refunded; no stage 3.
    assert core.position(buyer.address, network=NETWORK).locked == 2 * 10_000 + 20_000


@pytest.mark.parametrize("label", ["written", "refused"])
@pytest.mark.parametrize("policy", [False, True], ids=["G-v1", "G-v2"])
def test_a_request_cancelled_while_its_settle_waits_for_another_process_is_refunded(
    core: Core, policy: bool, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the database's write lock, so the acceptance goes to a worker
    thread; an outer timeout cancels the request meanwhile. The thread still commits once
    the lock is free: the handler never ran, so that acceptance is refunded. Labelling its
    record may then fail (the disk filled up right after the acceptance): the refund was
    never filed, and the buyer stayed charged for a request that was not served."""
    import sqlite3
    import threading
    import time

    from fourmica_x402.core.store import StoreUnavailable
    from fourmica_x402.records import Records

    if label == "refused":

        def full(*args: Any) -> None:
            raise StoreUnavailable("SQLite commit failed: database or disk is full (injected)")

        monkeypatch.setattr(Records, "label", full)
    ran: list[str] = []

    async def report(request: Any) -> PlainTextResponse:
        ran.append("handler")
        return PlainTextResponse("the report")

    app = _report_app(core, report, policy=policy)
    with TestClient(app) as client:
        paid = header(core, client, "/report")
    other = sqlite3.connect(core.store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process writing for a second
    release = threading.Timer(1.0, lambda: other.execute("COMMIT"))
    release.start()

    async def timed_out() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(app(scope_of("/report", paid), _receive, _drop), 0.3)

    asyncio.run(timed_out())
    release.join()
    other.close()
    gate = gate_of(app.middleware_stack)
    deadline = time.monotonic() + 15
    refunded = [("voided", "refunded" if label == "written" else None)]
    while (found := settled(core, gate)) != refunded:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    assert ran == [] and core.audit() == []
    assert core.position(core.guarantees()[0].user_address, network=NETWORK).locked == 0


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _drop(message: dict[str, Any]) -> None:
    pass


def test_a_base_http_middleware_below_the_gate_is_named_at_start_up(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """Starlette's BaseHTTPMiddleware passes on call_next's copy of a response, which ends a
    stream the app failed in as if it were whole: below the gate, such a paid stream is
    charged. Where the docs advise putting response-changing middleware, nothing said so."""

    async def report(request: Any) -> PlainTextResponse:
        return PlainTextResponse("report")

    async def tag(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["x-tag"] = "1"
        return response

    def started(*below: Middleware, wrapped: bool = False) -> list[str]:
        caplog.clear()
        config = PaymentConfig(pay_to=SELLER, routes=ROUTES, core=core)
        routes = [Route("/report", report), Route("/stream", report)]
        if wrapped:  # PaymentMiddleware(app, ...) around the whole app
            app: Any = PaymentMiddleware(Starlette(routes=routes, middleware=below), config=config)
        else:
            gate = Middleware(PaymentMiddleware, config=config)
            app = Starlette(routes=routes, middleware=[gate, *below])
        with caplog.at_level(logging.WARNING, logger="fourmica_x402"), TestClient(app) as client:
            assert client.get("/report").status_code == 402
        return [r.getMessage() for r in caplog.records if "BaseHTTPMiddleware" in r.getMessage()]

    for wrapped in (False, True):
        (said,) = started(Middleware(BaseHTTPMiddleware, dispatch=tag), wrapped=wrapped)
        assert said.startswith("tag (a Starlette BaseHTTPMiddleware) runs below the payment")
        assert started(wrapped=wrapped) == []  # nothing below: nothing to say


def test_a_base_http_middleware_below_the_http_middleware_form_is_named_too(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """The ``app.middleware("http")(http_middleware(config))`` form never looked below itself:
    the warning the docs promise for a BaseHTTPMiddleware below the gate was never logged."""
    from fourmica_x402.adapters.fastapi import http_middleware

    app = FastAPI()

    @app.get("/report")
    def report() -> dict[str, str]:
        return {"report": "paid"}

    @app.middleware("http")
    async def tag(request: Any, call_next: Any) -> Any:  # below the gate: added first
        response = await call_next(request)
        response.headers["x-tag"] = "1"
        return response

    config = PaymentConfig(pay_to=SELLER, routes={"GET /report": "$0.01"}, core=core)
    app.middleware("http")(http_middleware(config))
    with caplog.at_level(logging.WARNING, logger="fourmica_x402"), TestClient(app) as client:
        assert client.get("/report").status_code == 402
    said = [r.getMessage() for r in caplog.records if "BaseHTTPMiddleware" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("tag (a Starlette BaseHTTPMiddleware) runs below")


@pytest.mark.parametrize("how", ["mount", "host"])
def test_a_base_http_middleware_in_an_app_the_router_mounts_is_named_too(
    core: Core, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A FastAPI app mounted under the gated one (``mount``, or ``host``: by its Host) with an
    ``@app.middleware("http")`` of its own: that layer is below the gate too, and a paid stream
    failing midway under it is charged (its buyer was, here), but the gate looked down its own
    stack only and the warning the docs promise was never logged."""
    sub = FastAPI()

    @sub.middleware("http")
    async def tag(request: Any, call_next: Any) -> Any:
        return await call_next(request)

    @sub.get("/report")
    def report() -> dict[str, str]:
        return {"report": "paid"}

    app = FastAPI()
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /*": "$0.01"})
    if how == "mount":
        app.mount("/sub", sub)
    else:
        app.host("api.example.com", sub)
    path, host = ("/sub/report", {}) if how == "mount" else ("/report", {"host": "api.example.com"})
    with caplog.at_level(logging.WARNING, logger="fourmica_x402"), TestClient(app) as client:
        assert client.get(path, headers=host).status_code == 402
    said = [r.getMessage() for r in caplog.records if "BaseHTTPMiddleware" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("tag (a Starlette BaseHTTPMiddleware) runs below")


@pytest.mark.parametrize("how", ["mount", "host"])
def test_a_stream_failing_under_an_inner_http_middleware_gate_is_not_charged(
    core: Core, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """An app mounted in a gated one (by path or by its Host) with a gate of its own in the
    ``app.middleware("http")`` form: the outer gate settled the payment and the inner one
    passed the request on through ``call_next``, whose copy of the response ends a stream the
    handler failed in as if it were whole. The buyer was charged for half a stream; the
    inner gate now runs the app below itself, so the outer one sees the failure and refunds."""
    from fourmica_x402.adapters.fastapi import http_middleware

    from fourmica_x402.testing import paid_headers

    sub = FastAPI()
    sub.middleware("http")(http_middleware(PaymentConfig(pay_to=SELLER, core=core)))

    @sub.get("/stream")
    def stream(p: Any = Paid("$0.01")) -> StreamingResponse:  # noqa: B008
        def chunks() -> Any:
            yield b"part one"
            raise RuntimeError("the source went away")

        return StreamingResponse(chunks())

    app = FastAPI()
    FourmicaX402(app, pay_to=SELLER, core=core)
    if how == "mount":
        app.mount("/sub", sub)
    else:
        app.host("api.example.com", sub)
    path, host = ("/sub/stream", {}) if how == "mount" else ("/stream", {"host": "api.example.com"})
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**6, network=NETWORK)
    logs = caplog.at_level(logging.WARNING, logger="fourmica_x402")
    with logs, TestClient(app, headers=host, raise_server_exceptions=False) as client:
        headers = paid_headers(client, buyer, client.get(path))
        with contextlib.suppress(Exception):  # the stream breaks off, as the server sees it
            client.get(path, headers=headers)
    assert not [r for r in caplog.records if "BaseHTTPMiddleware" in r.getMessage()]
    [paid] = core.guarantees(address=buyer.address)
    assert paid.state in ("voided", "cancelled")
    assert core.position(buyer.address, network=NETWORK).locked == 0


def test_an_inner_http_middleware_gate_wrapped_by_functools_wraps_is_still_warned_of(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """A mounted app's gate in the ``app.middleware("http")`` form, wrapped in a decorator of
    the seller's made with ``functools.wraps`` (which copies the gate's attributes): the wrapper
    is what the app registered, so for a request the outer gate prices and the inner does not,
    the inner gate cannot find the app below it and passes the request on through
    ``call_next``, whose copy ends a stream the handler failed in as if whole. The outer gate
    took the wrapper for the inner gate itself and no longer warned of it (docs/protocol.md):
    the buyer of a stream breaking off was charged without a word in the log (the wrapper
    bears the gate's name)."""
    import functools

    from fourmica_x402.adapters.fastapi import http_middleware

    def logged(dispatch: Any) -> Any:
        @functools.wraps(dispatch)
        async def wrapper(request: Any, call_next: Any) -> Any:
            return await dispatch(request, call_next)

        return wrapper

    sub = FastAPI()
    sub.middleware("http")(logged(http_middleware(PaymentConfig(pay_to=SELLER, core=core))))

    @sub.get("/report")
    def report() -> dict[str, str]:
        return {"report": "paid"}

    app = FastAPI()
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /sub/*": "$0.01"})
    app.mount("/sub", sub)
    with caplog.at_level(logging.WARNING, logger="fourmica_x402"), TestClient(app) as client:
        assert client.get("/sub/report").status_code == 402
    said = [r.getMessage() for r in caplog.records if "BaseHTTPMiddleware" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("middleware (a Starlette BaseHTTPMiddleware)")


@pytest.mark.parametrize("case", ["short", "fails-after-the-whole-body"])
def test_compression_outside_the_gate_neither_hides_a_short_body_nor_breaks_a_whole_one(
    core: Core, case: str
) -> None:
    """GZip outside the gate drops the Content-Length the server would check. A 2xx body
    ending short of it (a file that shrank) was charged; one sent whole, then its generator
    failing, was charged while GZip never closed its framing (the client: an incomplete
    read). The short one is refused at its last message (refunded); the whole one is closed
    by the gate, so the client gets it whole (charged)."""
    from starlette.middleware.gzip import GZipMiddleware

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * (3000 if case == "short" else 4000)
        if case != "short":
            raise RuntimeError("an upstream connection failed after the body")

    async def report(request: Any) -> StreamingResponse:
        return StreamingResponse(
            body(), headers={"content-length": "4000" if case != "short" else "8000"}
        )

    gate_mw = Middleware(
        PaymentMiddleware, pay_to=SELLER, routes={"GET /report": "$0.01"}, core=core
    )
    app = Starlette(
        routes=[Route("/report", report)], middleware=[Middleware(GZipMiddleware), gate_mw]
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        name, value = header(core, client, "/report")
        got = b""
        with contextlib.suppress(Exception):
            got = client.get("/report", headers={name.decode(): value.decode()}).content
        if case == "short":
            assert settled(core, gate_of(app.middleware_stack)) == [("voided", "refunded")]
        else:
            assert got == b"x" * 4000
            assert settled(core, gate_of(app.middleware_stack)) == [("payable", "delivered")]


def test_compression_outside_the_gate_is_closed_for_an_app_returning_after_its_whole_body(
    core: Core,
) -> None:
    """A relaying app sent its declared Content-Length in chunks and returned without the
    closing body message. Charged as delivered, but GZip outside never closed its framing:
    uvicorn cut the chunked answer and the buyer's client failed (an incomplete read). The
    gate closes it, as it does for an app that raises there."""
    import gzip

    from starlette.middleware.gzip import GZipMiddleware

    async def relay(scope: Any, receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-length", b"4000")]})
        for _ in range(2):
            await send({"type": "http.response.body", "body": b"x" * 2000, "more_body": True})

    gate_app = PaymentMiddleware(relay, pay_to=SELLER, routes={"GET /raw": "$0.01"}, core=core)
    app = GZipMiddleware(gate_app)
    with TestClient(app) as client:
        paid = header(core, client, "/raw")
    scope = scope_of("/raw", paid)
    scope["headers"].append((b"accept-encoding", b"gzip"))
    sent = exchange(app, scope)
    assert sent[-1]["type"] == "http.response.body" and not sent[-1].get("more_body", False)
    assert gzip.decompress(b"".join(m.get("body", b"") for m in sent[1:])) == b"x" * 4000
    assert settled(core, gate_app.gate) == [("payable", "delivered")]


def test_records_are_found_by_any_spelling_of_the_payer_or_the_guarantee(core: Core) -> None:
    """``Records.query(payer=…)`` matched the stored EIP-55 spelling only: a payer given in
    lowercase (as addresses often arrive) found nothing."""

    async def report(request: Any) -> PlainTextResponse:
        return PlainTextResponse("the report")

    app = _report_app(core, report, policy=False)
    with TestClient(app) as client:
        name, value = header(core, client, "/report")
        assert client.get("/report", headers={name.decode(): value.decode()}).status_code == 200
        records = gate_of(app.middleware_stack).records
        gate_of(app.middleware_stack).flush()
        [record] = records.query()
    assert record.payer != record.payer.lower()  # stored in its EIP-55 form
    for spelling in (record.payer.lower(), "0x" + record.payer[2:].upper()):
        assert [r.record_id for r in records.query(payer=spelling)] == [record.record_id]
    gid = record.guarantee_id or ""
    assert [r.record_id for r in records.query(guarantee_id=gid.upper().replace("0X", "0x"))] == [
        record.record_id
    ]
    with pytest.raises(ValueError, match="not an address"):
        records.query(payer="nobody")


def test_a_range_answered_206_is_charged_and_one_answered_416_is_refunded(
    core: Core, tmp_path: Any
) -> None:
    """A ``Range`` request is served as asked (docs/protocol.md, "Paid responses"): Starlette's
    ``FileResponse`` answers one range or several with a 206, a delivered 2xx charged the
    route's price; a range past the file's end is a 416, refunded."""
    from starlette.responses import FileResponse

    served = tmp_path / "paid.bin"
    served.write_bytes(bytes(range(256)) * 16)
    app = Starlette(routes=[Route("/file", lambda request: FileResponse(served))])
    middleware = PaymentMiddleware(app, routes={"GET /file": "$0.01"}, pay_to=SELLER, core=core)
    client = TestClient(middleware)
    asked = {"bytes=0-0": b"\x00", "bytes=0-0,8-9": None, "bytes=999999-": b""}
    for value, body in asked.items():
        name, paid = header(core, client, "/file")
        resp = client.get("/file", headers={name.decode(): paid.decode(), "Range": value})
        assert resp.status_code == (416 if value.startswith("bytes=9") else 206)
        assert body is None or resp.content == body
    states = [state for state, _ in settled(core, middleware.gate)]
    assert sorted(states) == ["payable", "payable", "voided"], states


def test_a_granted_answer_of_the_http_middleware_form_is_never_stored_by_shared_caches(
    core: Core,
) -> None:
    """``GRANT`` (a subscriber's free access) under ``app.middleware("http")(http_middleware(
    config))``: the answer kept the handler's ``Cache-Control: public, max-age=600`` and its
    ``CDN-Cache-Control``, so a CDN stored the priced content and served it to unpaid
    clients (docs/operations.md)."""
    from fastapi.responses import JSONResponse
    from fourmica_x402.adapters.fastapi import http_middleware

    from fourmica_x402.gate import GRANT

    app = FastAPI()
    shared = {"cache-control": "public, max-age=600", "cdn-cache-control": "max-age=600"}

    @app.get("/report")
    def report() -> JSONResponse:
        return JSONResponse({"report": "paid"}, headers=shared)

    grant = lambda request, route: GRANT if request.header("x-key") == "sub" else None  # noqa: E731
    routes = {"GET /report": "$0.01"}
    config = PaymentConfig(pay_to=SELLER, routes=routes, core=core, on_protected_request=grant)
    app.middleware("http")(http_middleware(config))
    with TestClient(app) as client:
        resp = client.get("/report", headers={"x-key": "sub"})
    assert resp.status_code == 200 and resp.json() == {"report": "paid"}
    assert resp.headers["cache-control"] == "private, no-store"
    assert "cdn-cache-control" not in resp.headers and core.guarantees() == []


def test_a_granted_answer_to_a_body_the_gate_read_is_never_stored_by_shared_caches(
    core: Core,
) -> None:
    """The same, on a route whose units the gate reads from the request body: the gate ran the
    app below itself (to hand it the body it read) and the answer went out with the
    handler's ``public, max-age`` all the same."""
    from fastapi.responses import JSONResponse
    from fourmica_x402.adapters.fastapi import http_middleware

    from fourmica_x402.gate import GRANT

    app = FastAPI()
    shared = {"cache-control": "public, max-age=600", "cdn-cache-control": "max-age=600"}

    @app.post("/records")
    async def records(request: Request) -> JSONResponse:
        return JSONResponse({"records": (await request.json())["n"]}, headers=shared)

    async def units(request: Any) -> int:
        return int(json.loads(await request.read_body())["n"])

    grant = lambda request, route: GRANT if request.header("x-key") == "sub" else None  # noqa: E731
    routes = {"POST /records": {"price": "$0.01", "units": units}}
    config = PaymentConfig(pay_to=SELLER, routes=routes, core=core, on_protected_request=grant)
    app.middleware("http")(http_middleware(config))
    with TestClient(app) as client:
        resp = client.post("/records", json={"n": 3}, headers={"x-key": "sub"})
    assert resp.status_code == 200 and resp.json() == {"records": 3}
    assert resp.headers["cache-control"] == "private, no-store"
    assert "cdn-cache-control" not in resp.headers and core.guarantees() == []


def test_a_wrapped_http_middleware_hands_call_next_the_body_its_units_were_read_from(
    core: Core,
) -> None:
    """FastAPI's http middleware wrapped in another function cannot run the app below itself:
    ``call_next`` serves it, and handed it nothing of a body the gate had read from
    ``receive`` to count its units. The handler waited for the body until the client left.
    Now ``call_next`` hands on the very bytes counted."""
    import httpx
    from fastapi.responses import JSONResponse
    from fourmica_x402.adapters.fastapi import http_middleware

    app = FastAPI()

    @app.post("/records")
    async def records(request: Request) -> JSONResponse:
        return JSONResponse({"records": (await request.json())["n"]})

    async def units(request: Any) -> int:
        return int(json.loads(await request.read_body())["n"])

    routes = {"POST /records": {"price": "$0.01", "units": units}}
    inner = http_middleware(PaymentConfig(pay_to=SELLER, routes=routes, core=core))

    async def wrapped(request: Request, call_next: Any) -> Any:  # the gate cannot find itself
        return await inner(request, call_next)

    app.middleware("http")(wrapped)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**9, network=NETWORK)

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            challenged = await client.post("/records", json={"n": 3})
            (req,) = decode_payment_required(challenged.headers["payment-required"]).accepts
            version = 2 if "validatorAddress" in req.extra else 1
            tab = core.open_tab(
                buyer.address,
                req.pay_to,
                network=NETWORK,
                asset=req.asset,
                guarantee_version=version,
            )
            name, value = payment_header(buyer, req, tab.to_json())
            paid = client.post("/records", json={"n": 3}, headers={name: value})
            return await asyncio.wait_for(paid, 10)

    resp = asyncio.run(run())
    assert resp.status_code == 200 and resp.json() == {"records": 3}
    assert int(core.position(buyer.address, network=NETWORK).locked) == 30_000


def test_a_held_response_outlives_a_wall_clock_step_forward(tmp_path: Any) -> None:
    """The hold moved a deadline once half a timeout had passed on the monotonic clock, while
    the Core sets and expires deadlines by its own (wall) clock: a step forward of the wall
    clock (NTP, a resumed VM) of a third of the timeout let the Core cancel a paid response
    still streaming, delivered free. The hold now measures by the Core's clock."""
    import threading
    import time

    from fourmica_x402.core import CoreConfig
    from fourmica_x402.testing import ShiftedClock

    clock = ShiftedClock()
    core = Core(
        f"sqlite:///{tmp_path}/core.db", config=CoreConfig(validation_timeout=4.0), clock=clock
    )

    async def slow(request: Any) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(8):  # 3.5 s of streaming
                yield f"part {i}\n".encode()
                if i == 0:
                    await asyncio.sleep(0.3)
                    clock.advance(2.4)  # the wall clock steps forward mid-response
                else:
                    await asyncio.sleep(0.45)

        return StreamingResponse(chunks())

    options = {
        "pay_to": SELLER,
        "core": core,
        "network": NETWORK,
        "routes": {"GET /stream": "$0.01"},
    }
    app = Starlette(
        routes=[Route("/stream", slow)], middleware=[Middleware(PaymentMiddleware, **options)]
    )
    stop = threading.Event()

    def ticks() -> None:  # what `fourmica-x402 serve` (or a cron job) does
        while not stop.wait(0.1):
            core.expire_validations()

    ticker = threading.Thread(target=ticks)
    ticker.start()
    try:
        with TestClient(app) as client:
            name, value = header(core, client, "/stream")
            began = time.monotonic()
            got = client.get("/stream", headers={name.decode(): value.decode()})
            assert got.status_code == 200 and got.text.count("part") == 8
            assert time.monotonic() - began > 3.0
            assert settled(core, gate_of(app.middleware_stack)) == [("payable", "delivered")]
    finally:
        stop.set()
        ticker.join(5)
    assert core.audit() == []
    core.close()
