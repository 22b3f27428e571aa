"""The gate: built once per app; decides, for each request, what happens to it.

:meth:`Gate.before` decides (docs/architecture.md, "A paid request" and "Which route is
priced"): the discovery listing and the gate's own endpoints answer; OPTIONS and anything the
framework will not route to a priced endpoint pass through; an ambiguous path near a priced
route is refused; otherwise the ``on_protected_request`` hook may grant, deny or answer, the
route is priced, and the request is challenged or its payment settled (:mod:`.pay`).
:meth:`Gate.response_start` and :meth:`Gate.finish` are :mod:`.deliver`'s; the rest here is
what adapters call at start-up.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..config import PaymentConfig
from ..core.store.deferred import exit_gracefully_on_sigterm
from ..errors import ConfigurationError, FourmicaError, Reason, Unavailable
from ..facilitator import Facilitator, LocalFacilitator
from ..jobs import Jobs
from ..records import Records
from ..routes import Endpoint, Route, RouteTable
from ..streams import Streams
from ..templates import RouterFailed, path_matcher, specificity
from ..wire import PAYMENT_SIGNATURE_HEADER, X_PAYMENT_HEADER
from . import deliver, discovery, drive, endpoints, guards, metered, nested, paths, prices, stages
from .background import Holds, Reconciler, recover, recover_apart, recover_unsettled
from .challenge import challenge, requirements
from .hooks import failure, protected
from .pay import paid, version_of
from .prices import Repricer
from .throttle import Throttle
from .types import (
    PASS,
    BodyTap,
    Flow,
    Paid,
    PassThrough,
    Payment,
    RequestFault,
    RequestView,
    Response,
    error_response,
)

if TYPE_CHECKING:
    from ..alerts import GateAlerts

log = logging.getLogger("fourmica_x402.gate")
#: A convertor's headers that would describe another body than the gate's answer.
_BODY_HEADERS = frozenset({"content-length", "content-type", "transfer-encoding"})


class Gate:
    """The seller's payment flow for one app. Build once per app (it holds the Core).

    The steps in the sibling modules are functions of the gate: they read its state
    (``config``, ``core``, ``facilitator``, ``records``, the throttle, the reconciler) when
    they run, never a copy, so a facilitator swapped on a live gate is the one used.
    """

    def __init__(self, config: PaymentConfig) -> None:
        self.config = config
        self.routes = RouteTable(
            config.routes,
            network=config.network,
            pay_to=config.pay_to,
            asset=config.asset,
            timeout=config.max_timeout_seconds,
        )
        self.core = None
        if config.facilitator is None:
            from ..core import Core

            core = config.core if not isinstance(config.core, str) else Core(config.core)
            self.core = core
            self.facilitator: Facilitator = LocalFacilitator(core)
        else:
            self.facilitator = config.facilitator
        records = config.records
        if records is None:
            if self.core is None:
                raise FourmicaError("with a remote facilitator, set records= to a database URL")
            records = Records(self.core.store)
        self.records = records if isinstance(records, Records) else Records(records)
        #: Run-time prices, shared through the records' database (docs/operations.md). Opened
        #: with the jobs' and streams' tables before the recovery below writes: tables a newer
        #: release migrated are refused first (docs/operations.md, "The embedded Core").
        self.prices = Repricer(self)
        if any(route.config.stage is not None for route in self.routes.routes):
            self.jobs  # staged work: its tables made now, not on a request  # noqa: B018
        if any(route.config.slices is not None for route in self.routes.routes):
            self.streams  # noqa: B018
        self._throttle = Throttle(config.throttle_failures, config.throttle_window)
        self.tap = lambda: BodyTap(config.idempotent_replay, config.replay_body_limit)
        if config.completion_window is not None:  # the queue of the records' database
            self.records.store.deferred.window = config.completion_window
            exit_gracefully_on_sigterm()  # a development server's SIGTERM commits it too
        self._reconciler = Reconciler(self)
        self._holds = Holds(self)  # responses outlasting the validation timeout (embedded)
        if self._shared:
            recover(self)  # what a process that died mid-completion left
        else:
            recover_unsettled(self)  # settle-after records a dead process left unsettled
            recover_apart(self)  # and the paid ones it left with their delivery unknown
        if self.records.next_followup_due() is not None:
            self._reconciler.kick()  # a previous process left voids to do
        #: Alerts (docs/operations.md, "Alerts"): their hook rides on this gate's ``config``.
        self.alerts: GateAlerts | None = None
        if config.alerts is not None:
            from ..alerts import GateAlerts

            self.alerts = GateAlerts(self, config.alerts)
            self.config = self.alerts.config
        self._prefix = config.prefix
        self._tab_path = (
            urlsplit(config.tab_endpoint).path if config.tab_endpoint else config.prefix + "/tab"
        )
        from ..tabs import TabGuard

        #: The tab endpoint's recipients and limits on new tabs (docs/operations.md).
        self._tabs = TabGuard(config, self.routes)
        #: The app's routes as its adapter found them at start-up; None: an app without a
        #: router (the discovery listing then shows the route table).
        self.endpoints: list[Endpoint] | None = None

    @functools.cached_property
    def jobs(self) -> Jobs:
        """Staged work's jobs, in the records' database (docs/protocol.md, "Staged work")."""
        return Jobs(self.records.store)

    @functools.cached_property
    def streams(self) -> Streams:
        """Metered streams, in the records' database (docs/protocol.md, "Metered streams")."""
        return Streams(self.records.store)

    @property
    def _shared(self) -> bool:
        """Records in the embedded Core's own database: a payment's record is written in the
        acceptance's transaction and completed in the resolution's, which rides along with a
        later write (docs/architecture.md, "Completion off the request path")."""
        return (
            self.core is not None
            and isinstance(self.facilitator, LocalFacilitator)
            and self.facilitator.core is self.core
            and self.records.store is self.core.store
        )

    # -- what adapters call ------------------------------------------------------------------

    #: The drivers of a flow (:mod:`.drive`).
    run_sync = staticmethod(drive.run_sync)
    run_async = staticmethod(drive.run_async)
    #: An error answer other than a challenge (adapters render configuration errors with it).
    _error_response = staticmethod(error_response)

    def add_route(self, key: str, value: Any) -> Route:
        """Price one more route (``key`` and ``value`` as in the route table)."""
        return self.routes.add(key, value)

    def check_routes(self, found: Iterable[Endpoint], served_by: Any = None) -> None:
        """Fail (ConfigurationError) when a table entry names no route of the app.

        ``found``: every route the framework knows. Adapters call it at start-up; a typo
        would otherwise leave a route free. ``served_by``: see :func:`.guards.partly_priced`.
        """
        found = list(found)
        missing = self.routes.unmatched(found)
        if missing:
            known = sorted({each.template for each in found})
            shown = ", ".join(known[:12]) + (", …" if len(known) > 12 else "")
            log.error("the app's routes: %s", shown or "none")  # not in the error: a client
            raise ConfigurationError(  # may be answered it (500 configuration_error)
                f"priced route(s) {', '.join(repr(m) for m in missing)} name no route of this app "
                "(its routes are in the log); a route-table entry names a route template the "
                "framework knows, e.g. 'GET /items/:id' for /items/{id}"
            )
        self.prices.shadowed = frozenset(self.routes.shadowed(found))
        for key in sorted(self.prices.shadowed):
            log.warning(
                "the route table's %r names only handlers that carry their own price "
                "(@paid / Paid), which wins: that entry, and a reprice of it, never applies",
                key,
            )
        for priced, free in guards.partly_priced(self.routes, found, served_by):
            log.warning(
                "the route table prices %s but not %s, which the app serves with the same "
                "handler: buyers reach it free there; price both, or mark the handler "
                "(@paid / Paid), unless %s is meant to be free",
                priced,
                free,
                free,
            )

    def refuses_websocket(self, request: RequestView) -> bool:
        """A WebSocket on a priced route: refused (no paid-WebSocket mode exists yet).

        ``request`` describes the handshake (method GET); the gate's own paths serve none,
        so one there reaches the app as any other does."""
        if request.resolve is not None:
            try:
                endpoint = request.resolve()
            except RouterFailed as exc:  # as _unroutable: a convertor's answer is the app's
                return not exc.answer or self._unroutable(exc, "GET", request.path) is not PASS
            return endpoint is not None and guards.sells_socket(self.routes, endpoint)
        return self.routes.match("GET", request.path) is not None

    @staticmethod
    def marker_refusal(
        payment: Payment | None, key: Any, method: str, methods: frozenset[str] | None
    ) -> tuple[int, str, str] | None:
        """Why a per-handler marker must not run its handler: ``(status, reason, message)``,
        or None when ``payment`` was made for this request on this route (``key``).

        A method the marker does not price is answered 405 (never run unpaid); a missing or
        foreign payment fails closed (503) with a log line naming the cause.
        """
        alias = "GET" if method.upper() == "HEAD" else method.upper()
        if methods is not None and alias not in methods:
            return 405, "method_not_allowed", "method not allowed"
        if payment is None:
            cause = "no payment middleware ran for it, or it did not price this route"
        elif getattr(payment.endpoint, "key", None) is not key:
            cause = f"the {_kind(payment)} was made for another route ({payment.route})"
        elif not payment.by_marker:  # the gate did not see the marker: never sold at the table's
            cause = f"the {_kind(payment)} was made at the route table's price ({payment.route})"
        else:
            return None
        log.error("a paid handler was reached without a payment for it: %s", cause)
        return 503, Reason.PAYMENT_NOT_ENFORCED, "payments are not enforced here; not served"

    def flush(self) -> None:
        """Commit the completions this process queued (docs/architecture.md, "Completion off
        the request path"); a graceful stop calls it."""
        self.records.store.deferred.drain()
        if self.core is not None and self.core.store is not self.records.store:
            self.core.store.deferred.drain()

    def on_shutdown(self, send: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Any]:
        """An ASGI lifespan ``send`` that flushes the queue before the shutdown completes
        (a server may end the process by signal right after it, skipping ``atexit``)."""

        async def wrapped(message: Any) -> None:
            if message.get("type") == "lifespan.shutdown.complete":
                try:
                    self.flush()  # no request is served any more: the loop may wait for it
                except Unavailable as exc:  # the exit tries again (docs/operations.md)
                    log.error("committing the queued completions at shutdown failed: %s", exc)
            await send(message)

        return wrapped

    def reconcile(self, now: float | None = None) -> dict[str, int]:
        """Do the follow-ups that are due (voids, refunds, delivery scores): see
        :meth:`.background.Reconciler.reconcile`. Runs by itself in the background;
        callable by hand (a cron job, a test)."""
        return self._reconciler.reconcile(now)

    # -- the flow ------------------------------------------------------------------------------

    def before(self, request: RequestView, outer: Payment | None = None) -> Flow:
        """Decide: pass through, answer (402, 4xx, 503, our endpoints), or run the paid handler.

        Returns :data:`PASS`, a :class:`Response`, or the state to hand to the later steps.
        ``outer``: the payment another gate settled for this request (:mod:`.nested`).
        """
        method = request.method.upper()
        outer = None if getattr(outer, "granted", False) else outer  # a grant pays for nothing
        self.prices.poll()  # prices another process set: at most one read per price_poll
        if request.path == discovery.PATH and self.config.discovery:
            return (yield from discovery.listing(self, request))
        if request.path == self._tab_path:
            return (yield from _fail_closed(endpoints.tab(self, request)))
        if request.path == self._prefix + "/admin/prices":
            return (yield from _fail_closed(prices.admin(self, request)))
        if request.path.startswith(self._prefix + "/streams/"):
            return (yield from _fail_closed(metered.endpoint(self, request)))
        if self.core is not None and (
            request.path == self._prefix or request.path.startswith(self._prefix + "/")
        ):
            return (yield from _fail_closed(endpoints.core_api(self, request)))
        try:  # the route the framework resolved, for a router's app (docs/architecture.md)
            endpoint = request.resolve() if request.resolve is not None else None
        except RouterFailed as exc:  # e.g. Starlette's int convertor on a 5 000-digit segment
            return self._unroutable(exc, method, request.path)
        if method == "OPTIONS":  # never priced, nor run by a view priced for other methods
            if request.resolve is None:  # no router: any view may serve it, as one for any method
                single = re.sub("//+", "/", request.path)  # a file server reads //x as /x
                found = [e for e in self.routes.routes if e.regex.match(single)]
                return _options(None, frozenset(e.method for e in found))
            if endpoint is None or endpoint.marker is not None:  # a marker refuses it itself
                return PASS
            return _options(endpoint, self.routes.other_methods(endpoint))
        if request.resolve is not None:  # price what the framework's router resolved
            route = None if endpoint is None else self.routes.for_endpoint(method, endpoint)
            if (route is not None and paths.ambiguous(request)) or paths.reaches_priced(
                self.routes, method, request, endpoint, self.endpoints or (), route
            ):
                return error_response(400, "ambiguous_path", "ambiguous request path")
            if route is None and endpoint is not None and endpoint.methods is None:
                refused = _unpriced_method(self.routes.other_methods(endpoint))
                if refused is not None:  # a view serving any method, priced for some
                    return refused
        else:  # a router-less app: its raw path; a file server reads //x as /x
            route, path = self.routes.match(method, request.path), request.path
            root = unquote(request.root)  # under a root path, routers read the path their way:
            below = "/" + path.split(root, 1)[-1].lstrip("/") if root and root in path else path
            readings = (below, root + path) if root else ()  # cut at it (Litestar), or whole
            found = [r for p in readings if (r := self.routes.match(method, p)) is not None]
            rank = (lambda r: specificity(r.method, r.pattern)) if route else None  # (Falcon)
            others = {
                id(r): r for r in found if r is not route and (not rank or rank(r) < rank(route))
            }
            if len(others) > (route is None):  # two prices: refused; one: the one reading it
                return error_response(400, "ambiguous_path", "ambiguous request path")
            route = next(iter(others.values()), route)
            folded = (
                "//" in path and self.routes.match(method, re.sub("//+", "/", path)) is not route
            )
            if (folded or paths.ambiguous(request)) and (
                route is not None or paths.matches_variant(self.routes, method, request)
            ):
                return error_response(400, "ambiguous_path", "ambiguous request path")
        if route is None:
            return PASS
        decided = yield from protected(self, request, route, endpoint)  # on_protected_request
        if decided is not None:
            return decided
        if route.config.stage is not None:  # staged work: admitted before it is priced
            # a database that is down is a 503 with its code, as once the payment is read
            refused = yield from _fail_closed(stages.admit(self, route.config.stage, request))
            if refused is not None:
                return refused
        try:
            reqs = yield from requirements(self, route, request)
        except RequestFault as exc:  # the request's own fault (units, a field, its body)
            return error_response(exc.status, exc.reason, exc.message)
        except Exception:  # a price or payTo callable failed: nothing to charge safely
            log.exception("could not price %s", route.key)  # the why is the seller's: logged
            return error_response(500, "pricing_failed", "could not price this request")
        if outer is not None:  # another gate settled it: it runs on this gate's terms only
            return nested.judged(route, reqs, outer)
        if method == "HEAD" and (
            request.header_values(PAYMENT_SIGNATURE_HEADER)
            or request.header_values(X_PAYMENT_HEADER)
        ):  # a response without a body is never charged: keep the payment for the GET
            return challenge(
                self, request, route, reqs, Reason.HEAD_NOT_CHARGED, version=version_of(request)
            )
        try:
            return (yield from paid(self, request, route, reqs, endpoint))
        except Unavailable as exc:
            yield from failure(self, request, exc)
            return error_response(503, exc.reason, exc.message, exc.headers())
        except FourmicaError as exc:  # e.g. a remote facilitator's 4xx in a shape of its own
            yield from failure(self, request, exc)
            if exc.status < 500:
                return challenge(
                    self, request, route, reqs, exc.reason, version=version_of(request)
                )
            return error_response(503, exc.reason, exc.message)

    def _unroutable(self, exc: RouterFailed, method: str, path: str) -> Response | object:
        """The app's router raised while the gate asked it for the route. Its own error: 400
        (it would raise again, before any handler). A convertor's HTTP answer: the app gives
        it, unless a table entry may price this path; then the gate gives it (passed on, the
        router asks the convertor again, and one reading context could let the route through
        unpaid; a marker refuses that itself)."""
        if not exc.answer:
            log.info("the app's router failed on this path: %.200r", exc.__cause__)
            return error_response(400, "unroutable_path", "the app's router cannot read this path")
        alias = "GET" if method == "HEAD" else method
        paths = {"/" + p.lstrip("/") for p in (path, exc.path or path)}  # a root_path's or not
        if not any(
            route.method in ("*", method, alias) and path_matcher(route.pattern).match(p)
            for route in self.routes.routes
            for p in paths
        ):
            return PASS
        kept = [(k, v) for k, v in exc.headers if k.lower() not in _BODY_HEADERS]
        return error_response(exc.status, "unroutable_path", str(exc)[:200], kept)

    def response_start(self, state: Paid, status: int, cache_control: str | None = None) -> Flow:
        """Headers to add when the handler's response starts, or a replacement response
        (settle-after mode): see :func:`.deliver.response_start`."""
        return deliver.response_start(self, state, status, cache_control)

    def finish(
        self,
        state: Paid,
        status: int | None,
        body_hash: str | None,
        error: BaseException | None = None,
        body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
        request_body: str | None = None,
    ) -> Flow:
        """After the response went out: delivery marker, validation score or refund
        (:func:`.deliver.finish`). ``request_body``: the SHA-256 of the request body the
        handler read whole, if it did."""
        return deliver.finish(self, state, status, body_hash, error, body, headers, request_body)


def _kind(payment: Payment) -> str:
    return "on_protected_request grant" if payment.granted else "payment"


def _fail_closed(flow: Flow) -> Flow:
    """One of the gate's own endpoints: a database or facilitator that is down is a 503 with
    its code (the buyer tries again later), never a 500."""
    try:
        return (yield from flow)
    except Unavailable as exc:
        return error_response(503, exc.reason, exc.message, exc.headers())


def _unpriced_method(priced: frozenset[str]) -> Response | None:
    """405 for a method the table does not price on a view that serves every method and is
    priced for some (docs/architecture.md, "Which route is priced"); None when none is."""
    if not priced or "*" in priced:
        return None
    return error_response(405, "method_not_allowed", "method not allowed", [_allow(priced)])


def _options(endpoint: Endpoint | None, priced: frozenset[str]) -> Response | PassThrough:
    """OPTIONS on a view the table prices: answered here (200, ``Allow``) when the view itself
    would serve it (it serves any method, or lists OPTIONS beside a priced one; an app without
    a router: ``endpoint`` None, any view may), so that it never runs unpaid; else it goes on
    (the framework answers it, or a view of its own)."""
    served = None if endpoint is None else endpoint.methods
    if served is None:
        return Response(200, [_allow(priced), ("content-length", "0")]) if priced else PASS
    if "OPTIONS" in served and priced and ("*" in priced or priced & (served - {"OPTIONS"})):
        return Response(200, [("allow", ", ".join(sorted(served))), ("content-length", "0")])
    return PASS


def _allow(priced: frozenset[str]) -> tuple[str, str]:
    """``Allow`` for a view that serves any method: the priced ones (HEAD with GET), OPTIONS;
    every method when ``*`` prices them all."""
    if "*" in priced:
        priced = priced | frozenset(discovery.METHODS)
    methods = priced - {"*"} | ({"HEAD"} if "GET" in priced else set()) | {"OPTIONS"}
    return "allow", ", ".join(sorted(methods))
