"""Django conformance app: sync (WSGI stack, ``Client``) or async (ASGI stack, ``AsyncClient``).

/premium is priced by ``@paid``, the rest by config. Settings are configured once per
process; each build sets ``FOURMICA_X402_CONFIG`` (a PaymentConfig holding this test's Core)
and a fresh URLconf, then makes the WSGI or ASGI handler, whose middleware reads both in
``__init__``. The test client shares that handler's middleware chain, so one gate serves both.
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
from django.urls import clear_url_caches, path

from fourmica_x402.config import PaymentConfig

URLCONF = "conformance_django_urls"
MIDDLEWARE = "fourmica_x402.adapters.django.PaymentMiddleware"

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
    @paid(price=price)  # the marker survives functools.wraps
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
        return JsonResponse({"echo": jsonlib.loads(request.body)})

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
        chunks = [f"chunk-{i}\n".encode() for i in range(3)]

        async def achunks() -> Any:
            for chunk in chunks:
                yield chunk

        return StreamingHttpResponse(
            achunks() if is_async else iter(chunks), content_type="text/plain"
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
    ]
    clear_url_caches()
    settings.ROOT_URLCONF = URLCONF
    settings.MIDDLEWARE = [MIDDLEWARE]
    settings.FOURMICA_X402_CONFIG = PaymentConfig(**options)
    return DjangoClient(kind)
