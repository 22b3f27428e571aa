"""A Django request as the gate reads it (:class:`~fourmica_x402.gate.RequestView`)."""

import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from django.http.request import RawPostDataException
from django.utils.encoding import escape_uri_path

from fourmica_x402.errors import FourmicaError, Reason
from fourmica_x402.gate import Gate, Headers, RequestView
from fourmica_x402.gate.guards import rerouted
from fourmica_x402.gate.lifecycle import BODY_LIMIT
from fourmica_x402.gate.types import BodyTooLarge

from .conf import render

__all__ = ["BodyReadBeforeGate", "DjangoBody", "overridden", "request_view"]

log = logging.getLogger("fourmica_x402.django")


class BodyReadBeforeGate(BodyTooLarge):
    """A middleware listed before ours read the body from its stream (``request.POST`` of a
    multipart form): none is left to price. The seller's setting: 500, never priced as unread
    (docs/protocol.md, "Reading the body")."""

    status = 500
    reason = Reason.BODY_READ_BEFORE_GATE

    def __init__(self) -> None:
        message = "a middleware listed before fourmica_x402 read the request body"
        FourmicaError.__init__(self, message)


class DjangoBody:
    """``read_body``: ``request.body``, or :class:`BodyTooLarge` when it is (or says it is)
    longer than the gate reads; never an empty stand-in for a long body (docs/protocol.md)."""

    __slots__ = ("_request", "too_large")

    def __init__(self, request: HttpRequest) -> None:
        self._request = request
        self.too_large: bool | BodyReadBeforeGate = False  # or what refused it

    def __call__(self) -> bytes:
        length = self._request.META.get("CONTENT_LENGTH") or "0"
        declared = int(length) if length.isascii() and length.isdigit() else 0
        try:  # past DATA_UPLOAD_MAX_MEMORY_SIZE Django refuses to read it: too large too
            if declared <= BODY_LIMIT and len(body := self._request.body) <= BODY_LIMIT:
                return body
        except RequestDataTooBig:
            pass
        except RawPostDataException:  # the seller's middleware order, not the buyer's body
            self.too_large = refused = BodyReadBeforeGate()
            log.error("%s: list PaymentMiddleware before it to price this body", refused.message)
            raise refused from None
        self.too_large = True
        raise BodyTooLarge


def overridden(gate: Gate, request: HttpRequest, response: Any) -> Any:
    """``response``, or the refusal the view should have met: a middleware listed after ours
    changed the method in its ``process_view``, which Django runs after ours, so the view ran
    for a method the check in ours never saw (docs/architecture.md, "Which route is priced").
    Its answer is withheld (503 ``payment_not_enforced``; a payment is then refunded)."""
    viewed = getattr(request, "fourmica_x402_viewed", None)
    if viewed is None or viewed[1] == request.method:
        return response
    seen = getattr(request, "fourmica_x402_resolved", None)
    why = rerouted(gate.routes, viewed[0], request.method or "", request.payment, seen)  # type: ignore[attr-defined]
    if why is None:
        return response
    response.close()
    return render(why)


def request_view(request: HttpRequest, resolve: Callable[[], Any] | None = None) -> RequestView:
    meta = request.META
    raw = meta.get("RAW_URI") or meta.get("REQUEST_URI") or ""  # gunicorn; uWSGI, mod_wsgi
    if not raw and hasattr(request, "scope"):  # ASGI servers keep the path as sent
        raw = (request.scope.get("raw_path") or b"").decode("latin-1")
    raw = raw.partition("?")[0].removeprefix(meta.get("SCRIPT_NAME") or "")
    host = request.get_host()  # a Host ALLOWED_HOSTS refuses: Django's 400, before any 402
    return RequestView(
        method=request.method or "GET",
        path=request.path_info,
        raw_path=raw or escape_uri_path(request.path_info),  # test clients: decoded only
        root=escape_uri_path(request.path.removesuffix(request.path_info)).rstrip("/"),
        query=meta.get("QUERY_STRING", ""),
        headers=Headers((name.lower(), value) for name, value in request.headers.items()),
        scheme=request.scheme or "http",
        host=host,
        client=meta.get("REMOTE_ADDR"),
        read_body=DjangoBody(request),  # Django keeps it as .body: the view reads it again
        resolve=resolve,
    )
