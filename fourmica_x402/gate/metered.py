"""Metered streams in the gate: the stream a paid handler sends through, and its pay endpoint
(docs/protocol.md, "Metered streams").

A metered route's paid request opens a stream (slice 1 is its own payment) and hands the
handler ``payment.stream``, a :class:`MeteredStream`. The handler gives it its source of events;
what comes back is the response body as server-sent events: first ``stream`` (the stream's id
and pay URL), then the source's events, a slice at a time. Before the first event of each
later slice the stream asks for it (``payment-required``) and waits for its payment at
:func:`endpoint` (``POST <prefix>/streams/<id>/<slice>``, answered by any process of the
seller); the event goes out only once that slice is paid. It ends with ``end`` and a reason.

A slice is charged once its first event went out (the generator was resumed after yielding
it); a slice paid for but never started is voided when the stream ends."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..streams import SliceRow, Slices, Streams, as_first, refusal
from . import after, deliver, settle
from .challenge import origin, requirements
from .sse import encode, sse
from .types import Call, Flow, Paid, Payment, RequestFault, RequestView, Response, error_response

if TYPE_CHECKING:
    from ..routes import Route
    from .flow import Gate

log = logging.getLogger("fourmica_x402.gate")

#: Each refusal's status and message.
REFUSALS: dict[str, tuple[int, str]] = {
    "unknown_stream": (404, "no such stream"),
    "stream_not_yours": (403, "the stream belongs to another payer"),
    "stream_closed": (409, "the stream has ended; nothing more is sold on it"),
    "slice_paid": (409, "this slice is already paid for"),
    "slice_out_of_order": (409, "pay for the slice the stream asked for"),
    "max_slices": (409, "the stream sells no more slices than its maxSlices"),
    "stream_terms_changed": (409, "this request prices the slice unlike the stream's first"),
}
#: How often a waiting stream looks for a payment another process took (seconds).
POLL = 0.2
#: The steps of a stream's body (:meth:`MeteredStream._body`), and the source's end.
SEND, NEXT, WAIT, CHARGE = "send", "next", "wait", "charge"
_END = object()


def _refused(reason: str) -> Response:
    status, message = REFUSALS[reason]
    return error_response(status, reason, message)


class MeteredStream:
    """``payment.stream`` on a metered route: :meth:`events` wraps the handler's source."""

    def __init__(
        self, gate: Gate, route: Route, payment: Payment, stream_id: str, request: RequestView
    ) -> None:
        slices = route.config.slices
        assert slices is not None
        self.gate, self.route, self.payment, self.slices = gate, route, payment, slices
        #: Its request: later slices are priced as it was (see :func:`endpoint`).
        self.id, self.base, self.request = stream_id, origin(gate, request), request
        #: The slice being sent, how many of its events went out, and when it began.
        self.slice, self.sent, self.began = 1, 0, time.monotonic()
        #: Whether slice 1 (this request's own payment) had an event go out.
        self.first_delivered = False
        self.reason: str | None = None
        #: Whether the handler streamed through :meth:`events` (else nothing could be sold).
        self.used = False
        self._paid = threading.Event()
        #: Slices paid ahead at this process's pay URL: kept so their holds last until they
        #: are charged (a slice may outlast the validation timeout before the next begins).
        self._ahead: dict[int, Paid] = {}
        _LOCAL[stream_id] = self

    def pay_url(self, slice_: int) -> str:
        return f"{self.base}{self.gate._prefix}/streams/{self.id}/{slice_}"

    def events(
        self, source: Iterable[Any] | AsyncIterable[Any]
    ) -> Iterator[bytes] | AsyncIterator[bytes]:
        """The response body: ``source``'s items (sync or async) as metered events."""
        self.used = True
        if hasattr(source, "__aiter__"):
            return self._async(source)  # type: ignore[arg-type]
        return self._sync(source)  # type: ignore[arg-type]

    # -- the body, written once; its two drivers ---------------------------------------------

    def _body(self) -> Generator[tuple[str, Any], Any, None]:
        """The stream's body as steps: yields ``(SEND, bytes)``, ``(NEXT, None)`` (gets the
        source's next item, or ``_END``), ``(WAIT, deadline)`` (gets how the wait for the next
        slice's payment ended) and ``(CHARGE, slice)`` (a later slice's first event went out).
        A source that raises is thrown in at ``NEXT``."""
        reason = "client_left"
        try:
            yield SEND, self._opened()
            while True:
                try:  # an item that cannot be sent (a meter event's name) fails it too
                    item = yield NEXT, None
                    event = b"" if item is _END else encode(item)
                except Exception:
                    log.exception("a metered stream's source failed")
                    reason = "source_failed"
                    break
                if item is _END:
                    reason = "complete"
                    break
                if self._full():
                    ask = self._ask()
                    if ask is None:
                        reason = "max_slices"
                        break
                    yield SEND, ask
                    got = yield WAIT, time.monotonic() + self.slices.pay_timeout
                    if got != "paid":
                        reason = got
                        break
                yield SEND, event
                self.sent += 1  # it went out: the driver was asked for more after it
                if self.sent == 1 and self.slice == 1:
                    self.first_delivered = True
                elif self.sent == 1:
                    yield CHARGE, self.slice
            yield SEND, sse("end", {"reason": reason, "slices": self.slice})
        finally:
            self._finish(reason)  # short local writes: also when the client left

    def _sync(self, source: Iterable[Any]) -> Iterator[bytes]:
        items, body = iter(source), self._body()
        try:
            step, arg = next(body)
            while True:
                got: Any = None
                if step is SEND:
                    yield arg
                elif step is NEXT:
                    try:
                        got = next(items, _END)
                    except Exception as exc:
                        step, arg = body.throw(exc)
                        continue
                elif step is WAIT:
                    got = self._wait(arg)
                else:
                    self._charge(arg, delivered=True)
                step, arg = body.send(got)
        except StopIteration:
            return
        finally:
            body.close()

    async def _async(self, source: AsyncIterable[Any]) -> AsyncIterator[bytes]:
        items, body = aiter(source), self._body()
        try:
            step, arg = next(body)
            while True:
                got: Any = None
                if step is SEND:
                    yield arg
                elif step is NEXT:
                    try:
                        got = await anext(items, _END)
                    except Exception as exc:
                        step, arg = body.throw(exc)
                        continue
                elif step is WAIT:
                    got = await self._await(arg)
                else:
                    await asyncio.to_thread(self._charge, arg, delivered=True)
                step, arg = body.send(got)
        except StopIteration:
            return
        finally:
            body.close()  # also when the task is cancelled (the client left)

    # -- the steps --------------------------------------------------------------------------------

    def _opened(self) -> bytes:
        s, stream = self.slices, self.id
        return sse("stream", {"stream": stream, "slice": 1, "units": s.units, "seconds": s.seconds})

    def _full(self) -> bool:
        s = self.slices
        if s.units is not None and self.sent >= s.units:
            return True
        # A slice of seconds runs until its first event at least: a source slower than a
        # slice is not asked to pay for one that delivered nothing (which buyers refuse).
        return (
            s.seconds is not None and self.sent > 0 and time.monotonic() - self.began >= s.seconds
        )

    def _ask(self) -> bytes | None:
        """The ``payment-required`` event for the next slice (None: no more slices sold)."""
        nxt = self.slice + 1
        if self.slices.max_slices is not None and nxt > self.slices.max_slices:
            return None
        first = self.payment  # every slice is sold on the first one's terms (docs/protocol.md)
        self._paid.clear()
        return sse(
            "payment-required",
            {
                "stream": self.id,
                "slice": nxt,
                "pay": self.pay_url(nxt),
                "amount": str(first.amount),
                "asset": first.asset,
                "network": first.network,
                "timeout": self.slices.pay_timeout,
            },
        )

    def _check(self) -> str | None:
        """``paid`` once the next slice is paid; the stream's end reason when it was stopped."""
        row = self.gate.streams.get(self.id)
        if row is None or row.state != "open":
            return row.state if row is not None else "unknown_stream"
        return "paid" if row.paid > self.slice else None

    def _wait(self, deadline: float) -> str:
        while True:
            self._paid.wait(max(0.0, min(POLL, deadline - time.monotonic())))
            found = self._check()
            if found is not None:
                return self._next(found)
            if time.monotonic() >= deadline:
                return "payment_timeout"

    async def _await(self, deadline: float) -> str:
        while True:
            until = time.monotonic() + min(POLL, max(0.0, deadline - time.monotonic()))
            while not self._paid.is_set() and time.monotonic() < until:
                await asyncio.sleep(0.01)
            found = await asyncio.to_thread(self._check)
            if found is not None:
                return self._next(found)
            if time.monotonic() >= deadline:
                return "payment_timeout"

    def _next(self, found: str) -> str:
        if found == "paid":
            self.slice, self.sent, self.began = self.slice + 1, 0, time.monotonic()
        return found

    def ended(self, outcome: str, status: int | None = None) -> None:
        """The request is over (the gate's finish, with the response's ``status``): slice 1's
        outcome recorded, and the stream closed if its body never ran or was dropped before
        it could close it."""
        if self.reason is None:
            self._finish("client_left" if self.sent or self.slice > 1 else "not_started")
        answered = status is not None and 200 <= status < 300  # a 4xx or 500 is no mistake
        if answered and not self.used and self.route.key not in _WARNED:
            _WARNED.add(self.route.key)  # once per route: a seller's mistake, not a buyer's
            log.warning(
                "metered route %s answered without streaming through payment.stream.events(): "
                "no slice was sold and the first payment was %s (docs/protocol.md, "
                '"Metered streams")',
                self.route.key,
                outcome,
            )
        self.gate.streams.set_outcome(self.id, 1, outcome, self.payment.guarantee_id)

    def _finish(self, reason: str) -> None:
        """The stream ended: closed for payments; paid slices never started are refunded."""
        self.reason = reason
        _LOCAL.pop(self.id, None)
        stores = {self.gate.streams.store, *([self.gate.core.store] if self.gate.core else [])}
        if any(getattr(store, "writing_here", lambda: False)() for store in stores):
            # A body the client left, finalized by the garbage collector inside one of this
            # thread's own writes: its writes wait for that one on another thread.
            threading.Thread(target=self._close, args=(reason,), daemon=True).start()
            return
        self._close(reason)

    def _close(self, reason: str) -> None:
        try:
            streams = self.gate.streams
            streams.close(self.id, reason)
            for row in streams.slices(self.id):
                if row.slice > 1 and row.outcome == "paid":
                    self._charge(row.slice, delivered=False, row=row)
        except Exception:  # the records database is down: the reconciler's recovery applies
            log.exception("could not close metered stream %s", self.id)

    def _charge(self, slice_: int, *, delivered: bool, row: SliceRow | None = None) -> None:
        """Keep (and score) or void one later slice's guarantee, and complete its record."""
        streams = self.gate.streams
        held = self._ahead.pop(slice_, None)
        if held is not None:
            self.gate._holds.discard(held)
        if row is None:
            row = next((r for r in streams.slices(self.id) if r.slice == slice_), None)
        outcome = "delivered" if delivered else "refunded"
        if row is None or not streams.set_outcome(self.id, slice_, outcome):
            return
        payment = Payment(
            payer=self.payment.payer,
            amount=row.amount,
            asset=self.payment.asset,
            network=self.payment.network,
            pay_to=row.pay_to,
            guarantee_id=row.guarantee_id,
            request_id=None,
            tab_id=None,
            x402_version=2,
            guarantee_version=row.guarantee_version,
            route=self.route.key,
            record_id=row.record_id,
        )
        action: deliver.Action = ("void", 0) if not delivered else None
        if delivered and row.scored and row.guarantee_version == 2:
            action = ("score", 100)
        record: dict[str, Any] = {"status": "delivered" if delivered else "failed"}
        record.update(http_status=200, response_hash=None)
        if self.gate.config.settle == "after":  # settled at its pay URL: the record names it
            p, gid = self.payment, row.guarantee_id
            named = dict(success=True, payer=p.payer, transaction=gid, network=p.network)
            record["settle_result"] = named
        try:
            deliver._finish_io(self.gate, payment, action, outcome, record)
        except Exception:  # filed for the reconciler where it could be; the stream goes on
            log.exception("could not complete slice %d of stream %s", slice_, self.id)


#: The streams this process serves, by id: a payment taken here wakes its stream at once.
_LOCAL: weakref.WeakValueDictionary[str, MeteredStream] = weakref.WeakValueDictionary()


def opened(gate: Gate, route: Route, request: RequestView, state: Paid) -> Flow:
    """A metered route's request was paid: its stream, with slice 1 this payment."""
    p = state.payment
    stream_id = yield Call(gate.streams.open, (route.key, p.payer, _row(1, state)))
    p.stream = MeteredStream(gate, route, p, stream_id, request)


def endpoint(gate: Gate, request: RequestView) -> Flow:
    """``POST <prefix>/streams/<id>/<slice>`` pays a slice (402 first, like any paid route);
    ``DELETE <prefix>/streams/<id>`` stops the stream (its buyer does not want more)."""
    rest = request.path[len(gate._prefix) + len("/streams/") :]
    stream_id, _, number = rest.partition("/")
    method = request.method.upper()
    row = yield Call(gate.streams.get, (stream_id,))
    if row is None:
        return _refused("unknown_stream")
    if method == "DELETE" and not number:
        stopped = yield Call(gate.streams.close, (stream_id, "buyer_stopped"))
        _wake(stream_id)
        return Response.json(
            200, {"stream": stream_id, "stopped": bool(stopped)}, [("cache-control", "no-store")]
        )
    if not (number.isascii() and number.isdigit()) or len(number) > 9 or number[0] == "0":
        return _refused("unknown_stream")  # slices count from 1, each at one URL (no "02")
    if method != "POST":
        return error_response(
            405, "method_not_allowed", "pay for a slice with POST", [("allow", "POST")]
        )
    slice_, route = int(number), _route(gate, row.route)
    top = route.config.slices.max_slices if route and route.config.slices else None
    why = "max_slices" if top and slice_ > top else None
    why = why or refusal((row.payer, row.paid, row.state), slice_, None)
    if why is not None or route is None:
        return _refused(why or "unknown_stream")
    reqs = yield from _terms(gate, route, stream_id, request)
    if isinstance(reqs, Response):
        return reqs
    from .pay import paid

    state = yield from paid(gate, request, route, reqs, opens_stream=False)
    if not isinstance(state, Paid):
        return state  # the 402 (no payment, or a refused one), a 409, a 429, a 503
    p = state.payment
    if state.result is None:  # settle-after: this endpoint is where the slice is bought
        refused = yield from after.bought(gate, state)  # (and after_settle runs)
        if refused is not None:
            return refused
    added = (gate.streams.add_slice, stream_id, p.payer, _row(slice_, state))  # or given back
    why = yield Call(settle.or_abandon, (gate, state.result, p.pay_to, p.record_id, *added))
    if why is not None:  # another payer, or the stream ended meanwhile: nothing is charged
        refused = _refused(why)
        yield Call(settle.abandon, (gate, state.result, p.pay_to, p.record_id, refused.status))
        return refused
    local = _LOCAL.get(stream_id)
    if local is not None:  # held open until the slice is charged (see MeteredStream._ahead)
        local._ahead[slice_] = state
    _wake(stream_id)
    headers = yield from deliver.response_start(gate, state, 200, "no-store")
    body = {"stream": stream_id, "slice": slice_, "paid": True}
    return Response.json(200, body, [("cache-control", "no-store"), *headers])


def _terms(gate: Gate, route: Route, stream_id: str, request: RequestView) -> Flow:
    """A slice's requirements: the stream's own terms and request where this process serves
    it, else its first slice's (a repricing applies to new streams; headers choose nothing)."""
    local = _LOCAL.get(stream_id)
    try:
        reqs = yield from requirements(
            gate, local.route if local else route, local.request if local else request
        )
    except RequestFault as exc:  # the request's own fault (a field, its body): nothing charged
        return error_response(exc.status, exc.reason, exc.message)
    except Exception:  # a price or payTo callable failed: nothing to charge safely
        log.exception("could not price a slice of %s", route.key)  # the why: logged only
        return error_response(500, "pricing_failed", "could not price this slice")
    first = next((s for s in (yield Call(gate.streams.slices, (stream_id,))) if s.slice == 1), None)
    if first is not None:
        got = None if local or first.record_id is None else gate.records.get
        reqs = as_first(reqs, first, got and (yield Call(got, (first.record_id,))), local is None)
    return reqs or _refused("stream_terms_changed")


_WARNED: set[str] = set()  # metered routes seen not streaming (warned once per process)


def _wake(stream_id: str) -> None:
    """The stream, if this process serves it, looks at once (else within :data:`POLL`)."""
    local = _LOCAL.get(stream_id)
    if local is not None:
        local._paid.set()


def _row(slice_: int, state: Paid) -> SliceRow:
    p = state.payment
    return SliceRow(
        slice_,
        p.guarantee_id,
        p.record_id,
        p.amount,
        p.pay_to,
        p.guarantee_version,
        state.delivery_policy,
        "paid",
    )


def _route(gate: Gate, key: str) -> Route | None:
    """The metered route a stream was opened on (a table entry or a handler's marker)."""
    from .stages import _routes

    return next((r for r in _routes(gate) if r.key == key and r.config.slices is not None), None)


__all__ = ["MeteredStream", "Slices", "Streams", "endpoint", "opened", "sse"]
