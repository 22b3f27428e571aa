"""The buyer-side harness of the conformance suite: one client API over every buyer transport.

``Buyers(transport).client(seller, buyer, wire=…, **transport_options)`` pays a conformance
seller through httpx (sync, over httpx's WSGI/ASGI transports), httpx (async) or requests
(over a real loopback server: requests has no in-process transport). A :class:`Wire` sits
under every transport, so a test that counts the traffic or makes the seller lie is written
once. Loaded by conftest.py (``buyer_harness()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from fourmica_x402.client import RECEIPT_KEY, AsyncPaymentTransport, PaymentTransport
from fourmica_x402.testing import TestBuyer

BASE = "http://testserver"


class Dropped(Exception):
    """Raised by a :class:`Wire` to close the connection with no answer: before the request
    reaches the seller (from ``request``) or after the seller handled it (from ``response``).
    Each transport sees its own library's error for a dropped connection."""


class Unreachable(Exception):
    """Raised by a :class:`Wire` from ``request``: no connection could be opened, so nothing
    of the request left the client. Each transport sees its library's connect error (refused;
    a connect timeout when ``timed_out``)."""

    timed_out = False


class Wire:
    """What passes between a buyer's transport and the seller. Tests subclass it to count the
    traffic, make the seller lie or drop a connection; the same wire sits under every
    transport."""

    def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[dict[str, str], bytes]:
        """``headers`` lower-cased; return what the seller receives."""
        return headers, body

    def response(
        self, path: str, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        return status, headers, body


@dataclass
class Got:
    """A response as every transport returns it, with its receipt (None when unpaid)."""

    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    receipt: Any

    def json(self) -> Any:
        return json.loads(self.body)


def _wired_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in ("content-length", "content-encoding")]


def _connect_error(exc: Unreachable, request: httpx.Request) -> httpx.TransportError:
    if exc.timed_out:
        return httpx.ConnectTimeout("connect timed out", request=request)
    return httpx.ConnectError("[Errno 111] Connection refused", request=request)


class _SyncWire(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, wire: Wire) -> None:
        self.inner, self.wire = inner, wire

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._handle(request)
        except Dropped:
            raise httpx.RemoteProtocolError("Server disconnected", request=request) from None
        except Unreachable as exc:
            raise _connect_error(exc, request) from None

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        headers, body = self.wire.request(
            request.method, path, {k.lower(): v for k, v in request.headers.items()}, request.read()
        )
        request = httpx.Request(
            request.method, request.url, headers=_wired_headers(list(headers.items())), content=body
        )
        response = self.inner.handle_request(request)
        status, got, content = self.wire.response(
            path, response.status_code, list(response.headers.multi_items()), response.read()
        )
        return httpx.Response(status, headers=_wired_headers(got), content=content)


class _AsyncWire(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, wire: Wire) -> None:
        self.inner, self.wire = inner, wire

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._handle(request)
        except Dropped:
            raise httpx.ReadError("Connection reset by peer", request=request) from None
        except Unreachable as exc:
            raise _connect_error(exc, request) from None

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        headers, body = self.wire.request(
            request.method,
            path,
            {k.lower(): v for k, v in request.headers.items()},
            await request.aread(),
        )
        request = httpx.Request(
            request.method, request.url, headers=_wired_headers(list(headers.items())), content=body
        )
        response = await self.inner.handle_async_request(request)
        status, got, content = self.wire.response(
            path, response.status_code, list(response.headers.multi_items()), await response.aread()
        )
        return httpx.Response(status, headers=_wired_headers(got), content=content)


class _SyncFromAsync(httpx.BaseTransport):
    """Drive an ASGI app from sync code (one event loop per request)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def run() -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content)

        return asyncio.run(run())


class _AsyncFromSync(httpx.AsyncBaseTransport):
    """Drive a WSGI app from async code (in a worker thread)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        def run() -> httpx.Response:
            response = self.inner.handle_request(request)
            return httpx.Response(
                response.status_code, headers=response.headers, content=response.read()
            )

        return await asyncio.to_thread(run)


def _inner(seller: Any, *, is_async: bool) -> Any:
    """The seller app behind httpx's own ASGI/WSGI transports (no server)."""
    app = seller.client.app
    if seller.client.interface == "asgi":
        asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        return asgi if is_async else _SyncFromAsync(asgi)
    wsgi = httpx.WSGITransport(app=app, raise_app_exceptions=False)
    return _AsyncFromSync(wsgi) if is_async else wsgi


def plain(seller: Any) -> httpx.Client:
    """An httpx client on the seller app that pays for nothing (for its Core API reads)."""
    return httpx.Client(transport=_inner(seller, is_async=False), base_url=BASE)


@contextlib.contextmanager
def loopback(app: Any, interface: str) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a port of its own) for clients that need a real socket:
    a threaded wsgiref server for WSGI, uvicorn in a thread for ASGI."""
    if interface == "wsgi":
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        class Server(ThreadingMixIn, WSGIServer):
            request_queue_size = 128  # the concurrency tests open 50 connections at once
            daemon_threads = True

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        server = make_server("127.0.0.1", 0, app, server_class=Server, handler_class=Quiet)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
        return
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    userver = uvicorn.Server(config)
    uthread = threading.Thread(target=userver.run, kwargs={"sockets": [sock]}, daemon=True)
    uthread.start()
    deadline = time.monotonic() + 10
    while not userver.started and uthread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert userver.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        userver.should_exit = True
        uthread.join(timeout=10)
        sock.close()


class BuyerClient:
    """One transport's client paying a conformance seller; requests and results look alike."""

    def __init__(self, transport: str, seller: Any, key: Any, wire: Wire, **kwargs: Any) -> None:
        # httpx follows redirects when asked (requests always does)
        follow = kwargs.pop("follow_redirects", False)
        self.transport, self.kwargs = transport, kwargs
        self._stack = contextlib.ExitStack()
        if transport == "httpx":
            payer = PaymentTransport(
                key, transport=_SyncWire(_inner(seller, is_async=False), wire), **kwargs
            )
            self._sync = self._stack.enter_context(
                httpx.Client(transport=payer, base_url=BASE, follow_redirects=follow)
            )
            self.flow = payer.flow
        elif transport == "httpx_async":
            apayer = AsyncPaymentTransport(
                key, transport=_AsyncWire(_inner(seller, is_async=True), wire), **kwargs
            )
            self._loop = asyncio.new_event_loop()
            self._async = httpx.AsyncClient(
                transport=apayer, base_url=BASE, follow_redirects=follow
            )
            self._stack.callback(self._loop.close)
            self._stack.callback(lambda: self._loop.run_until_complete(self._async.aclose()))
            self.flow = apayer.flow
        else:
            import requests
            from requests.adapters import HTTPAdapter

            from fourmica_x402.client.requests_adapter import PaymentAdapter

            self.base = self._stack.enter_context(
                loopback(seller.client.app, seller.client.interface)
            )
            adapter = PaymentAdapter(key, adapter=_RequestsWire(HTTPAdapter(), wire), **kwargs)
            self._session = self._stack.enter_context(requests.Session())
            self._session.mount("http://", adapter)
            self.flow = adapter.flow

    def request(self, method: str, path: str, json: Any = None) -> Got:
        if self.transport == "httpx":
            r = self._sync.request(method, path, json=json)
            return Got(r.status_code, dict(r.headers), r.content, r.extensions.get(RECEIPT_KEY))
        if self.transport == "httpx_async":
            return self._loop.run_until_complete(self._arequest(method, path, json))
        resp = self._session.request(method, self.base + path, json=json, timeout=30)
        headers = {k.lower(): v for k, v in resp.headers.items()}
        return Got(resp.status_code, headers, resp.content, getattr(resp, RECEIPT_KEY, None))

    async def _arequest(self, method: str, path: str, json: Any = None) -> Got:
        r = await self._async.request(method, path, json=json)
        return Got(r.status_code, dict(r.headers), r.content, r.extensions.get(RECEIPT_KEY))

    def get(self, path: str) -> Got:
        return self.request("GET", path)

    def post(self, path: str, json: Any) -> Got:
        return self.request("POST", path, json=json)

    def gather(self, paths: list[str]) -> list[Any]:
        """GET every path at once (tasks on one loop, or 16 threads), in the caller's context
        (so a ``policy.task`` around the call applies); errors are returned, not raised."""
        if self.transport == "httpx_async":

            async def all_at_once() -> list[Any]:
                return await asyncio.gather(
                    *(self._arequest("GET", p) for p in paths), return_exceptions=True
                )

            return self._loop.run_until_complete(all_at_once())

        def one(path: str) -> Any:
            try:
                return self.get(path)
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(contextvars.copy_context().run, one, p) for p in paths]
            return [f.result() for f in futures]

    def close(self) -> None:
        self._stack.close()


class _RequestsWire:
    """The wire under the requests adapter: an HTTPAdapter whose traffic the wire may change."""

    def __init__(self, inner: Any, wire: Wire) -> None:
        self.inner, self.wire = inner, wire

    def send(self, request: Any, **options: Any) -> Any:
        import requests

        try:
            return self._send(request, **options)
        except Dropped:
            raise requests.exceptions.ConnectionError("Connection aborted.") from None
        except Unreachable as exc:  # as urllib3 reports it: its retries over, no connection
            from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

            if exc.timed_out:
                late = ConnectTimeoutError(None, "connect timed out")
                raise requests.exceptions.ConnectTimeout(
                    MaxRetryError(None, request.url, late), request=request
                ) from None
            refused = NewConnectionError(None, "[Errno 111] Connection refused")
            raise requests.exceptions.ConnectionError(
                MaxRetryError(None, request.url, refused), request=request
            ) from None

    def _send(self, request: Any, **options: Any) -> Any:
        from requests.structures import CaseInsensitiveDict

        path = urlsplit(request.url).path
        body = request.body or b""
        headers, body = self.wire.request(
            request.method,
            path,
            {k.lower(): v for k, v in request.headers.items()},
            body.encode() if isinstance(body, str) else body,
        )
        request.headers = CaseInsensitiveDict(dict(_wired_headers(list(headers.items()))))
        request.prepare_body(body or None, None)
        response = self.inner.send(request, **options)
        status, got, content = self.wire.response(
            path, response.status_code, list(response.headers.items()), response.content
        )
        response.status_code = status
        response.headers = CaseInsensitiveDict(dict(_wired_headers(got)))
        response._content = content
        return response

    def close(self) -> None:
        self.inner.close()


class Buyers:
    """Makes buyer clients for the ``transport`` under test (closed after the test)."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self._made: list[BuyerClient] = []

    def client(
        self, seller: Any, buyer: TestBuyer, *, wire: Wire | None = None, **kwargs: Any
    ) -> BuyerClient:
        made = BuyerClient(self.transport, seller, buyer.key, wire or Wire(), **kwargs)
        self._made.append(made)
        return made

    def close(self) -> None:
        for made in self._made:
            made.close()
