"""``fourmica_x402.service`` (Starlette, hence in adapters/): the Core as an HTTP service —
facilitator API, Core API subset, sandbox API, metrics, dashboard, webhooks.

    fourmica-x402 serve --db sqlite:///core.db --sandbox          # or, in code:
    app = create_app(Core("sqlite:///core.db"), sandbox=True)

The handlers and their paths (docs/protocol.md, "Endpoints") live in :mod:`fourmica_x402.server`
(:mod:`~fourmica_x402.server.table`), free of any framework; this module mounts them: the
request/response translation, the router's own errors in the service's JSON shape, the lifespan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fourmica_x402.core import AlertRules, Core
from fourmica_x402.errors import FourmicaError
from fourmica_x402.server import Call, Headed, Page, Result, Service, base, parse_body
from fourmica_x402.server.table import PATHS, Path, Reads, background

__all__ = ["create_app"]


async def _body(request: Request) -> bytes:
    """A POST's body, read no further than just past ``MAX_BODY`` (``parse_body`` refuses a
    bigger one): an open route must not hold a client's 400 MiB in memory first."""
    chunks, size = [], 0
    if request.method == "POST":  # only POST routes take a body: others never read one
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > base.MAX_BODY:
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
        return Response(result.body, result.status, base.PAGE_HEADERS, result.media_type)
    if isinstance(result, Headed):
        return JSONResponse(result.data, result.status, {**base.NOSNIFF, **dict(result.headers)})
    status, data = result
    return JSONResponse(data, status, base.NOSNIFF)


def _endpoint(
    service: Service, spec: Path, reads: Reads
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint running ``spec``'s handler as :class:`~.server.table.Path` says."""

    async def endpoint(request: Request) -> Response:
        start = time.perf_counter()
        try:
            if refused := base.cross_origin(request.method, request.headers, service.browser_hosts):
                return _response(spec.refuse(refused))
            raw = await _body(request)
            if spec.sized and len(raw) > base.MAX_BODY:
                too_large = f"bodies end at {base.MAX_BODY} bytes"
                return _response(spec.refuse(base.error(413, "body_too_large", too_large)))
            call = _call(request, raw)
            if spec.read:  # the same read asked meanwhile is answered by the same run
                same = (request.method, request.url.path, request.url.query, call.authorization)
                result = await reads.run(same, spec.handler, service, call)
            elif spec.blocking:
                result = await asyncio.to_thread(spec.handler, service, call)
            else:
                result = spec.handler(service, call)
        except FourmicaError as exc:  # the Core unavailable, …: its JSON error, never a 500
            result = spec.refuse(base.failure(exc))
        finally:
            if spec.timed:
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
    allowed_hosts: Iterable[str] = (),
) -> Starlette:
    """The service app over ``core``.

    ``tick_interval`` drives cycles and timeouts (None: off); ``webhooks`` runs the
    webhook delivery worker (subscriptions are managed under ``/admin/webhooks``).
    ``api_key`` is the operator's token (every call); ``seller_keys`` maps more tokens
    to the one seller address each may act for (void as its recipient, score as its
    validator), so sellers sharing a service cannot refund or cancel each other's payments.
    ``alerts``: the database alert rules the service checks (docs/operations.md, "Alerts");
    ``allowed_hosts``: more names browsers may reach a service without ``api_key`` by.
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
        allowed_hosts=allowed_hosts,
    )
    reads = Reads()
    routes = [Route(p.path, _endpoint(service, p, reads), methods=list(p.methods)) for p in PATHS]
    app = Starlette(
        routes=routes,
        lifespan=lambda _: background(service, tick_interval, reads),
        exception_handlers={404: _routing_error, 405: _routing_error},
    )
    # A trailing slash is another path (404), not a redirect: Starlette's would send a client
    # posting a payment to a Location built from the request's Host header.
    app.router.redirect_slashes = False
    app.state.core, app.state.service = core, service
    return app


async def _routing_error(request: Request, exc: Exception) -> Response:
    """The router's 404 and 405 in the service's JSON error shape (its Allow header kept)."""
    code = getattr(exc, "status_code", 404)
    status, body = base.routing_error(code, request.method, request.url.path)
    return JSONResponse(body, status, {**base.NOSNIFF, **(getattr(exc, "headers", None) or {})})
