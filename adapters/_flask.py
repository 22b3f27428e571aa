"""The Flask extension's WSGI middleware: the rule Flask's router resolves is the one priced,
and the one it dispatches must be it (docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, current_app, g, request
from flask.signals import request_started
from werkzeug.exceptions import HTTPException

from fourmica_x402.errors import Reason
from fourmica_x402.gate import Endpoint, Gate, RouterFailed
from fourmica_x402.gate.guards import RESOLVED_KEY, check_routed, rerouted, view_marker
from fourmica_x402.gate.lifecycle import Endpoints
from fourmica_x402.gate.types import error_response

from .wsgi import PAYMENT_KEY, PaymentMiddleware, answer

__all__ = ["Routed"]

log = logging.getLogger("fourmica_x402.gate")
_APPS: weakref.WeakSet[Flask] = weakref.WeakSet()  # the process's apps with the extension
_DISPATCHED = "fourmica_x402.flask_dispatched"  # environ: the Flask apps that handled it


def _dispatching(sender: Flask, **extra: Any) -> None:  # Flask's request_started
    request.environ.setdefault(_DISPATCHED, []).append(sender)


def _served(rule: Any) -> set[str]:  # Flask answers an OPTIONS it added by itself
    auto = getattr(rule, "provide_automatic_options", False)  # not on rules added by hand
    return set(rule.methods or ()) - ({"OPTIONS"} if auto else set())


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
        request_started.connect(_dispatching, flask_app)
        self.app = lambda environ, start_response: self._handled(app, environ, start_response)

    def _handled(self, app: Any, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """``app``'s answer, unless a layer inside the gate (a ``DispatcherMiddleware``) sent a
        request paid for a rule of this Flask app to another app: its 2xx is withheld, 503
        ``payment_not_enforced``, and the payment refunded (docs/architecture.md, "Which route
        is priced")."""
        payment, seen = environ.get(PAYMENT_KEY), environ.get(RESOLVED_KEY)
        if payment is None or not isinstance(seen, tuple) or payment.endpoint is not seen[0]:
            return app(environ, start_response)  # type: ignore[no-any-return]
        withheld: list[Any] = []
        handled = environ.setdefault(_DISPATCHED, [])  # one list: copies of environ share it

        def start(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            if status[:1] != "2" or any(a is self._flask_app for a in handled):
                return start_response(status, headers, exc_info)
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            log.error("%s, paid for %s, was served by another app; not served", path, payment.route)
            refused = error_response(
                503, Reason.PAYMENT_NOT_ENFORCED, "payments are not enforced here"
            )
            withheld.append(answer(start_response, refused))
            return lambda data: None

        body = app(environ, start)
        if withheld:
            getattr(body, "close", lambda: None)()
            return withheld[0]  # type: ignore[no-any-return]
        return body  # type: ignore[no-any-return]

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
        return None

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
