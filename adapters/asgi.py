"""Pure ASGI payment middleware: Starlette, FastAPI, or any ASGI app.

    from starlette.applications import Starlette
    from fourmica_x402 import PaymentConfig
    from fourmica_x402.adapters.asgi import PaymentMiddleware

    app = Starlette(routes=[...])
    app.add_middleware(
        PaymentMiddleware,
        config=PaymentConfig(pay_to="0xYourAddress", routes={"GET /premium": "$0.01"}),
    )
    # in a handler: request.state.payment.payer, .amount, .guarantee_id

Responses stream through untouched (hashed on the way, never buffered); the
result header is added to ``http.response.start``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from fourmica_x402.config import PaymentConfig
from fourmica_x402.gate import PASS, Gate, RequestView, Response

__all__ = ["PaymentMiddleware"]

Scope = MutableMapping[str, Any]
_BODY_LIMIT = 64 * 1024


def request_view(scope: Scope, receive: Any) -> RequestView:
    """The neutral view of an ASGI HTTP request."""
    headers = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"])
    host = next((v for k, v in headers if k == "host"), None)
    if host is None and scope.get("server"):
        server_host, port = scope["server"]
        host = f"{server_host}:{port}" if port else server_host
    raw = scope.get("raw_path")

    async def read_body() -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > _BODY_LIMIT:
                return b""
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    return RequestView(
        method=scope["method"],
        path=scope["path"],
        raw_path=raw.decode("latin-1") if raw else "",
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        scheme=scope.get("scheme", "http"),
        host=host or "localhost",
        client=scope["client"][0] if scope.get("client") else None,
        read_body=read_body,
    )


async def send_response(send: Any, response: Response) -> None:
    headers = [*_encode(response.headers), (b"content-length", str(len(response.body)).encode())]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


class PaymentMiddleware:
    """Charges for the routes of ``config``; everything else passes through."""

    def __init__(
        self,
        app: Any,
        config: PaymentConfig | None = None,
        *,
        gate: Gate | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        self.gate = gate or Gate(config or PaymentConfig(**options))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = request_view(scope, receive)
        outcome = await Gate.run_async(self.gate.before(request))
        if outcome is PASS:
            await self.app(scope, receive, send)
            return
        if isinstance(outcome, Response):
            await send_response(send, outcome)
            return
        state = outcome
        scope.setdefault("state", {})["payment"] = state.payment
        scope["fourmica_x402.payment"] = state.payment
        tap = self.gate.tap()
        status: int | None = None
        sent_headers: list[tuple[str, str]] = []
        replaced = False

        async def wrapped_send(message: dict[str, Any]) -> None:
            nonlocal status, replaced
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = await Gate.run_async(self.gate.response_start(state, status))
                if isinstance(extra, Response):  # settle-after failed: answer 402 instead
                    replaced = True
                    await send_response(send, extra)
                    return
                sent_headers[:] = [
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in message.get("headers", [])
                ]
                message = {**message, "headers": [*message.get("headers", []), *_encode(extra)]}
            elif message["type"] == "http.response.body":
                if replaced:
                    return
                tap.feed(message.get("body", b""))
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, wrapped_send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await Gate.run_async(
                self.gate.finish(
                    state, None if replaced else status, tap.digest, error, tap.body, sent_headers
                )
            )
