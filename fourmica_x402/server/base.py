"""What every handler of the service takes and returns, free of any web framework.

A handler is ``handler(service, call) -> (status, json)`` (or a :class:`Page` for the
dashboard and ``/metrics``). The adapter (``fourmica_x402.adapters.service``) reads the
request into a :class:`Call`, runs the handler and copies its answer onto the wire; it
also turns a :class:`~fourmica_x402.errors.FourmicaError` the handler lets through into
:func:`failure`, so handlers raise Core errors as they come.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fourmica_x402._json import loads_checked, no_duplicates
from fourmica_x402.core.common import INT64_MAX
from fourmica_x402.errors import CoreError, FourmicaError, TabLimited

__all__ = [
    "MAX_BODY",
    "Call",
    "Headed",
    "Page",
    "Reply",
    "Result",
    "bad_request",
    "error",
    "failure",
    "integer",
    "parse_body",
    "refusal",
    "required",
    "tab_limited",
    "tab_shape",
]

#: Largest request body the service reads; a bigger one is refused (413 ``body_too_large``).
MAX_BODY = 256 * 1024

#: ``(status, json)``: the service's usual answer.
Reply = tuple[int, Any]


@dataclass(frozen=True)
class Page:
    """A non-JSON answer (the dashboard's HTML, the metrics' text exposition), sent with
    :data:`PAGE_HEADERS`."""

    body: bytes | str
    media_type: str
    status: int = 200


#: Every answer of the service: a browser never reads one as another type than it says.
NOSNIFF = {"x-content-type-options": "nosniff"}
#: A :class:`Page` too: it loads nothing (its styles are inline) and no other site frames it.
PAGE_HEADERS = {
    **NOSNIFF,
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-frame-options": "DENY",
}


@dataclass(frozen=True)
class Headed:
    """A JSON answer with headers of its own (a 429's ``Retry-After``)."""

    status: int
    data: Any
    headers: Mapping[str, str]


Result = Reply | Page | Headed


def tab_limited(exc: TabLimited) -> Headed:
    """A tab call refused by the limits on new tabs: 429 in the tab calls' shape,
    ``{"error": text, "reason": code}``, and when to try again."""
    return Headed(429, {"error": exc.message, "reason": exc.reason}, dict(exc.headers()))


@dataclass(frozen=True)
class Call:
    """One request as the handlers see it.

    ``body`` is the parsed JSON body (None when absent, too big or not JSON: each handler
    answers that as it always did); ``path`` the route's parameters; ``origin`` the
    ``scheme://host[:port]`` the request reached, for URLs handed back to the caller.
    """

    body: Any = None
    path: Mapping[str, Any] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    authorization: str = ""
    origin: str = ""
    client: str | None = None  # the caller's address, for the tab calls' rate limits

    @property
    def bearer(self) -> str:
        """The token of an ``Authorization: Bearer <token>`` header ("" without one)."""
        header = self.authorization
        return header[7:] if header[:7].lower() == "bearer " else ""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as infinity
        raise ValueError(f"{text} is out of range")
    return value


def parse_body(raw: bytes) -> Any:
    """The JSON of a request body, or None (empty, over :data:`MAX_BODY`, or not JSON).

    Strict JSON only: ``NaN``, ``Infinity`` and numbers too big for a float (Python's parser
    takes them, but no answer can carry them back), a key named twice in one object and
    nesting too deep (docs/architecture.md, "JSON from another party") read as not JSON, so
    each handler answers them as it answers any bad body.
    """
    if len(raw) > MAX_BODY or not raw:
        return None
    try:
        return loads_checked(
            raw, parse_float=_finite, parse_constant=_no_constant, object_pairs_hook=no_duplicates
        )
    except (ValueError, RecursionError):
        return None


def cross_origin(
    method: str, headers: Mapping[str, str], names: frozenset[str] | None
) -> Reply | None:
    """A browser's request that changes something (any method but GET, HEAD, OPTIONS) from
    another site (its ``Origin`` names another host than the one it was sent to) is refused,
    so a page cannot change a service no key guards (a sandbox without ``--api-key``). With
    ``names`` (such a service), any browser request — reads too — sent to a host that is
    neither one of ``names`` nor an IP address is refused: it comes from a page whose DNS name
    was rebound to the service, which could otherwise read or change it as its own origin.
    Browsers say so with ``Origin`` (every change) or ``Sec-Fetch-Site`` (every request of
    current browsers); other clients send neither and are served under any name. ``headers``:
    the request's, read by lowercase name."""
    origin, host = headers.get("origin"), headers.get("host")
    browser = origin is not None or headers.get("sec-fetch-site") is not None
    if names is not None and browser and not _named(host, names):
        return error(
            403,
            "cross_origin",
            f"a browser's request to a host name this service does not have ({str(host)[:60]}):"
            " refused as a page whose DNS name was rebound here; a name of this service's "
            "own is added with serve --allowed-host",
        )
    if origin is None or method in ("GET", "HEAD", "OPTIONS"):
        return None
    if bool(host) and urlsplit(origin).netloc.lower() == str(host).lower():
        return None
    return error(403, "cross_origin", "requests from another site's pages are refused")


def host_name(name: str) -> str:
    """A host name as compared: lowercase, without the root's trailing dot."""
    return name.lower().rstrip(".")


def check_host_name(name: str) -> str:
    """``name`` as compared (:func:`host_name`) when a Host header can carry it: letters,
    digits, ``-`` and ``_`` in dot-separated labels. ``ValueError`` for a port, a URL, a path:
    none would ever match, and browsers would be refused with nothing saying why."""
    labels = host_name(name.strip()).split(".")
    if not all(label and label.replace("-", "").replace("_", "").isalnum() for label in labels):
        raise ValueError(f"{name!r:.80} is not a host name (no scheme, port or path: box.lan)")
    if not name.isascii():
        raise ValueError(f"{name!r:.80} is not a host name: give an IDN in its xn-- form")
    return host_name(name.strip())


def _named(host: str | None, names: frozenset[str]) -> bool:
    """Whether ``host`` (a Host header) is one of ``names``, a loopback name (``localhost``,
    ``*.localhost``) or an IP address."""
    try:
        hostname = urlsplit(f"//{host}").hostname if host else None
    except ValueError:  # a malformed Host (an unclosed IPv6 bracket)
        return False
    if not hostname:
        return False
    hostname = host_name(hostname)
    if hostname in names or hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def routing_error(status: int, method: str, path: str) -> Reply:
    """A router's 404 (no such path) or 405 (a method the path does not serve) as the service
    answers errors."""
    status = 405 if status == 405 else 404
    code = "not_found" if status == 404 else "method_not_allowed"
    return error(status, code, f"{method} {path}: {code.replace('_', ' ')}")


def error(status: int, code: str, message: str) -> Reply:
    """The service's error shape, ``{"error": code, "message": text}`` (docs/protocol.md,
    "Reason codes"): ``code`` is stable snake_case a client can branch on.
    """
    return status, {"error": code, "message": message}


def tab_shape(reply: Reply) -> Reply:
    """An error in :func:`error`'s shape as the tab calls and the Core API subset refuse,
    ``{"error": text, "reason": code}`` (docs/protocol.md, "Reason codes")."""
    status, data = reply
    return status, {"error": data["message"], "reason": data["error"]}


def failure(exc: FourmicaError) -> Reply:
    """A Core error as the service answers it: ``{"error": code, "message": text}``
    (docs/protocol.md, "Reason codes"). A server-side failure reads as 503, so a client
    retries later instead of treating the service as broken for good.
    """
    if exc.status < 500:
        return exc.status, exc.to_dict()
    return 503, {"error": exc.reason, "message": exc.public()}


def refusal(status: int, text: str, reason: str) -> Reply:
    """``{"error": text, "reason": code}``: the service's refusals that predate the coded
    shape (unauthorized, disabled API, bad body). Clients match on the ``error`` text and
    status, so it is kept byte for byte; the stable code is in ``reason``, as the tab calls
    answer (docs/protocol.md, "Reason codes"). New refusals use :func:`failure`'s shape.
    """
    return status, {"error": text, "reason": reason}


def bad_request(message: str) -> CoreError:
    """A request the service cannot read, raised from a handler like any Core error: it answers
    400 ``{"error": "invalid_request", "message": text}`` (docs/protocol.md, "Reason codes")."""
    return CoreError(message, reason="invalid_request", status=400)


def integer(value: Any, name: str) -> int:
    """An id or cursor of the request: a JSON integer or a decimal string (a query parameter),
    0..2**63-1 (the BIGINT columns). Anything else (a float, a bool, a bigger number) is a
    :func:`bad_request`, never truncated."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise bad_request(f"{name} must be an integer 0..{INT64_MAX}")
    return value


def required(body: Mapping[str, Any], name: str) -> Any:
    """``body[name]``, or a :func:`bad_request` naming the missing field."""
    if name not in body:
        raise bad_request(f"{name} is required")
    return body[name]
