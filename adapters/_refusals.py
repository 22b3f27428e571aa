"""``Paid``'s refusals (FastAPI): the exception that carries the gate's answer, and the handler
that renders it in the gate's JSON shape under every install (docs/architecture.md, "What an
adapter does, and what it leaves to the gate")."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request
from starlette.applications import Starlette
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.responses import Response as StarletteResponse
from starlette.routing import Host, Mount, Router

from fourmica_x402.gate import Response

__all__ = ["PaymentRefused", "answer_refusals", "refused", "render"]

#: Headers of the gate's answer that describe its own body, not FastAPI's ``{"detail": …}``.
_OWN = ("content-length", "content-type")


class PaymentRefused(HTTPException):
    """``Paid`` will not run its handler: ``response`` (the gate's JSON error shape) answers."""

    def __init__(self, response: Response) -> None:
        detail = json.loads(response.body) if response.body else {}  # OPTIONS: no body
        headers = {k: v for k, v in response.headers if k.lower() not in _OWN}
        super().__init__(response.status, detail, headers)
        self.response, self.reason = response, detail.get("error")
        self.message = detail.get("message", "")


def render(response: Response) -> StarletteResponse:
    return StarletteResponse(response.body, response.status, headers=dict(response.headers))


async def refused(request: Request, exc: Exception) -> StarletteResponse:
    assert isinstance(exc, PaymentRefused)
    return render(exc.response)


def answer_refusals(app: Any, depth: int = 0) -> None:
    """Have the exception layers down ``app``'s middleware chain, and those of the apps its
    router mounts, answer ``Paid``'s refusals in the gate's shape rather than FastAPI's
    ``{"detail": …}``, unless an app has a handler of its own for them (a ``Host``'s app is
    mounted too: docs/architecture.md, "What an adapter does, and what it leaves to the gate")."""
    for _ in range(64):
        if isinstance(app, Starlette):  # a stack it builds later; the one built, if any
            if PaymentRefused not in app.exception_handlers:
                app.add_exception_handler(PaymentRefused, refused)
            app = app.middleware_stack or app.router
        elif isinstance(app, Router):
            for route in app.routes if depth < 8 else ():
                if isinstance(route, (Mount, Host)):
                    answer_refusals(route.app, depth + 1)
            return
        else:
            own = getattr(app, "_exception_handlers", {})
            if isinstance(app, ExceptionMiddleware) and PaymentRefused not in own:
                app.add_exception_handler(PaymentRefused, refused)
            app = getattr(app, "app", None)
