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

Responses stream through, hashed, never buffered. With a Starlette router (found through the
``app`` chain, or given as ``router=``) the route it resolves is priced: a path it redirects,
404s or 405s is never charged, and every table entry must name one of its routes (checked at
lifespan start-up); without one, the raw path. WebSockets on a priced route are refused
(1008). See docs/architecture.md ("Which route is priced"). A body read before pricing (a
paid MCP tool call) is replayed to the app whole; an outer gate's payment: on our terms."""

from __future__ import annotations

import sys
from collections.abc import Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from fourmica_x402.config import PaymentConfig
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.gate import PASS, Endpoint, Gate, Headers, PassThrough, RequestView, Response
from fourmica_x402.gate.lifecycle import BODY_LIMIT, PAYMENT_KEY, Marker, Startup

from ._body import BufferedBody
from ._chain import applied_root_path, find_router
from ._dispatch import guard, marked, recorded
from ._exchange import PaidExchange, send_response, unshared_send, warn_copying_layers
from ._starlette import StarletteRouter

__all__ = ["PaymentMiddleware"]

Scope = MutableMapping[str, Any]


def request_view(
    scope: Scope, receive: Any, resolve: Callable[[], Endpoint | None] | None = None
) -> RequestView:
    """The neutral view of an ASGI HTTP request (or of a WebSocket handshake, as a GET)."""
    headers = Headers((k.decode("latin1").lower(), v.decode("latin1")) for k, v in scope["headers"])
    host = next((v for k, v in headers if k == "host"), None)
    if host is None and scope.get("server"):
        server_host, port = scope["server"]
        host = f"{server_host}:{port}" if port else server_host

    path, raw, root = scope["path"], (scope.get("raw_path") or b"").decode("latin-1"), ""
    mounted = (scope.get("root_path") or "").rstrip("/")
    if mounted and path.startswith(mounted) and path[len(mounted) :][:1] in ("/", ""):
        # The app routes on the path below root_path (a server's --root-path, a Mount).
        path, root = path[len(mounted) :] or "/", quote(mounted)
        raw = raw[len(root) :] if raw.startswith(root) else raw
    elif mounted:  # an older server: path is already below it (/apix: the gate judges it)
        root = quote(mounted)
    return RequestView(
        method=scope.get("method", "GET"),
        path=path,
        raw_path=raw,
        root=root,
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        scheme=scope.get("scheme", "http"),
        host=host or "localhost",
        client=scope["client"][0] if scope.get("client") else None,
        read_body=BufferedBody(receive, BODY_LIMIT),  # BodyTooLarge past what the gate reads
        resolve=resolve,
    )


class PaymentMiddleware:
    """Charges for the routes of ``config``; everything else passes through."""

    gate: Gate = property(lambda self: self.startup.built)  # type: ignore[assignment]  # or None

    def __init__(
        self,
        app: Any,
        config: PaymentConfig | None = None,
        *,
        gate: Gate | None = None,
        router: Any = None,
        marker: Callable[[Any], Marker | None] | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        #: ``marker(route)``: a per-handler price on a route (FastAPI's ``Paid``), if any.
        self._given_router, self._marker = router, marker
        self._router: StarletteRouter | None = None
        self._root = ""  # a root_path the app sets itself, which the router will route by
        self.startup = Startup(lambda: gate or Gate(config or PaymentConfig(**options)))

    def _check(self) -> None:  # once: find the router and check the route table against it
        router = self._given_router or find_router(self.app)
        marker = self._marker or (lambda route: None)
        if "fastapi" in sys.modules:  # its Paid, wherever it is, refusing in the gate's shape
            from .fastapi import markers

            marker = markers(self.app, self._marker, self.gate, router)
        self._router = guard(self.gate, StarletteRouter.start(self.gate, router, marker))
        self._root = applied_root_path(self.app)
        warn_copying_layers(self.app)

    def _view(self, scope: Scope, receive: Any) -> RequestView:  # what it resolves: noted
        seen = {**scope, "root_path": self._root} if self._root else scope
        router, gate = self._router, self.gate
        resolve = None if router is None else recorded(scope, router.resolver(seen), gate, seen)
        return request_view(seen, receive, resolve)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        broken = self.startup.run(self._check, wait=kind == "lifespan")  # else off the loop
        if kind == "lifespan" and broken is not None:  # the server reports it, and does not start
            await receive()
            await send({"type": "lifespan.startup.failed", "message": broken})
            raise ConfigurationError(broken)  # as Starlette's router does: a test client raises
        if kind == "websocket" and (
            broken or self.gate.refuses_websocket(self._view(scope, receive))
        ):
            await receive()  # websocket.connect; 1008: a policy (a priced route), 1011: broken
            return await send({"type": "websocket.close", "code": 1011 if broken else 1008})
        if kind != "http":  # lifespan: queued completions are committed before a shutdown ends
            return await self.app(scope, receive, self.gate.on_shutdown(send))
        if broken is not None:
            return await send_response(send, self.startup.refusal)
        view = self._view(scope, receive)  # an outer gate's payment: on this gate's terms only
        outcome = await Gate.run_async(self.gate.before(view, scope.get(PAYMENT_KEY)))
        outcome = marked(self.gate, scope, outcome, self.app)  # a Paid route's own answer
        body = view.read_body
        if not isinstance(body, BufferedBody) or not body.read:
            return await self._serve(outcome, scope, receive, send)
        try:  # the app gets what the gate read too; then the request is over (``end``)
            return await self._serve(outcome, scope, body.receive, body.watch(send))
        finally:
            body.end()

    async def _serve(self, outcome: Any, scope: Any, receive: Any, send: Any) -> None:
        if isinstance(outcome, Response):
            return await send_response(send, outcome)
        if outcome is not PASS:  # paid, or granted (a Payment marked so: docs/operations.md)
            scope.setdefault("state", {})["payment"] = scope[PAYMENT_KEY] = outcome.payment
        if isinstance(outcome, PassThrough):  # a grant's answer stays private (docs/operations.md)
            return await self.app(scope, receive, unshared_send(send, outcome))  # type: ignore[no-any-return]
        await PaidExchange(self.gate, outcome, receive, send).run(self.app, scope)
