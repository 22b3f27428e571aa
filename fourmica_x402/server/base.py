"""What every handler of the service takes and returns, free of any web framework.

A handler is ``handler(service, call) -> (status, json)`` (or a :class:`Page` for the
dashboard and ``/metrics``). The adapter (``fourmica_x402.adapters.service``) reads the
request into a :class:`Call`, runs the handler and copies its answer onto the wire; it
also turns a :class:`~fourmica_x402.errors.FourmicaError` the handler lets through into
:func:`failure`, so handlers raise Core errors as they come.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fourmica_x402.errors import FourmicaError

__all__ = [
    "MAX_BODY",
    "Call",
    "Page",
    "Reply",
    "Result",
    "error",
    "failure",
    "parse_body",
    "refusal",
]

#: Largest request body the service parses; a bigger one reads as no body at all.
MAX_BODY = 256 * 1024

#: ``(status, json)``: the service's usual answer.
Reply = tuple[int, Any]


@dataclass(frozen=True)
class Page:
    """A non-JSON answer (the dashboard's HTML, the metrics' text exposition)."""

    body: bytes | str
    media_type: str
    status: int = 200


Result = Reply | Page


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

    @property
    def bearer(self) -> str:
        """The token of an ``Authorization: Bearer <token>`` header ("" without one)."""
        header = self.authorization
        return header[7:] if header[:7].lower() == "bearer " else ""


def parse_body(raw: bytes) -> Any:
    """The JSON of a request body, or None (empty, over :data:`MAX_BODY`, or not JSON)."""
    if len(raw) > MAX_BODY:
        return None
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def error(status: int, code: str, message: str) -> Reply:
    """The service's error shape, ``{"error": code, "message": text}`` (docs/protocol.md,
    "Reason codes"): ``code`` is stable snake_case a client can branch on.
    """
    return status, {"error": code, "message": message}


def failure(exc: FourmicaError) -> Reply:
    """A Core error as the service answers it: ``{"error": code, "message": text}``
    (docs/protocol.md, "Reason codes"). A server-side failure reads as 503, so a client
    retries later instead of treating the service as broken for good.
    """
    return exc.status if exc.status < 500 else 503, exc.to_dict()


def refusal(status: int, text: str) -> Reply:
    """``{"error": text}``: the service's refusals that predate the coded shape (unauthorized,
    disabled API, bad body). Clients match on the ``error`` text and status, so it is kept
    byte for byte; new refusals use :func:`failure`'s ``{"error", "message"}`` shape.
    """
    return status, {"error": text}
