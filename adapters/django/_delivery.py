"""A paid Django response that is never sent: refunded; one a WSGI server writes: judged then.

A middleware listed above ours may answer with a response of its own instead of the paid
stream, which is then neither read nor closed: the gate, told when a stream ends, would never
hear of it (the guarantee locked until its validation deadline, a G-v1 one charged). Such a
stream is refunded once Python collects it (docs/protocol.md, "Paid responses").
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import weakref
from typing import Any

from fourmica_x402.gate import Flow, Gate, Granted
from fourmica_x402.gate.lifecycle import Meter
from fourmica_x402.gate.types import unshared

__all__ = ["own", "served", "unless_sent", "unshare"]

log = logging.getLogger("fourmica_x402.gate")

#: Metered responses dropped by the garbage collector (read whole?), the thread that ends them.
_DROPPED: queue.SimpleQueue[tuple[Meter, bool]] = queue.SimpleQueue()
_refunder: threading.Thread | None = None
_REPLACED = "the response was replaced before it was sent"
_LEFT = "the client left before the response ended"


class _Written:
    """Whether the server's last pass over a response (``iter(response)``) stopped short, its
    write failing (the client left), or one went to the end (``whole``)."""

    cut = whole = False


class _Watched:
    """A response whose passes are noted in its ``_fourmica_written``, whatever its content
    becomes: a ``GZipMiddleware`` above ours replaces it with the compressed one, and a client
    that left while the server wrote that was charged (docs/protocol.md, "Delivery")."""

    _fourmica_written: _Written

    @property
    def content(self) -> Any:  # read whole: a middleware above ours may send it anew
        self._fourmica_written.whole = True
        return super().content  # type: ignore[misc]

    @content.setter
    def content(self, value: Any) -> None:
        super(_Watched, type(self)).content.fset(self, value)  # type: ignore[misc]

    def __iter__(self) -> Any:
        written = self._fourmica_written
        written.cut = True
        yield from super().__iter__()  # type: ignore[misc]
        written.cut, written.whole = False, True


_WATCHED: dict[type, type] = {}


def own(response: Any) -> Any:
    """``response``, or a copy of it once a view answers it again (built once: a catalog):
    each buyer's headers, closing and delivery are their own, however many are served at once
    (docs/protocol.md, "Delivery")."""
    if not getattr(response, "_fourmica_answered", False):
        response._fourmica_answered = True
        return response
    fresh = copy.copy(response)  # its closers, headers and cookies: this request's own
    fresh.headers = type(response.headers)(dict(response.headers.items()))
    fresh.cookies, fresh._resource_closers, fresh.closed = copy.copy(response.cookies), [], False
    return fresh


def served(response: Any, meter: Meter, async_mode: bool) -> Flow:
    """A whole (non-streaming) paid response: charged as it goes out. Under WSGI the server
    writes it after the middleware returned, then closes it: a write that failed (the client
    left) is refunded, like a stream's (docs/protocol.md, "Delivery")."""
    meter.feed(response.content)
    if async_mode or type(getattr(response, "_container", None)) is not list:  # ASGI: .content
        # a body short of its Content-Length: refunded; past it, an ASGI server sends none
        yield from meter.finish(meter.short() or (_longer(meter) if async_mode else None))
        return
    cls = type(response)  # one a view answers again (built once) is watched already
    if (watched := _WATCHED.get(cls)) is None:
        mixed = issubclass(cls, _Watched)
        watched = _WATCHED[cls] = cls if mixed else type(cls.__name__, (_Watched, cls), {})
    response.__class__, response._fourmica_written = watched, (written := _Written())

    def closed() -> None:
        if not meter.finished:
            left = ConnectionAbortedError(_LEFT) if written.cut else None
            Gate.run_sync(meter.finish(left or meter.short()))

    response._resource_closers.append(closed)
    unless_sent(response, meter, written)  # dropped unsent above ours: refunded


def _longer(meter: Meter) -> BaseException | None:
    """A body longer than its ``Content-Length``, which ASGI servers refuse to send (uvicorn
    sends the head alone): not delivered (docs/protocol.md, "Delivery")."""
    if meter.length is None or meter.sent <= meter.length:
        return None
    return ConnectionError(f"the body is {meter.sent} bytes, its Content-Length {meter.length}")


def unless_sent(response: Any, meter: Meter, written: _Written | None = None) -> None:
    """Refund ``meter``'s payment if ``response`` is dropped before it was sent and closed;
    one whose ``written`` chunks were read to the end, never closed (a WSGI layer around
    Django that forgot to), was delivered: charged, as a WSGI body read to its end is."""
    global _refunder
    if _refunder is None or not _refunder.is_alive():  # first use, or a forked child
        _refunder = threading.Thread(target=_refunds, name="fourmica-dropped", daemon=True)
        _refunder.start()
    # A finalizer may run inside any allocation, a lock of the gate's held: it only queues.
    weakref.finalize(response, _dropped, meter, written)


def _dropped(meter: Meter, written: _Written | None) -> None:
    if not meter.finished:  # sent and closed: nothing to do (the usual case)
        _DROPPED.put((meter, written is not None and written.whole and not written.cut))


def _refunds() -> None:
    while True:
        meter, read = _DROPPED.get()
        if meter.finished:
            continue
        try:
            Gate.run_sync(
                meter.finish(meter.short() if read else ConnectionAbortedError(_REPLACED))
            )
        except Exception:
            log.exception("ending a dropped paid response failed")


def unshare(state: Any, response: Any) -> Any:
    """``response``, a granted one's headers marked as a paid answer's are: a shared cache
    would hand it to unpaid clients (docs/operations.md)."""
    if isinstance(state, Granted):
        kept = {name.lower(): value for name, value in unshared(response.items())}
        for name in [n for n in response.headers if n.lower() not in kept]:
            del response[name]
        if "cache-control" in kept:
            response["Cache-Control"] = kept["cache-control"]
    return response
