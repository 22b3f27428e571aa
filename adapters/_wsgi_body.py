"""A WSGI request body as the gate reads it, then handed to the app (docs/protocol.md,
"Minimums, bundles and prepaid caps").

``wsgi.input`` can be read once. The gate reads a body only for its own endpoints and for a
route whose price, payTo or ``units`` reads it; that read keeps the bytes and puts them back
as ``wsgi.input``, so that the app (Flask's ``request.get_data()``, ``request.form``, Django's
``request.body``) reads exactly the bytes that were priced, and a second read gets them again.
A body longer than ``limit`` is not priced at all: :class:`BodyTooLarge` (413).
"""

from __future__ import annotations

import io
from typing import Any

from fourmica_x402.gate.types import BodyTooLarge

__all__ = ["WsgiBody"]


class WsgiBody:
    """``read_body`` of a WSGI request: its ``Content-Length`` bytes, or a chunked body's (no
    length; the server marks it ``wsgi.input_terminated``) to its end."""

    __slots__ = ("_body", "_environ", "_limit", "too_large")

    def __init__(self, environ: dict[str, Any], limit: int) -> None:
        self._environ, self._limit = environ, limit
        self._body: bytes | None = None
        self.too_large = False

    def __call__(self) -> bytes:
        if self._body is None and not self.too_large:
            self._body = self._read()
        if self._body is None:
            raise BodyTooLarge
        return self._body

    def _read(self) -> bytes | None:
        environ, limit = self._environ, self._limit
        stream = environ.get("wsgi.input")
        length = str(environ.get("CONTENT_LENGTH") or "")
        if stream is None:
            return b""
        if environ.get("wsgi.input_terminated"):  # chunked: to its end, whatever a
            want = limit + 1  # Content-Length beside it says (Werkzeug reads it so)
        else:
            want = int(length) if length.isascii() and length.isdigit() else 0
            if want > limit:  # left unread: the request is refused
                self.too_large = True
                return None
        data = b""
        while len(data) < want and (chunk := stream.read(want - len(data))):
            data += chunk  # a server's stream may return less than asked
        if len(data) > limit:  # the request is refused: the app never reads the rest
            self.too_large = True
            return None
        if want:  # what the app reads now, to its end or by its length: the bytes read
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(data), str(len(data))
        return data
