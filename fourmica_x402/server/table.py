"""The service's paths (docs/protocol.md, "Endpoints") as data, and what runs beside them.

An adapter mounts each :class:`Path` on its framework's router and runs :func:`background`
for the app's lifetime (:mod:`fourmica_x402.adapters.service` does both for Starlette).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from . import admin, core_api, facilitator, guarantees, reads, signin
from . import sandbox as sandbox_api
from .base import Call, Reply, Result, tab_shape
from .context import Service
from .dashboard import dashboard
from .metrics import metrics

__all__ = ["PATHS", "Handler", "Path", "Reads", "background"]

Handler = Callable[[Service, Call], Result]


def _as_is(reply: Reply) -> Reply:
    return reply


class Path(NamedTuple):
    """One path of the service.

    ``blocking`` handlers touch the database: an adapter runs them in a worker thread, never
    on an event loop. ``timed`` paths record their latency (``/metrics`` is not timed, so
    scraping it does not skew the latencies it reports); every path answers a Core error the
    handler lets through as ``{"error": code, "message": text}``. ``sized`` paths refuse a body over
    :data:`~.base.MAX_BODY` with a 413; the others answer it in their protocol's shape (a
    settle's ``malformed_payment``). ``read`` handlers read across the whole history (the
    dashboard, the signals): they run on :class:`Reads`' own thread, never on the threads the
    payment calls use. ``refuse`` puts what the adapter answers for the path before or around
    its handler (a 413, a cross-site 403, a Core error) in the path's shape.
    """

    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET", "HEAD")
    blocking: bool = True
    timed: bool = True
    sized: bool = True
    read: bool = False
    refuse: Callable[[Reply], Reply] = _as_is


_POST = ("POST",)

_CORE_API = (
    Path("/core/public-params", core_api.public_params, blocking=False, refuse=tab_shape),
    Path("/core/payment-tabs", core_api.payment_tabs, _POST, refuse=tab_shape),
    Path("/core/guarantees", core_api.guarantees, _POST, refuse=tab_shape),
    Path("/core/tabs/{tab_id}/guarantees/{req_id}", core_api.guarantee, refuse=tab_shape),
    Path("/rpc", core_api.rpc, _POST, blocking=False, sized=False),
    # Sign-In with Ethereum, which the official TypeScript SDK makes at its Core API's root first
    Path("/auth/nonce", signin.nonce, _POST, blocking=False),
    Path("/auth/verify", signin.verify, _POST, blocking=False),
    Path("/auth/refresh", signin.refresh, _POST, blocking=False),
    Path("/auth/logout", signin.logout, _POST, blocking=False),
)

PATHS: tuple[Path, ...] = (
    Path("/", dashboard, read=True),
    Path("/dashboard", dashboard, read=True),
    # the facilitator API; what reads only configuration stays on the event loop
    Path("/supported", facilitator.supported, blocking=False),
    Path("/health", facilitator.health, blocking=False),
    # the tab calls and the Core API subset refuse as 4Mica's /tabs does (docs/protocol.md)
    Path("/tabs", facilitator.tabs, _POST, refuse=tab_shape),
    Path("/verify", facilitator.verify, _POST, sized=False),
    Path("/settle", facilitator.settle, _POST, sized=False),
    Path("/guarantees/{gid}/void", guarantees.void, _POST),
    Path("/guarantees/{gid}/validation", guarantees.validation, _POST),
    # the Core API subset, for the service's network and under /chains/{chain_id} for any
    *_CORE_API,
    *(p._replace(path="/chains/{chain_id}" + p.path) for p in _CORE_API),
    # the sandbox
    Path("/sandbox/deposit", sandbox_api.deposit, _POST),
    Path("/sandbox/withdraw", sandbox_api.withdraw, _POST),
    Path("/sandbox/cycles/close", sandbox_api.close_cycle, _POST),
    Path("/sandbox/debits/pay", sandbox_api.pay_debit, _POST),
    Path("/sandbox/credits/claim", sandbox_api.claim, _POST),
    Path("/sandbox/tick", sandbox_api.tick, _POST),
    Path("/sandbox/suspend", sandbox_api.suspend, _POST),
    # reads, metrics, admin
    Path("/api/positions", reads.positions, read=True),
    Path("/api/cycles", reads.cycles, read=True),
    Path("/api/cycles/{cycle_id}", reads.cycle, read=True),
    Path("/api/guarantees", reads.guarantees, read=True),
    Path("/api/events", reads.events, read=True),
    Path("/metrics", metrics, timed=False, read=True),
    Path("/admin/webhooks", admin.subscribe, _POST),
    Path("/admin/webhooks", admin.subscriptions, ("GET",)),
    Path("/admin/webhooks/deliveries", admin.deliveries),
    Path("/admin/webhooks/deliveries/{did}/redeliver", admin.redeliver, _POST),
    Path("/admin/webhooks/{sid}", admin.unsubscribe, ("DELETE",)),
    Path("/admin/webhooks/{sid}/redeliver", admin.redeliver_failed, _POST),
    Path("/admin/webhooks/{sid}/resume", admin.resume, _POST),
)


class _Run:
    """One read on :class:`Reads`' thread, and how many requests wait for it."""

    __slots__ = ("future", "started", "waiting")

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] | None = None
        self.started = False  # set on the read's thread as it begins
        self.waiting = 0


class Reads:
    """Where the open reads run: one thread of their own, so that however many arrive (the
    dashboard and ``/metrics`` scan the whole history, seconds on a large Core) the payment
    calls keep every thread they run on (docs/operations.md, "Monitoring signals").

    The same read asked while one is still queued joins it: it has not begun, so its answer
    is no older than the request (a write the client made before asking shows in it). Once
    begun, the next ask queues one more run, which everyone asking meanwhile shares. A queued
    read whose every client left is dropped before it begins."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None  # made on the first read
        self._queued: dict[Hashable, _Run] = {}
        self._closed = False

    async def run(self, key: Hashable, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:  # the app's lifespan ended: a straggler reads on a worker thread
            return await asyncio.to_thread(fn, *args)
        loop = asyncio.get_running_loop()
        run = self._queued.get(key)
        if run is None or run.started or run.future is None or run.future.get_loop() is not loop:
            run = self._queue(loop, key, fn, args)
        assert run.future is not None
        run.waiting += 1
        try:
            return await asyncio.shield(run.future)  # one client leaving stops no other's
        finally:
            run.waiting -= 1
            if run.waiting == 0 and not run.started:
                run.future.cancel()  # nobody waits for it: off the queue

    def _queue(
        self, loop: asyncio.AbstractEventLoop, key: Hashable, fn: Callable[..., Any], args: Any
    ) -> _Run:
        run = _Run()

        def begin() -> Any:
            run.started = True  # asks from now on queue a run of their own
            return fn(*args)

        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="fourmica-reads")
        run.future = loop.run_in_executor(self._pool, begin)
        self._queued[key] = run
        run.future.add_done_callback(lambda _: self._forget(key, run))
        return run

    def _forget(self, key: Hashable, run: _Run) -> None:
        if self._queued.get(key) is run:
            del self._queued[key]

    def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


@contextlib.asynccontextmanager
async def background(
    service: Service, tick_interval: float | None, reads: Reads | None = None
) -> AsyncIterator[None]:
    """The service's own work while it serves (on the running event loop): cycle and timeout
    ticks every ``tick_interval`` seconds (None: none), alert checks, webhook delivery; and,
    at the end, ``reads``' thread let go."""
    hooks = service.hooks
    loop, tasks = asyncio.get_running_loop(), []
    if tick_interval:
        tasks.append(loop.create_task(service.tick_forever(tick_interval)))
    if service.alert_checker is not None:
        tasks.append(loop.create_task(service.check_alerts_forever()))
    if hooks is not None:
        hooks.start()
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        if hooks is not None:
            await asyncio.to_thread(hooks.stop, 10.0)
        if reads is not None:
            reads.close()
