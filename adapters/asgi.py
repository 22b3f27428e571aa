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

With a Starlette router inside (found through the ``app`` chain, or given as
``router=``) the middleware prices the route the router resolves, exactly as it
will route the request: a path it redirects, 404s or 405s is never charged, and
every route-table entry must name one of its routes (checked at lifespan start-up,
where a bad configuration fails the start). Without a router the raw path is
priced. WebSockets on a priced route are refused (close code 1008). See
docs/architecture.md ("Which route is priced").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, MutableMapping
from typing import Any

from fourmica_x402.config import PaymentConfig
from fourmica_x402.gate import PASS, Endpoint, Gate, RequestView, Response

from ._starlette import StarletteRouter, find_router

__all__ = ["PaymentMiddleware"]

log = logging.getLogger("fourmica_x402.adapters.asgi")

Scope = MutableMapping[str, Any]
_BODY_LIMIT = 64 * 1024


def request_view(
    scope: Scope, receive: Any, resolve: Callable[[], Endpoint | None] | None = None
) -> RequestView:
    """The neutral view of an ASGI HTTP request (or of a WebSocket handshake, as a GET)."""
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
        method=scope.get("method", "GET"),
        path=scope["path"],
        raw_path=raw.decode("latin-1") if raw else "",
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        scheme=scope.get("scheme", "http"),
        host=host or "localhost",
        client=scope["client"][0] if scope.get("client") else None,
        read_body=read_body,
        resolve=resolve,
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
        router: Any = None,
        **options: Any,
    ) -> None:
        self.app = app
        self._given_router = router
        self._router: StarletteRouter | None = None
        self._ready, self._lock = False, threading.Lock()
        #: A configuration error found when the app started: fails the start, then every request.
        self.error: str | None = None
        self.gate: Gate = None  # type: ignore[assignment]  # set below unless the config is bad
        try:
            self.gate = gate or Gate(config or PaymentConfig(**options))
        except Exception as exc:  # reported through the lifespan, and logged: never per request
            self.error = f"fourmica_x402: {exc}"
            log.error("%s", self.error)

    def _marker(self, route: Any) -> tuple[Any, frozenset[str] | None] | None:
        """A per-handler price on ``route`` (``Paid(...)`` in FastAPI); none in plain Starlette."""
        return None

    def _start(self) -> str | None:
        """Find the router and check the route table against it, once; the error, if any."""
        if self._ready or self.error is not None:
            return self.error
        with self._lock:
            if not self._ready and self.error is None:
                try:
                    router = self._given_router or find_router(self.app)
                    if router is not None:
                        self._router = StarletteRouter(router, self._marker)
                        self.gate.check_routes(self._router.templates())
                        for route, template in self._router.walk():  # markers' prices, now
                            self.gate.routes.prepare(self._router.endpoint(route, template))
                except Exception as exc:
                    self.error = f"fourmica_x402: {exc}"
                    log.error("%s", self.error)
                self._ready = True
        return self.error

    def _view(self, scope: Scope, receive: Any) -> RequestView:
        router = self._router
        resolve = None if router is None else (lambda: router.resolve(scope))
        return request_view(scope, receive, resolve)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        broken = self._start() if kind in ("http", "websocket", "lifespan") else None
        if broken is not None:
            if kind == "lifespan":  # the server reports it and does not start
                await receive()
                await send({"type": "lifespan.startup.failed", "message": broken})
            elif kind == "http":
                await send_response(send, Gate._error_response(500, "configuration_error", broken))
            else:
                await send({"type": "websocket.close", "code": 1011})
            return
        if kind == "websocket" and self.gate.refuses_websocket(self._view(scope, receive)):
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # policy: priced route
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        request = self._view(scope, receive)
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
                raw_headers = list(message.get("headers", []))
                sent_headers[:] = [
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers
                ]
                cache = next((v for k, v in sent_headers if k.lower() == "cache-control"), None)
                extra = await Gate.run_async(self.gate.response_start(state, status, cache))
                if isinstance(extra, Response):  # settle-after failed: answer 402 instead
                    replaced = True
                    await send_response(send, extra)
                    return
                if any(k == "cache-control" for k, _ in extra):  # ours replaces the app's
                    raw_headers = [(k, v) for k, v in raw_headers if k.lower() != b"cache-control"]
                message = {**message, "headers": [*raw_headers, *_encode(extra)]}
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
