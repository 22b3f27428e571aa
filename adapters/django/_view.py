"""A Django request as the gate reads it (:class:`~fourmica_x402.gate.RequestView`)."""

from collections.abc import Callable
from typing import Any

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest
from django.utils.encoding import escape_uri_path

from fourmica_x402.gate import RequestView
from fourmica_x402.gate.lifecycle import BODY_LIMIT

__all__ = ["request_view"]


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
    small = (
        length.isascii() and length.isdigit() and int(length) <= BODY_LIMIT
    )  # what the gate's endpoints read
    return RequestView(
        method=request.method or "GET",
        path=request.path_info,
        raw_path=raw or escape_uri_path(request.path_info),  # test clients: decoded only
        root=escape_uri_path(request.path.removesuffix(request.path_info)).rstrip("/"),
        query=meta.get("QUERY_STRING", ""),
        headers=tuple((name.lower(), value) for name, value in request.headers.items()),
        scheme=request.scheme or "http",
        host=host,
        client=meta.get("REMOTE_ADDR"),
        read_body=lambda: request.body if small else b"",
        resolve=resolve,
    )
