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

import hashlib
from typing import Any

from fourmica_x402.config import PaymentConfig
from fourmica_x402.gate import PASS, Gate, RequestView, Response

__all__ = ["PaymentMiddleware"]

Scope = dict[str, Any]
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
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


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
        hasher = hashlib.sha256()
        keep: list[bytes] | None = [] if self.gate.config.idempotent_replay else None
        kept_size = 0
        status: int | None = None
        sent_headers: list[tuple[str, str]] = []
        replaced = False

        async def wrapped_send(message: dict[str, Any]) -> None:
            nonlocal status, replaced, kept_size
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
                encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra]
                message = {**message, "headers": [*message.get("headers", []), *encoded]}
            elif message["type"] == "http.response.body":
                if replaced:
                    return
                chunk = message.get("body", b"")
                hasher.update(chunk)
                if keep is not None:
                    kept_size += len(chunk)
                    if kept_size <= self.gate.config.replay_body_limit:
                        keep.append(chunk)
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, wrapped_send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            body = (
                b"".join(keep)
                if keep is not None and kept_size <= self.gate.config.replay_body_limit
                else None
            )
            await Gate.run_async(
                self.gate.finish(
                    state,
                    None if replaced else status,
                    hasher.hexdigest(),
                    error,
                    body,
                    sent_headers,
                )
            )
