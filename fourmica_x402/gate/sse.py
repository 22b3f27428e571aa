"""Server-sent events as a metered stream writes them (docs/protocol.md, "Metered streams")."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

__all__ = ["METER_EVENTS", "Unmetered", "encode", "sse"]

log = logging.getLogger("fourmica_x402.gate")

#: The meter's own events: a source's event may not take their names (it would forge them).
METER_EVENTS = frozenset({"stream", "payment-required", "end"})


def sse(event: str | None, data: Any, event_id: str | None = None) -> bytes:
    """One server-sent event: ``data`` as text (``str``), or JSON (anything else). A line
    ends at CR, LF or CRLF for an SSE reader: the text's own are ``data:`` lines, and a
    name or id holding one is refused (it would forge events: a fake ``end``, say)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    for field in (event or "", event_id or ""):
        if "\r" in field or "\n" in field:
            raise ValueError("an event's name or id cannot hold a line break")
    lines = [f"event: {event}"] if event else []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in _LINES.split(text))
    return ("\n".join(lines) + "\n\n").encode()


#: Where an SSE reader ends a line.
_LINES = re.compile(r"\r\n|\r|\n")


def encode(item: Any) -> bytes:
    """A source's item as an event: ``(event, data)`` names it; bytes and str are its data.
    A name of the meter's own (:data:`METER_EVENTS`) is refused: a source relaying events
    would forge a ``payment-required`` the buyer pays, or an ``end`` (docs/protocol.md)."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        if item[0] in METER_EVENTS:
            raise ValueError(f"a source's event cannot be named {item[0]!r}: the meter's own")
        return sse(item[0], item[1])
    if isinstance(item, bytes | bytearray):
        return sse(None, bytes(item).decode("utf-8", "replace"))
    return sse(None, item)


class Unmetered:
    """``payment.stream`` of a request ``on_protected_request`` granted on a metered route
    (docs/operations.md, "Seller options and hooks"): the source's events, then ``end``, with
    no slice asked for or sold."""

    def events(
        self, source: Iterable[Any] | AsyncIterable[Any]
    ) -> Iterator[bytes] | AsyncIterator[bytes]:
        if hasattr(source, "__aiter__"):
            return self._async(source)  # type: ignore[arg-type]
        return self._sync(source)  # type: ignore[arg-type]

    def _sync(self, source: Iterable[Any]) -> Iterator[bytes]:
        reason = "complete"
        try:
            for item in source:
                yield encode(item)
        except Exception:
            log.exception("a granted stream's source failed")
            reason = "source_failed"
        yield sse("end", {"reason": reason, "slices": 0})

    async def _async(self, source: AsyncIterable[Any]) -> AsyncIterator[bytes]:
        reason = "complete"
        try:
            async for item in source:
                yield encode(item)
        except Exception:
            log.exception("a granted stream's source failed")
            reason = "source_failed"
        yield sse("end", {"reason": reason, "slices": 0})
