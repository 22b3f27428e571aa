"""``fourmica_x402.service`` (Starlette, hence in adapters/): the Core as an HTTP service —
facilitator API, Core API subset, sandbox API, metrics, dashboard.

    fourmica-x402 serve --db sqlite:///core.db --sandbox          # or, in code:
    app = create_app(Core("sqlite:///core.db"), sandbox=True)

Routes (docs/protocol.md, "Endpoints"):

- ``GET /supported``, ``GET /health``, ``POST /tabs``, ``POST /verify``, ``POST /settle``
  — the x402-4mica facilitator API (official sellers can use us as their facilitator);
- ``POST /guarantees/{id}/void``, ``POST /guarantees/{id}/validation`` — what a seller's
  gate needs for refunds and the delivery policy (``Authorization: Bearer <key>``: the
  operator's ``api_key``, or a seller key that acts for its own address only);
- ``GET /core/public-params``, ``POST /core/payment-tabs``, ``POST /core/guarantees``,
  ``POST /rpc`` — the Core API subset and its sandbox JSON-RPC;
- ``/sandbox/*`` — deposits, withdrawals, cycles, debit payments (only with ``sandbox=True``);
- ``GET /api/*`` — read-only JSON for the CLI and the dashboard; ``GET /metrics``; ``GET /``;
- ``/admin/webhooks`` — webhook subscriptions and the delivery log (operator only).

The handlers live in :mod:`fourmica_x402.server`, free of any framework; this module is their
route table, the request/response translation and the lifespan (ticks, webhook delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fourmica_x402.core import AlertRules, Core
from fourmica_x402.errors import FourmicaError
from fourmica_x402.server import (
    MAX_TAB_TTL,
    Call,
    Headed,
    Metrics,
    Page,
    Result,
    Service,
    admin,
    core_api,
    facilitator,
    guarantees,
    parse_body,
    reads,
    render_dashboard,
)
from fourmica_x402.server import sandbox as sandbox_api
from fourmica_x402.server.base import MAX_BODY, cross_origin, error, failure
from fourmica_x402.server.dashboard import dashboard
from fourmica_x402.server.metrics import metrics
from fourmica_x402.wire import SCHEME

__all__ = ["MAX_TAB_TTL", "Metrics", "create_app", "render_dashboard"]

#: Kept for callers of the former private name (the fault-injection tests parse bodies with it).
_payment_args = facilitator.payment_args

Handler = Callable[[Service, Call], Result]
POST = ["POST"]


async def _body(request: Request) -> bytes:
    """A POST's body, read no further than just past :data:`MAX_BODY` (``parse_body`` refuses
    a bigger one): an open route must not hold a client's 400 MiB in memory first."""
    if request.method != "POST":  # only POST routes take a body: others never read one
        return b""
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            break
    return b"".join(chunks)


def _call(request: Request, raw: bytes) -> Call:
    return Call(
        body=parse_body(raw),
        path=request.path_params,
        query=request.query_params,
        authorization=request.headers.get("authorization", ""),
        origin=f"{request.url.scheme}://{request.url.netloc}",
        client=request.client.host if request.client else None,
    )


def _response(result: Result) -> Response:
    if isinstance(result, Page):
        return Response(result.body, status_code=result.status, media_type=result.media_type)
    if isinstance(result, Headed):
        return JSONResponse(result.data, status_code=result.status, headers=dict(result.headers))
    status, data = result
    return JSONResponse(data, status_code=status)


def _endpoint(
    service: Service, handler: Handler, *, blocking: bool, timed: bool, sized: bool
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint running ``handler``.

    ``blocking`` handlers touch the database, so they run in a worker thread, never on the
    event loop. ``timed`` endpoints record their latency and answer a Core error the handler
    lets through as ``{"error": code, "message": text}`` (docs/protocol.md, "Reason codes");
    ``/metrics`` is not timed, so scraping it does not skew the latencies it reports.
    A body over :data:`MAX_BODY` is refused (413) where ``sized``; elsewhere the handler
    answers it in its protocol's shape (a settle's ``malformed_payment``).
    """

    async def endpoint(request: Request) -> Response:
        start = time.perf_counter()
        try:
            if refused := cross_origin(
                request.method,
                request.headers.get("origin"),
                request.headers.get("host"),
                service.browser_hosts,
            ):
                return _response(refused)
            raw = await _body(request)
            if sized and len(raw) > MAX_BODY:
                return _response(error(413, "body_too_large", f"bodies end at {MAX_BODY} bytes"))
            call = _call(request, raw)
            if blocking:
                result = await asyncio.to_thread(handler, service, call)
            else:
                result = handler(service, call)
        except FourmicaError as exc:
            if not timed:
                raise
            result = failure(exc)
        finally:
            if timed:
                service.metrics.observe(request.url.path, time.perf_counter() - start)
        return _response(result)

    return endpoint


def create_app(
    core: Core,
    *,
    sandbox: bool = False,
    api_key: str | None = None,
    seller_keys: Mapping[str, str] | None = None,
    network: str = "eip155:84532",
    public_url: str | None = None,
    tick_interval: float | None = 1.0,
    webhooks: bool = True,
    alerts: AlertRules | None = None,
) -> Starlette:
    """The service app over ``core``.

    ``tick_interval`` drives cycles and timeouts (None: off); ``webhooks`` runs the
    webhook delivery worker (subscriptions are managed under ``/admin/webhooks``).
    ``api_key`` is the operator's token (every call); ``seller_keys`` maps more tokens
    to the one seller address each may act for (void as its recipient, score as its
    validator), so sellers sharing a service cannot refund or cancel each other's payments.
    ``alerts``: the database alert rules the service checks (docs/operations.md, "Alerts").
    """
    service = Service(
        core,
        sandbox=sandbox,
        api_key=api_key,
        seller_keys=seller_keys,
        network=network,
        public_url=public_url,
        webhooks=webhooks,
        alerts=alerts,
    )

    def route(
        path: str,
        handler: Handler,
        methods: list[str] | None = None,
        *,
        blocking: bool = True,
        timed: bool = True,
        sized: bool = True,
    ) -> Route:
        endpoint = _endpoint(service, handler, blocking=blocking, timed=timed, sized=sized)
        return Route(path, endpoint, methods=methods)

    routes = [
        route("/", dashboard),
        route("/dashboard", dashboard),
        # the facilitator API; what reads only configuration stays on the event loop
        route("/supported", facilitator.supported, blocking=False),
        route("/health", facilitator.health, blocking=False),
        route("/tabs", facilitator.tabs, POST),
        route("/verify", facilitator.verify, POST, sized=False),
        route("/settle", facilitator.settle, POST, sized=False),
        route("/guarantees/{gid}/void", guarantees.void, POST),
        route("/guarantees/{gid}/validation", guarantees.validation, POST),
        # the Core API subset
        route("/core/public-params", core_api.public_params, blocking=False),
        route("/core/payment-tabs", core_api.payment_tabs, POST),
        route("/core/guarantees", core_api.guarantees, POST),
        route("/core/tabs/{tab_id}/guarantees/{req_id}", core_api.guarantee),
        route("/rpc", core_api.rpc, POST, blocking=False, sized=False),
        # the sandbox
        route("/sandbox/deposit", sandbox_api.deposit, POST),
        route("/sandbox/withdraw", sandbox_api.withdraw, POST),
        route("/sandbox/cycles/close", sandbox_api.close_cycle, POST),
        route("/sandbox/debits/pay", sandbox_api.pay_debit, POST),
        route("/sandbox/credits/claim", sandbox_api.claim, POST),
        route("/sandbox/tick", sandbox_api.tick, POST),
        route("/sandbox/suspend", sandbox_api.suspend, POST),
        # reads, metrics, admin
        route("/api/positions", reads.positions),
        route("/api/cycles", reads.cycles),
        route("/api/cycles/{cycle_id:int}", reads.cycle),
        route("/api/guarantees", reads.guarantees),
        route("/api/events", reads.events),
        route("/metrics", metrics, timed=False),
        route("/admin/webhooks", admin.subscribe, POST),
        route("/admin/webhooks", admin.subscriptions, ["GET"]),
        route("/admin/webhooks/deliveries", admin.deliveries),
        route("/admin/webhooks/{sid}", admin.unsubscribe, ["DELETE"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hooks = service.hooks
        loop, tasks = asyncio.get_running_loop(), []
        if tick_interval:
            tasks.append(loop.create_task(service.tick_forever(tick_interval)))
        if service.alert_checker is not None:
            tasks.append(loop.create_task(service.check_alerts_forever()))
        if hooks is not None:
            hooks.start()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if hooks is not None:
                await asyncio.to_thread(hooks.stop, 10.0)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_ROUTING_ERRORS)
    # A trailing slash is another path (404), not a redirect: Starlette's would send a client
    # posting a payment to a Location built from the request's Host header.
    app.router.redirect_slashes = False
    app.state.core = core
    app.state.service = service
    app.state.metrics = service.metrics
    app.state.webhooks = service.hooks
    app.state.scheme = SCHEME
    return app


async def _routing_error(request: Request, exc: Exception) -> Response:
    """The router's 404 and 405 in the service's JSON error shape (its Allow header kept)."""
    status = getattr(exc, "status_code", 404)
    code, text = (404, "not_found") if status == 404 else (status, "method_not_allowed")
    body = {
        "error": text,
        "message": f"{request.method} {request.url.path}: {text.replace('_', ' ')}",
    }
    return JSONResponse(body, code, headers=getattr(exc, "headers", None))


_ROUTING_ERRORS: dict[
    int | type[Exception], Callable[[Request, Exception], Awaitable[Response]]
] = {
    404: _routing_error,
    405: _routing_error,
}
