"""The payment middleware: one class for sync and async stacks.

    MIDDLEWARE = [..., "fourmica_x402.adapters.django.PaymentMiddleware"]
    # in a paid view: request.payment.payer, .amount, .guarantee_id

Its steps are one flow, driven by ``Gate.run_sync`` or ``Gate.run_async``.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django import urls
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest

from fourmica_x402.gate import Call, Endpoint, Flow, Gate, PassThrough, Response, nested
from fourmica_x402.gate.guards import rerouted
from fourmica_x402.gate.lifecycle import PAYMENT_KEY, Endpoints, Meter
from fourmica_x402.gate.types import for_shared_caches

from ._delivery import own, served, unless_sent, unshare
from ._order import cache_misplaced
from ._streams import as_served
from ._view import overridden, request_view
from .conf import converter, describe, load, patterns, render, routes
from .i18n import language_prefix, locale_misplaced

#: Conditional request headers, dropped from a paid GET (docs/protocol.md, "Paid responses").
_CONDITIONS = (
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_MATCH",
    "HTTP_IF_UNMODIFIED_SINCE",
)


class PaymentMiddleware:
    """Charges for the routes of the settings and for ``@paid`` views."""

    sync_capable = async_capable = True

    def __init__(self, get_response: Callable[..., Any]) -> None:
        self.get_response, self.async_mode = get_response, iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        if (misplaced := locale_misplaced() or cache_misplaced()) is not None:  # served unpaid
            raise ImproperlyConfigured(f"fourmica_x402: {misplaced}")
        self.gate = Gate(load())
        # Priced is what Django's resolver serves (docs/architecture.md, "Which route is
        # priced"): a @paid price or a ROUTES entry naming no URL pattern fails at start-up.
        self._endpoint = Endpoints(describe, converter=converter)
        self._endpoint.check(self.gate, patterns())
        self._localized: dict[Any, set[tuple[Any, str]]] = {}  # per URLconf
        self._read: dict[Any, dict[str, str]] = {}  # and its routes as read
        if self.async_mode:  # Django adapts it to its stack either way
            self.process_view = self._aprocess_view  # type: ignore[method-assign]

    def __call__(self, request: HttpRequest) -> Any:
        return self.__acall__(request) if self.async_mode else Gate.run_sync(self._flow(request))

    async def __acall__(self, request: HttpRequest) -> Any:
        return await Gate.run_async(self._flow(request))

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        request.fourmica_x402_error = exception  # type: ignore[attr-defined]  # Django: a 500

    def _resolve(self, request: HttpRequest) -> Endpoint | None:
        """The endpoint Django will serve (None: a 404, an APPEND_SLASH redirect), one per route
        and view kept for the app's lifetime; request.urlconf is set by middleware before us."""
        request.fourmica_x402_resolved = (None, request.method)  # type: ignore[attr-defined]
        try:
            match = urls.resolve(request.path_info, urlconf=getattr(request, "urlconf", None))
        except urls.Resolver404:
            return None
        endpoint = self._endpoint_of(match, getattr(request, "urlconf", None))
        request.fourmica_x402_resolved = (endpoint, request.method)  # type: ignore[attr-defined]
        return endpoint

    def process_view(self, request: HttpRequest, *args: Any) -> Any:
        """The view Django runs: the one the gate priced? (see :func:`.guards.rerouted`).
        On an async stack its async twin, so that Django runs it with no thread hop."""
        match = request.resolver_match
        urlconf = getattr(request, "urlconf", None)
        endpoint = None if match is None else self._endpoint_of(match, urlconf)
        seen = getattr(request, "fourmica_x402_resolved", None)
        request.fourmica_x402_viewed = (endpoint, request.method)  # type: ignore[attr-defined]
        why = rerouted(self.gate.routes, endpoint, request.method or "", request.payment, seen)  # type: ignore[attr-defined]
        return None if why is None else render(why)

    async def _aprocess_view(self, request: HttpRequest, *args: Any) -> Any:
        return type(self).process_view(self, request, *args)  # a subclass's own, if any

    def _endpoint_of(self, match: Any, urlconf: Any) -> Endpoint:
        if (read := self._read.get(urlconf)) is None:  # a re_path's route as patterns() reads it
            read = self._read[urlconf] = {raw: r for _, raw, r in routes(False, urlconf)}
            self._localized[urlconf] = set(patterns(True, urlconf))
        route = "/" + match.route.removeprefix("^")
        route, localized = read.get(route, route), self._localized[urlconf]
        if localized:  # the same view under every language prefix is one route
            prefix = language_prefix(urlconf) or ""
            bare = "/" + match.route.removeprefix(prefix).removeprefix("^")
            bare = read.get(bare, bare)
            if match.route.startswith(prefix) and (match.func, bare) in localized:
                route = bare
        return self._endpoint(match.func, route)  # a request's urlconf: unseen at start-up

    def _flow(self, request: HttpRequest) -> Flow:
        view = request_view(request, partial(self._resolve, request))
        outer = nested.outer(getattr(request, "scope", request.META).get(PAYMENT_KEY), view)
        state = yield from self.gate.before(view, outer)  # on this gate's terms only
        # paid, or granted (a Payment marked so: docs/operations.md), or the outer gate's
        request.payment = getattr(state, "payment", outer)  # type: ignore[attr-defined]
        if isinstance(state, PassThrough):
            response = yield Call(self.get_response, (request,), blocking=False)
            return unshare(state, overridden(self.gate, request, response))  # a grant's: private
        if isinstance(state, Response):
            return render(state)
        if state.payment.stream is not None:  # a metered stream's events are counted as they
            request.META.pop("HTTP_ACCEPT_ENCODING", None)  # go: GZip below would hold them
        if request.method in ("GET", "HEAD"):  # served whole: an outer ConditionalGetMiddleware
            for name in _CONDITIONS:  # would turn the delivered 200 into a 304 or 412
                request.META.pop(name, None)
        try:  # Django turns a view's exception into a response; a cancellation goes on
            response = yield Call(self.get_response, (request,), blocking=False)
            response = own(overridden(self.gate, request, response))  # headers set below
        except BaseException as exc:  # async: the client left, Django cancelled the view
            yield from Meter(self.gate, state).finish(exc)
            raise
        error = getattr(request, "fourmica_x402_error", None)  # a 2xx made of it went out:
        meter = Meter(self.gate, state, None if 200 <= response.status_code < 300 else error)
        body = getattr(request, "_body", None)  # Django keeps what the view read as .body
        if isinstance(body, bytes):  # the request hash covers it (docs/operations.md)
            meter.received(body, True)
        started = yield from meter.start(response.status_code, response.items())
        if isinstance(started, Response):  # settle-after failed: answer 402 instead
            return render(started)
        for name, value in meter.extra or ():  # names ignore case: ours replace the view's
            response[name] = value
        for name in [n for n in response.headers if for_shared_caches(n)]:  # (a CDN's own)
            del response[name]
        if response.streaming:  # as the server's stack sends it (ours may run sync under ASGI)
            content = as_served(response.streaming_content, isinstance(request, ASGIRequest))
            response.streaming_content = meter.stream(content)
            unless_sent(response, meter)  # dropped unread above ours: refunded
            return response
        yield from served(response, meter, isinstance(request, ASGIRequest))  # once sent whole
        return response
