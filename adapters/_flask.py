"""The Flask extension's WSGI middleware: the rule Flask's router resolves is the one priced,
and the one it dispatches must be it (docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

from flask import Flask, abort, current_app, g, request
from flask.signals import request_started
from werkzeug.exceptions import HTTPException, SecurityError
from werkzeug.wsgi import get_host

from fourmica_x402.gate import Endpoint, Gate, RouterFailed
from fourmica_x402.gate.guards import RESOLVED_KEY, check_routed, rerouted, view_marker
from fourmica_x402.gate.lifecycle import Endpoints, Marker

from ._flask_handled import Handled, dispatching
from .wsgi import PAYMENT_KEY, PaymentMiddleware

__all__ = ["Routed", "answer"]

_APPS: weakref.WeakSet[Flask] = weakref.WeakSet()  # the process's apps with the extension


def _served(rule: Any) -> set[str]:  # Flask answers an OPTIONS it added by itself
    auto = getattr(rule, "provide_automatic_options", False)  # not on rules added by hand
    return set(rule.methods or ()) - ({"OPTIONS"} if auto else set())


def answer(marker: Marker, payment: Any) -> Any:
    """What ``@paid``'s ``marker`` answers instead of its view for this request, or None."""
    rule = request.url_rule
    served = sorted((rule.methods if rule else None) or ())
    refused = marker.refusal(payment, rule, request.method, served)
    if refused is None:
        return None
    if refused.status == 405:
        abort(405, valid_methods=marker.allow(served))
    return current_app.response_class(refused.body, refused.status, refused.headers)


def _started(sender: Flask, **extra: Any) -> None:
    """Flask's ``request_started``: ``g.payment`` for every ``before_request`` hook, those
    that run before the extension's too (Flask-Limiter's, limiting per payer)."""
    g.payment = request.environ.get(PAYMENT_KEY)


def _match(app: Flask, environ: dict[str, Any]) -> Any:
    """The rule Flask's router resolves for ``environ``. Flask matches inside the request
    context, its converters may read ``current_app``, ``g``, ``session``: when the plain
    match raised (it costs nothing on other requests), it is tried once more in a request
    context of its own. A router that still fails: RouterFailed, a 400 (docs/architecture.md,
    "Which route is priced")."""
    try:
        adapter = app.create_url_adapter(app.request_class(environ))
        return adapter.match(return_rule=True)[0]  # type: ignore[union-attr]
    except HTTPException:
        raise
    except Exception:
        context = app.request_context(environ)  # matched below, not as it is pushed
        adapter, context.url_adapter = context.url_adapter, None
    context.push()  # the app context, then the session, as Flask pushes them
    try:
        return adapter.match(return_rule=True)[0]  # type: ignore[union-attr]
    except HTTPException:
        raise
    except Exception as exc:  # it will raise again, before any handler
        raise RouterFailed(f"the router raised {type(exc).__name__}") from exc
    finally:  # its end runs the app's teardown for a request its before_request never saw:
        with contextlib.suppress(Exception):  # an error there is not the router's
            context.pop(None)


class Routed(PaymentMiddleware):
    """The WSGI middleware, pricing the rule Flask's router resolves (one Endpoint per rule)."""

    def __init__(self, app: Any, *, gate: Gate, flask_app: Flask) -> None:
        super().__init__(app, gate=gate)
        self._flask_app, views = flask_app, flask_app.view_functions
        describe = lambda r: (view_marker(views.get(r.endpoint)), _served(r))  # noqa: E731
        self._endpoint = Endpoints(describe, converter=flask_app.url_map.converters.get)
        request_started.connect(dispatching, flask_app)
        request_started.connect(_started, flask_app)
        self.app = Handled(app, flask_app)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        """A Host outside Flask's ``TRUSTED_HOSTS`` goes to Flask, which answers it 400 (its
        rules too), before any answer of the gate's names it (docs/operations.md)."""
        if trusted := self._flask_app.config.get("TRUSTED_HOSTS"):
            try:
                get_host(environ if self._seen is None else self._seen(environ), trusted)
            except SecurityError:
                return self.app(environ, start_response)
        return super().__call__(environ, start_response)

    def check(self) -> None:  # the first request runs it at the latest: views come after init_app
        everywhere = [view for app in _APPS for view in app.view_functions.values()]
        check_routed(self._flask_app.view_functions.values(), everywhere)  # @paid over @app.route?
        rules = ((rule, rule.rule) for rule in self._flask_app.url_map.iter_rules())
        views = self._flask_app.view_functions  # a view under two names (a blueprint twice)
        self._endpoint.check(self.gate, rules, lambda rule: views.get(rule.endpoint, rule))

    def resolver(self, environ: dict[str, Any]) -> Callable[[], Endpoint | None]:
        app = self._flask_app

        def resolve() -> Endpoint | None:
            environ[RESOLVED_KEY] = (None, environ.get("REQUEST_METHOD", "GET").upper())
            try:
                rule = _match(app, environ)
            except HTTPException:  # 404, 405, a redirect (strict slashes), a converter's
                return None  # own answer: the app gives it, and never serves the rule unpaid
            endpoint = self._endpoint(rule, rule.rule)
            environ[RESOLVED_KEY] = (endpoint, environ[RESOLVED_KEY][1])
            return endpoint

        return resolve

    def before_view(self) -> Any:  # the rule Flask dispatches: the one the gate priced?
        g.payment, rule = request.environ.get(PAYMENT_KEY), request.url_rule
        g.fourmica_x402_method = request.method  # as checked; a later hook may change it
        endpoint = None if rule is None else self._endpoint(rule, rule.rule)
        seen = request.environ.get(RESOLVED_KEY)
        refused = rerouted(self.gate.routes, endpoint, request.method, g.payment, seen)
        if refused is not None:
            return current_app.response_class(refused.body, refused.status, refused.headers)
        return self._unpriced(endpoint, rule)

    def _unpriced(self, endpoint: Endpoint | None, rule: Any) -> Any:
        """What a view's ``@paid`` answers a method it does not price, or an OPTIONS the view
        itself serves, answered here, before the view: a decorator above ``@paid`` (Flask-
        Caching's ``@cache.cached``) would serve them a paid answer it keeps, or keep theirs
        for the next buyer (docs/architecture.md, "Which route is priced")."""
        method = request.method
        if endpoint is None or method not in (endpoint.methods or ()):
            return None  # not a marker's, or Flask's own 405 or OPTIONS
        if not endpoint.marker_decides(method) or (
            method != "OPTIONS" and endpoint.marker_prices(method)
        ):
            return None
        marker = view_marker(self._flask_app.view_functions.get(rule.endpoint))
        return None if marker is None else answer(marker, None)

    def after_view(self, response: Any) -> Any:
        """``response``, or the refusal the view should have met: a ``before_request`` hook
        run after ours (registered after the extension, or a blueprint's) changed the method
        (docs/architecture.md, "Which route is priced"). Withheld: 503, a payment refunded."""
        checked = g.get("fourmica_x402_method")
        if checked is None or checked == request.method:
            return response
        refused = self.before_view()
        if refused is None:
            return response
        response.close()
        return refused
