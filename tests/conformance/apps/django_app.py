"""Django conformance app: sync (WSGI stack, ``Client``) or async (ASGI stack, ``AsyncClient``).

/premium, /multi, /limited, /files, /docs and /numbers are priced by ``@paid``, the rest by
config. Settings are configured once per process; each build sets ``FOURMICA_X402_CONFIG``
(a PaymentConfig holding this test's Core) and a fresh URLconf, then makes the WSGI or ASGI
handler, whose middleware reads both in ``__init__``. The test client shares that handler's
middleware chain, so one gate serves both.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json as jsonlib
import sys
import types
from collections.abc import Callable
from typing import Any

import django
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import (
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.test import AsyncClient, Client
from django.urls import clear_url_caches, path, register_converter
from django.urls.converters import get_converters

from fourmica_x402._json import loads
from fourmica_x402.config import PaymentConfig

URLCONF = "conformance_django_urls"
MIDDLEWARE = "fourmica_x402.adapters.django.PaymentMiddleware"
#: nginx's own caching header, which there wins over Cache-Control (sent by /cached, /stored).
ACCEL = {"X-Accel-Expires": "600"}

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="conformance",
        ROOT_URLCONF=URLCONF,
        MIDDLEWARE=[MIDDLEWARE],
        INSTALLED_APPS=["fourmica_x402.adapters.django"],
        DATABASES={},
    )
    django.setup()

from fourmica_x402.adapters.django import PaymentMiddleware, paid  # noqa: E402

#: Priced by config here (the conftest's ROUTES hold the routes every builder shares).


class DocConverter:
    """A custom converter whose regex matches "/" (the README's ``/docs/<any>``)."""

    regex = "[a-z0-9/]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


if "doc" not in get_converters():  # this module is loaded again for every app built
    register_converter(DocConverter, "doc")


class DjangoClient:
    """The Django test client, sharing the middleware chain of ``app`` (one gate for both)."""

    def __init__(self, kind: str) -> None:
        self.is_async = kind == "django_async"
        self.interface = "asgi" if self.is_async else "wsgi"
        self.app = ASGIHandler() if self.is_async else WSGIHandler()  # loads the middleware
        client_class = AsyncClient if self.is_async else Client
        self._client = client_class(raise_request_exception=False)
        self._client.handler._middleware_chain = self.app._middleware_chain
        self._loop = asyncio.new_event_loop() if self.is_async else None
        middleware = self.app._middleware_chain.__wrapped__  # convert_exception_to_response
        assert isinstance(middleware, PaymentMiddleware)
        assert middleware.async_mode is self.is_async
        self.gate = middleware.gate

    def request(self, method: str, path: str, headers: dict[str, str], json: Any = None) -> Any:
        data: dict[str, Any] = {}
        if json is not None:
            data = {"data": jsonlib.dumps(json), "content_type": "application/json"}
        if self._loop is None:
            r = self._client.generic(method, path, headers=headers, **data)
            body = b"".join(r.streaming_content) if r.streaming else r.content
        else:
            r, body = self._loop.run_until_complete(self._arequest(method, path, headers, data))
        return r.status_code, dict(r.items()), body

    async def _arequest(self, method: str, path: str, headers: Any, data: Any) -> Any:
        r = await self._client.generic(method, path, headers=headers, **data)
        if not r.streaming:
            return r, r.content
        return r, b"".join([chunk async for chunk in r.streaming_content])

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()


def build(options: dict[str, Any], calls: collections.Counter[str], kind: str) -> DjangoClient:
    options = dict(options)
    price = options.pop("premium_price")
    is_async = kind == "django_async"

    def view(*methods: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """The handler as a sync or an async view, answering 405 to other methods."""
        allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())

        def wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: Any, **kwargs: Any) -> Any:
                if request.method not in allowed:
                    return HttpResponseNotAllowed(sorted(allowed))
                calls[request.path_info] += 1
                return handler(request, **kwargs)

            async def arun(request: Any, **kwargs: Any) -> Any:
                return run(request, **kwargs)

            return functools.wraps(handler)(arun if is_async else run)

        return wrap

    @view("GET")
    @paid(price=price, methods=["GET"])  # the marker survives functools.wraps
    def premium(request: Any) -> JsonResponse:
        p = request.payment
        return JsonResponse(
            {
                "ok": True,
                "payer": p.payer,
                "amount": p.amount,
                "guarantee_id": p.guarantee_id,
                "request_id": p.request_id,
                "x402_version": p.x402_version,
            }
        )

    @view("GET")
    def free(request: Any) -> JsonResponse:
        return JsonResponse({"free": True})

    @view("POST")
    def echo(request: Any) -> JsonResponse:
        # bounded: py_ecc, which the suite imports, lets stdlib json overflow the C stack
        return JsonResponse({"echo": loads(request.body)})

    @view("GET")
    def item(request: Any, item_id: str) -> JsonResponse:
        return JsonResponse({"item": item_id})

    @view("GET")
    def boom(request: Any) -> JsonResponse:
        raise RuntimeError("boom")

    @view("GET")
    def fail(request: Any) -> JsonResponse:
        return JsonResponse({"error": "fail"}, status=500)

    @view("GET")
    def redirect(request: Any) -> HttpResponseRedirect:
        return HttpResponseRedirect("/free")

    @view("GET")
    def stream(request: Any) -> StreamingHttpResponse:
        metered = getattr(getattr(request, "payment", None), "stream", None)
        if metered is not None:  # a metered stream (docs/protocol.md): ?n= ticks
            n = int(request.GET.get("n", "3"))

            async def aticks() -> Any:
                for i in range(n):
                    yield {"tick": i}

            ticks = aticks() if is_async else ({"tick": i} for i in range(n))
            return StreamingHttpResponse(metered.events(ticks), content_type="text/event-stream")
        chunks = [f"chunk-{i}\n".encode() for i in range(3)]

        async def achunks() -> Any:
            for chunk in chunks:
                yield chunk

        return StreamingHttpResponse(
            achunks() if is_async else iter(chunks), content_type="text/plain"
        )

    @view("GET")
    def missing(request: Any) -> JsonResponse:
        return JsonResponse({"error": "missing"}, status=404)

    @paid(price=price)  # every method the view serves
    @view("GET", "POST", "PUT", "PATCH", "DELETE")
    def multi(request: Any) -> JsonResponse:
        return JsonResponse({"method": request.method, "payer": request.payment.payer})

    @paid(price=price, methods=["GET"])  # POST: 405, the view never runs
    @view("GET", "POST")
    def limited(request: Any) -> JsonResponse:
        return JsonResponse({"method": request.method})

    @paid(price=price)
    @view("GET")
    def files(request: Any, path: str) -> JsonResponse:
        return JsonResponse({"file": path, "payer": request.payment.payer})

    @paid(price=price)
    @view("GET")
    def docs(request: Any, value: str) -> JsonResponse:
        return JsonResponse({"doc": value, "payer": request.payment.payer})

    @paid(price=price)
    @view("GET")
    def numbers(request: Any, n: int) -> JsonResponse:
        return JsonResponse({"n": n, "payer": request.payment.payer})

    @view("GET")
    def cached(request: Any) -> JsonResponse:
        return JsonResponse(
            {"cached": True}, headers={"Cache-Control": "public, max-age=600", **ACCEL}
        )

    @view("GET")
    def stored(request: Any) -> JsonResponse:
        return JsonResponse(
            {"stored": False}, headers={"Cache-Control": "no-store, max-age=0", **ACCEL}
        )

    urls = sys.modules.setdefault(URLCONF, types.ModuleType(URLCONF))
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("free", free),
        path("premium", premium),
        path("echo", echo),
        path("items/<item_id>", item),
        path("boom", boom),
        path("fail", fail),
        path("redirect", redirect),
        path("stream", stream),
        path("missing", missing),
        path("multi", multi),
        path("limited", limited),
        path("files/<path:path>", files),
        path("docs/<doc:value>", docs),
        path("numbers/<int:n>", numbers),
        path("cached", cached),
        path("stored", stored),
    ]
    clear_url_caches()
    settings.ROOT_URLCONF = URLCONF
    settings.MIDDLEWARE = [MIDDLEWARE]
    settings.FOURMICA_X402_CONFIG = PaymentConfig(**options)
    return DjangoClient(kind)
