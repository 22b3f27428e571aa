"""The payment middleware: one class for sync and async stacks.

    MIDDLEWARE = [..., "fourmica_x402.adapters.django.PaymentMiddleware"]
    # in a paid view: request.payment.payer, .amount, .guarantee_id

Its steps are one flow, driven by ``Gate.run_sync`` or ``Gate.run_async``.
"""

from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django import urls
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.utils.encoding import escape_uri_path

from fourmica_x402.gate import PASS, BodyTap, Call, Endpoint, Flow, Gate, RequestView, Response

from .conf import endpoint, endpoints, load


def request_view(request: HttpRequest, resolve: Callable[[], Any] | None = None) -> RequestView:
    meta = request.META
    raw = meta.get("RAW_URI") or meta.get("REQUEST_URI") or ""  # gunicorn; uWSGI, mod_wsgi
    if not raw and hasattr(request, "scope"):  # ASGI servers keep the path as sent
        raw = (request.scope.get("raw_path") or b"").decode("latin-1")
    raw = raw.partition("?")[0].removeprefix(meta.get("SCRIPT_NAME") or "")
    try:
        host = request.get_host()
    except DisallowedHost:
        host = meta.get("HTTP_HOST") or meta.get("SERVER_NAME") or "localhost"
    length = meta.get("CONTENT_LENGTH") or "0"
    small = length.isdigit() and int(length) <= 65536  # the gate's endpoints read ≤ 64 KiB
    return RequestView(
        method=request.method or "GET",
        path=request.path_info,
        raw_path=raw or escape_uri_path(request.path_info),  # test clients: decoded only
        query=meta.get("QUERY_STRING", ""),
        headers=tuple((name.lower(), value) for name, value in request.headers.items()),
        scheme=request.scheme or "http",
        host=host,
        client=meta.get("REMOTE_ADDR"),
        read_body=lambda: request.body if small else b"",
        resolve=resolve,
    )


class PaymentMiddleware:
    """Charges for the routes of the settings and for ``@paid`` views."""

    sync_capable = async_capable = True

    def __init__(self, get_response: Callable[..., Any]) -> None:
        self.get_response, self.async_mode = get_response, iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        self.gate = Gate(load())
        # Priced is what Django's resolver serves (docs/architecture.md, "Which route is
        # priced"): a @paid price or a ROUTES entry naming no URL pattern fails at start-up.
        found = endpoints(self.gate.routes)
        self.gate.check_routes((each.template, each.methods) for each in found)
        self._endpoints = {(each.key, each.template): each for each in found}

    def __call__(self, request: HttpRequest) -> Any:
        return self.__acall__(request) if self.async_mode else Gate.run_sync(self._flow(request))

    async def __acall__(self, request: HttpRequest) -> Any:
        return await Gate.run_async(self._flow(request))

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        request.fourmica_x402_error = exception  # type: ignore[attr-defined]  # Django: a 500

    def _resolve(self, request: HttpRequest) -> Endpoint | None:
        """The endpoint Django will serve (None: a 404, an APPEND_SLASH redirect), one per route
        and view kept for the app's lifetime; request.urlconf is set by middleware before us."""
        try:
            match = urls.resolve(request.path_info, urlconf=getattr(request, "urlconf", None))
        except urls.Resolver404:
            return None
        key = (match.func, "/" + match.route)  # a route unseen at start-up: i18n, request.urlconf
        found = self._endpoints.get(key)
        return found or self._endpoints.setdefault(key, endpoint(match.func, match.route))

    def _flow(self, request: HttpRequest) -> Flow:
        request.payment = None  # type: ignore[attr-defined]  # unless paid below
        view = request_view(request, partial(self._resolve, request))
        state = yield from self.gate.before(view)
        if state is PASS:
            return (yield Call(self.get_response, (request,), blocking=False))
        if isinstance(state, Response):
            return HttpResponse(state.body, status=state.status, headers=dict(state.headers))
        request.payment = state.payment
        response = yield Call(self.get_response, (request,), blocking=False)  # never raises
        error, status = getattr(request, "fourmica_x402_error", None), response.status_code
        finish = partial(self.gate.finish, state, status, error=error, headers=[*response.items()])
        extra = yield from self.gate.response_start(state, status, response.get("Cache-Control"))
        if isinstance(extra, Response):  # settle-after failed: answer 402 instead
            yield from self.gate.finish(state, None, None)
            return HttpResponse(extra.body, status=extra.status, headers=dict(extra.headers))
        for name, value in extra:  # names ignore case: the gate's Cache-Control replaces the view's
            response[name] = value
        tap = self.gate.tap()  # hashes the body; keeps it for idempotent replay when asked
        if response.streaming:  # passed on unbuffered; the gate is told when it ends
            content = response.streaming_content
            wrap = _AsyncTapped if response.is_async else _SyncTapped
            response.streaming_content = wrap(
                aiter(content) if response.is_async else iter(content), tap, finish
            )
            return response
        tap.feed(response.content)
        yield from finish(tap.digest, body=tap.body)
        return response


class _Tapped:
    """A paid streaming body on its way out: hashed as it passes, the gate told once it ends.

    "Ends" includes Django closing the response before the first chunk was read (the client
    left): a generator that never started would never run its cleanup, so this is a class.
    """

    _LEFT = "the client left before the response ended"

    def __init__(self, chunks: Any, tap: BodyTap, finish: Callable[..., Flow]) -> None:
        self._chunks, self._tap, self._finish, self._done = chunks, tap, finish, False

    def _flow(self, error: BaseException | None) -> Flow | None:
        if self._done:
            return None
        self._done = True
        if error is not None:
            return self._finish(self._tap.digest, error=error)
        return self._finish(self._tap.digest, body=self._tap.body)

    def close(self) -> None:  # Django calls it when the response is closed
        flow = self._flow(ConnectionAbortedError(self._LEFT))
        if flow is not None:
            Gate.run_sync(flow)
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class _SyncTapped(_Tapped):
    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            if (flow := self._flow(None)) is not None:
                Gate.run_sync(flow)
            raise
        except BaseException as exc:
            if (flow := self._flow(exc)) is not None:
                Gate.run_sync(flow)
            raise
        return self._tap.feed(chunk)


class _AsyncTapped(_Tapped):
    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            if (flow := self._flow(None)) is not None:
                await Gate.run_async(flow)
            raise
        except BaseException as exc:
            if (flow := self._flow(exc)) is not None:
                await Gate.run_async(flow)
            raise
        return self._tap.feed(chunk)
