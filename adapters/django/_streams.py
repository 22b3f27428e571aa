"""A streaming response's content in the form the server sends chunk by chunk.

Django reads a sync iterator whole, in a worker thread, before sending under ASGI, and an
async one whole before writing under WSGI: the gate, metering the content as it is read,
would count it delivered before a byte went out, and charge a client that left
(docs/protocol.md, "Delivery"). So the content goes in the server's own form, a chunk read
when the server asks for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async

__all__ = ["as_served"]


def as_served(content: Any, async_mode: bool) -> Any:
    """``content`` as the server sends it: async under ASGI, sync under WSGI."""
    if async_mode and not hasattr(content, "__aiter__"):
        return _pulled(iter(content))
    if not async_mode and hasattr(content, "__aiter__"):
        return _collected(content)
    return content


async def _pulled(chunks: Iterator[Any]) -> AsyncIterator[Any]:
    """A sync iterator read one chunk at a time in a worker thread, as each is sent."""
    end = object()
    take = sync_to_async(lambda: next(chunks, end), thread_sensitive=False)
    try:
        while (chunk := await take()) is not end:
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=False)()


def _collected(chunks: Any) -> Iterator[Any]:
    """An async iterator read whole when the server first asks (as Django would), then
    handed out a chunk at a time as the server writes them."""
    yield from async_to_sync(_collect)(chunks)


async def _collect(chunks: Any) -> list[Any]:
    return [chunk async for chunk in chunks]
