"""The Flask extension's check that a request paid for a rule of its app was handled by that
app: a layer inside the gate (werkzeug's ``DispatcherMiddleware``, ``SharedDataMiddleware``)
may hand it to another app, which Flask's router check never sees (docs/architecture.md,
"Which route is priced")."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flask import Flask, request

from fourmica_x402.errors import Reason
from fourmica_x402.gate.guards import RESOLVED_KEY
from fourmica_x402.gate.types import error_response

from .wsgi import PAYMENT_KEY, answer

__all__ = ["Handled", "dispatching"]

log = logging.getLogger("fourmica_x402.gate")
_DISPATCHED = "fourmica_x402.flask_dispatched"  # environ: the Flask apps that handled it


def dispatching(sender: Flask, **extra: Any) -> None:
    """Flask's ``request_started``: ``sender`` handles the request."""
    request.environ.setdefault(_DISPATCHED, []).append(sender)


class Handled:
    """``app``; but a 2xx to a request paid for a rule of ``flask_app`` that a layer inside the
    gate sent to another app (``DispatcherMiddleware``) is withheld: 503, a payment refunded
    (docs/architecture.md, "Which route is priced")."""

    def __init__(self, app: Any, flask_app: Flask) -> None:
        self.app, self.flask_app = app, flask_app  # .app: the chain stays walkable

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        app, payment, seen = self.app, environ.get(PAYMENT_KEY), environ.get(RESOLVED_KEY)
        if payment is None or not isinstance(seen, tuple) or payment.endpoint is not seen[0]:
            return app(environ, start_response)  # type: ignore[no-any-return]
        withheld: list[Any] = []
        started: list[str] = []
        handled = environ.setdefault(_DISPATCHED, [])  # one list: copies of environ share it

        def start(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            started.append(status)
            if status[:1] != "2" or any(a is self.flask_app for a in handled):
                return start_response(status, headers, exc_info)
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            log.error("%s, paid for %s, was served by another app; not served", path, payment.route)
            why = "payments are not enforced here"
            withheld.append(
                answer(start_response, error_response(503, Reason.PAYMENT_NOT_ENFORCED, why))
            )
            return lambda data: None

        body = app(environ, start)
        if withheld:
            getattr(body, "close", lambda: None)()
            return withheld[0]  # type: ignore[no-any-return]
        return body if started else _unless(body, withheld)  # type: ignore[no-any-return]


def _unless(body: Iterable[bytes], withheld: list[Any]) -> Iterable[bytes]:
    """``body`` of an app that starts its response as it is read: the refusal instead once
    ``start_response`` withheld it."""
    try:
        for chunk in body:
            if withheld:
                yield from withheld[0]
                return
            yield chunk
    finally:
        getattr(body, "close", lambda: None)()
