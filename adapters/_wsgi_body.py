"""A WSGI request body as the gate reads it, then handed to the app (docs/protocol.md,
"Minimums, bundles and prepaid caps").

``wsgi.input`` can be read once. The gate reads a body only for its own endpoints and for a
route whose price, payTo or ``units`` reads it; that read keeps the bytes and puts them back
as ``wsgi.input``, so that the app (Flask's ``request.get_data()``, ``request.form``, Django's
``request.body``) reads exactly the bytes that were priced, and a second read gets them again.
A body longer than ``limit`` is not priced at all: :class:`BodyTooLarge` (413); nor is one
read otherwise than the app would read it (:class:`InvalidBody`, 400): a ``Content-Length``
that is not a plain number (Werkzeug strips spaces, ``int()`` takes ``+17``), or a stream
that fails (a broken chunked encoding).
"""

from __future__ import annotations

import io
from typing import Any

from fourmica_x402.gate.types import BodyTooLarge, InvalidBody

__all__ = ["WsgiBody"]


class WsgiBody:
    """``read_body`` of a WSGI request: its ``Content-Length`` bytes, or a chunked body's (no
    length; the server marks it ``wsgi.input_terminated``) to its end."""

    __slots__ = ("_body", "_environ", "_limit", "too_large")

    def __init__(self, environ: dict[str, Any], limit: int) -> None:
        self._environ, self._limit = environ, limit
        self._body: bytes | None = None
        self.too_large: bool | InvalidBody = False  # or what refused it

    def __call__(self) -> bytes:
        if self._body is None and not self.too_large:
            try:
                self._body = self._read()
            except InvalidBody as exc:
                self.too_large = exc
            except Exception as exc:  # the server's stream could not read it (a bad chunk)
                self.too_large = InvalidBody()
                raise self.too_large from exc
        if self._body is None:
            raise InvalidBody if isinstance(self.too_large, InvalidBody) else BodyTooLarge
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
            length = length.strip(" \t")  # as Werkzeug reads it; a sign or a list: refused
            if length and not (length.isascii() and length.isdigit()):
                raise InvalidBody
            want = int(length or 0)
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
