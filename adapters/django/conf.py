"""Prices: ``settings.FOURMICA_X402`` (PaymentConfig options, upper-cased) and ``@paid``.

FOURMICA_X402 = {"PAY_TO": "0x…", "NETWORK": "eip155:84532", "ROUTES": {"GET /a": "$0.01"}}
@paid(price="$0.01")  # every method the view serves; methods=["GET"]: GET (and HEAD), else 405
FOURMICA_X402_CONFIG = PaymentConfig(...)  # or one built in code (a live Core, hooks)
"""

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls.resolvers import URLResolver, get_resolver

from fourmica_x402.config import PaymentConfig
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.gate import Gate
from fourmica_x402.routes import Endpoint, RouteConfig, RouteTable, validate_marker

_MARK = "fourmica_x402_route"  # (RouteConfig, methods or None) on a @paid view or class
KEYS = {f.name.upper(): f.name for f in dataclasses.fields(PaymentConfig)}


def load() -> PaymentConfig:
    """The configured PaymentConfig; ConfigurationError says what to fix."""
    config = getattr(settings, "FOURMICA_X402_CONFIG", None)
    if config is None and isinstance(options := getattr(settings, "FOURMICA_X402", None), Mapping):
        if unknown := sorted(str(key) for key in options if key not in KEYS):
            raise ConfigurationError(f"FOURMICA_X402: unknown keys {unknown} (known: {list(KEYS)})")
        config = PaymentConfig(**{KEYS[key]: value for key, value in options.items()})
    if not isinstance(config, PaymentConfig):
        raise ConfigurationError("set FOURMICA_X402 to a dict (or FOURMICA_X402_CONFIG)")
    return config


def endpoint(view: Any, route: str) -> Endpoint:
    """What the gate prices: ``view`` at ``route`` (a ResolverMatch's func and route)."""
    cls = getattr(view, "view_class", None)  # as_view(): the methods its class implements
    config, priced = getattr(view, _MARK, None) or getattr(cls, _MARK, None) or (None, None)
    methods = None
    if cls is not None:
        names = getattr(view, "view_initkwargs", {}).get("http_method_names", cls.http_method_names)
        served = [m for m in names if hasattr(cls, m) or (m == "head" and hasattr(cls, "get"))]
        methods = frozenset(m.upper() for m in served)
    return Endpoint(view, "/" + route, marker=config, marker_methods=priced, methods=methods)


def endpoints(table: RouteTable) -> list[Endpoint]:
    """One per URL pattern, its route joined as Django joins ResolverMatch.route (re_path: the
    regex); a @paid price these settings make invalid raises ConfigurationError."""

    def walk(patterns: Iterable[Any], prefix: str) -> Iterator[Endpoint]:
        for entry in patterns:
            route = prefix + str(entry.pattern).removeprefix("^" if prefix else "")
            if isinstance(entry, URLResolver):
                yield from walk(entry.url_patterns, route)
            else:
                yield endpoint(entry.callback, route)

    urls = get_resolver().url_patterns if getattr(settings, "ROOT_URLCONF", None) else ()
    found = list(walk(urls, ""))
    for each in found:
        if each.marker is not None:
            table.prepare(each)
    return found


def paid(
    price: Any = None, *, methods: Iterable[str] | None = None, **route: Any
) -> Callable[[Any], Any]:
    """Charge for a view: every method it serves, or only ``methods`` (HEAD counts as GET; the
    others: 405). ``route``: RouteConfig fields. The view never runs unless paid for."""
    config = validate_marker(RouteConfig(price=price, **route), "@paid")  # fails at import
    priced = None if methods is None else frozenset(m.upper() for m in methods)

    def fits(method: str) -> bool:  # a method to list in Allow; HEAD counts as GET
        return priced is None or method == "OPTIONS" or method.replace("HEAD", "GET") in priced

    allow = [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS") if fits(m)]

    def refusal(request: Any, allow: list[str] = allow) -> HttpResponse | None:
        if request.method == "OPTIONS":  # a function view: answered here, the view never runs
            return HttpResponse(headers={"Allow": ", ".join(allow)})
        payment, match = getattr(request, "payment", None), getattr(request, "resolver_match", None)
        why = Gate.marker_refusal(payment, getattr(match, "func", None), request.method, priced)
        if why is None:
            return None
        if why[0] == 405:
            return HttpResponseNotAllowed(allow)
        body = {"error": str(why[1]), "message": why[2]}
        return JsonResponse(body, status=why[0], headers={"Cache-Control": "no-store"})

    def mark(view: Any) -> Any:  # functools.wraps copies the mark to the decorators above
        guarded: Any = view
        if isinstance(view, type):  # a class-based view: its dispatch refuses
            guarded.dispatch = _guarded_dispatch(guarded.dispatch, refusal, fits)
        elif iscoroutinefunction(view):

            async def run_async(request: Any, *args: Any, **kwargs: Any) -> Any:
                refused = refusal(request)
                return refused if refused is not None else await view(request, *args, **kwargs)

            guarded = functools.wraps(view)(run_async)
        else:

            def run(request: Any, *args: Any, **kwargs: Any) -> Any:
                refused = refusal(request)
                return refused if refused is not None else view(request, *args, **kwargs)

            guarded = functools.wraps(view)(run)
        setattr(guarded, _MARK, (config, priced))
        return guarded

    return mark


def _guarded_dispatch(dispatch: Any, refusal: Any, fits: Any) -> Any:
    """A @paid class's dispatch; OPTIONS and methods it does not implement go on as before."""

    @functools.wraps(dispatch)
    def guarded(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        name = (request.method or "").lower()
        if name != "options" and name in self.http_method_names and hasattr(self, name):
            refused = refusal(request, [m for m in self._allowed_methods() if fits(m)])
            if refused is not None:
                return _now(refused) if self.view_is_async else refused
        return dispatch(self, request, *args, **kwargs)

    return guarded


async def _now(response: HttpResponse) -> HttpResponse:
    return response
