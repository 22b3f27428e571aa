"""Prices: ``settings.FOURMICA_X402`` (PaymentConfig options, upper-cased) and ``@paid``.

FOURMICA_X402 = {"PAY_TO": "0x…", "NETWORK": "eip155:84532", "ROUTES": {"GET /a": "$0.01"}}
@paid(price="$0.01")  # every method the view serves; methods=["GET"]: GET (and HEAD), else 405
FOURMICA_X402_CONFIG = PaymentConfig(...)  # or one built in code (a live Core, hooks)"""

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpResponse, HttpResponseNotAllowed
from django.urls.converters import get_converters
from django.urls.resolvers import LocalePrefixPattern, RegexPattern, URLResolver, get_resolver

from fourmica_x402.config import PaymentConfig, config_options
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.gate import Response
from fourmica_x402.gate.guards import one_marker, view_marker
from fourmica_x402.gate.lifecycle import Marker

from ._classes import answers_itself, api_view_marker, bound_view, viewset
from ._ninja import operations, routed
from ._reads import reads

#: What a function view may serve, in the order ``Allow`` lists them.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def load() -> PaymentConfig:
    """The configured PaymentConfig; ConfigurationError says what to fix."""
    config = getattr(settings, "FOURMICA_X402_CONFIG", None)
    if config is None and isinstance(given := getattr(settings, "FOURMICA_X402", None), Mapping):
        options, unknown = config_options(given, str.upper)
        if unknown:
            known = [name.upper() for name in PaymentConfig.__dataclass_fields__]
            raise ConfigurationError(f"FOURMICA_X402: unknown keys {unknown} (known: {known})")
        config = PaymentConfig(**options)
    if not isinstance(config, PaymentConfig):
        raise ConfigurationError("set FOURMICA_X402 to a dict (or FOURMICA_X402_CONFIG)")
    return config


def describe(view: Any) -> tuple[Marker | None, list[str] | None]:
    """A view's ``@paid`` marker, and the methods it serves when its class says (as_view());
    a class that may answer any method itself (:func:`answers_itself`) serves all (None)."""
    if (cls := getattr(view, "view_class", None)) is None:
        return viewset(view) or operations(view) or (Marker.of(view), None)
    # @paid twice at two prices (on a marked class's view, above and below @api_view) fails:
    # the inner marker's guard would take the outer's cheaper payment (docs/architecture.md)
    outer = one_marker([Marker.of(view), Marker.of(cls), api_view_marker(cls)], cls.__qualname__)
    marker = view_marker(view) or outer
    if answers_itself(cls):
        return marker, None
    names = getattr(view, "view_initkwargs", {}).get("http_method_names", cls.http_method_names)
    served = [m for m in names if hasattr(cls, m) or (m == "head" and hasattr(cls, "get"))]
    return marker, [m.upper() for m in served]


def converter(name: str) -> Any:
    return get_converters().get(name)  # the registered path converter ``name`` (None: none)


def patterns(localized: bool = False, urlconf: Any = None) -> Iterator[tuple[Any, str]]:
    """``(view, route)`` of every URL pattern of ``urlconf`` (None: ROOT_URLCONF), its route
    joined as Django joins ResolverMatch.route (re_path: its regex, as :func:`reads`), less the
    language prefix of ``i18n_patterns``: one route for every language (docs/architecture.md,
    "Which route is priced"). ``localized``: only the patterns under ``i18n_patterns``. Their
    views and Ninja operations are noted as served (:func:`._ninja.routed`)."""
    return iter(routed((view, read) for view, _, read in routes(localized, urlconf)))


def routes(localized: bool = False, urlconf: Any = None) -> Iterator[tuple[Any, str, str]]:
    """As :func:`patterns`, ``(view, route as joined, route as read)``: only a route with a
    regex in it is read; a path() route's ``$`` is its own."""

    def walk(entries: Iterable[Any], prefix: str, under: bool, rx: bool) -> Iterator[Any]:
        for entry in entries:
            if isinstance(entry.pattern, LocalePrefixPattern):
                yield from walk(entry.url_patterns, prefix, True, rx)
                continue
            # Django drops a nested regex's "^"; the route drops the first too: "/api/*" prices it
            route = prefix + str(entry.pattern).removeprefix("^")
            regex = rx or isinstance(entry.pattern, RegexPattern)
            if isinstance(entry, URLResolver):
                yield from walk(entry.url_patterns, route, under, regex)
            elif under or not localized:
                yield entry.callback, "/" + route, reads("/" + route) if regex else "/" + route

    return walk(_top(urlconf), "", False, False)


def _top(urlconf: Any) -> Iterable[Any]:  # its top-level patterns (none when unconfigured)
    if urlconf is None and not getattr(settings, "ROOT_URLCONF", None):
        return ()
    return get_resolver(urlconf).url_patterns  # type: ignore[no-any-return]


def render(response: Response) -> HttpResponse:
    return HttpResponse(response.body, status=response.status, headers=dict(response.headers))


def paid(
    price: Any = None, *, methods: Iterable[str] | None = None, **route: Any
) -> Callable[[Any], Any]:
    """Charge for a view: every method it serves, or only ``methods`` (HEAD counts as GET; the
    others: 405). ``route``: RouteConfig fields. The view never runs unless paid for."""
    marker = Marker(price, methods, route).validate("@paid")  # fails at import

    def refusal(request: Any, allow: list[str]) -> HttpResponse | None:
        if request.method == "OPTIONS":  # a function view: answered here, the view never runs
            return HttpResponse(headers={"Allow": ", ".join(allow)})
        payment, match = getattr(request, "payment", None), getattr(request, "resolver_match", None)
        refused = marker.refusal(payment, getattr(match, "func", None), request.method or "")
        if refused is not None and refused.status == 405:
            return HttpResponseNotAllowed(allow)
        return None if refused is None else render(refused)

    def function_refusal(request: Any, *args: Any, **kwargs: Any) -> HttpResponse | None:
        if hasattr(request, "http_method_names") and args:  # on a view's method: (self, request)
            return refusal(args[0], marker.allow(request._allowed_methods()))
        return refusal(request, marker.allow(METHODS))

    def class_refusal(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        """A @paid class's: OPTIONS and the methods it does not implement go on as before,
        unless it may answer them itself (then it is a function view to us)."""
        name = (request.method or "").lower()
        if answers_itself(type(self)):
            refused = refusal(request, marker.allow(METHODS))
        elif name == "options" or name not in self.http_method_names or not hasattr(self, name):
            return None
        else:
            refused = refusal(request, marker.allow(self._allowed_methods()))
        return _now(refused) if refused is not None and self.view_is_async else refused

    def mark(view: Any) -> Any:  # functools.wraps copies the mark to the decorators above
        if isinstance(view, type):  # a class-based view: its dispatch refuses
            view.dispatch = marker.guard(view.dispatch, class_refusal, is_async=False)  # type: ignore[attr-defined]
        elif (owner := bound_view(view)) is not None:  # method_decorator(paid(…), name=…)'s
            refuse = lambda r, *a, **k: class_refusal(owner, r)  # noqa: E731  # (per request)
            view = marker.guard(view, refuse, is_async=False)  # its refusals: awaitable if async
        else:
            view = marker.guard(view, function_refusal, iscoroutinefunction(view))
        return marker.attach(view)

    return mark


async def _now(response: HttpResponse) -> HttpResponse:
    return response
