"""The two drivers of a flow, and where the embedded Core's writes run.

The gate's flow is written once as generators that *yield* the I/O they need as
:class:`~.types.Call` objects and receive the results back (the pattern of httpx's
``auth_flow``; docs/architecture.md, "A paid request"). :func:`run_sync` performs each call
inline (WSGI, sync Django); :func:`run_async` on an event loop (ASGI, async Django), sending
blocking calls to a worker thread. An exception raised by a call is thrown back into the flow,
which decides what it means; on the event loop a cancellation is too (the task of a request
whose client left), so the flow can void what it was paid for before the task ends.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..core.store import WouldBlock
from .types import Flow

T = TypeVar("T")

#: Times the event loop tries the embedded Core's write itself, waiting (without blocking)
#: for this process's other writers in between, before handing it to a worker thread.
LOOP_TRIES = 3


def run_sync(flow: Flow) -> Any:
    """Drive a flow with blocking I/O (WSGI, sync Django)."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = flow.throw(error) if error is not None else flow.send(result)
        except StopIteration as stop:
            return stop.value
        error = None
        try:
            result = call.fn(*call.args)
            if inspect.isawaitable(result):
                result = _run_coroutine(result)
        except Exception as exc:  # handed back to the flow, which decides
            result, error = None, exc


async def run_async(flow: Flow) -> Any:
    """Drive a flow on an event loop (ASGI, async Django)."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = flow.throw(error) if error is not None else flow.send(result)
        except StopIteration as stop:
            return stop.value
        error = None
        try:
            if call.afn is not None:
                result = await call.afn(*call.args)
            elif call.blocking:
                result = await asyncio.to_thread(call.fn, *call.args)
            else:
                result = call.fn(*call.args)
                if inspect.isawaitable(result):
                    result = await result
        except BaseException as exc:  # a cancellation too: the flow settles its payment first
            result, error = None, exc


async def local_write(
    store: Any | None, fn: Callable[..., T], *args: Any, late: Callable[[T], None] | None = None
) -> T:
    """``fn(*args)`` for the embedded Core, on the event loop when it need not wait.

    ``store``: the Core's store when the records live in its database (else None: always a
    worker thread). ``fn(*args, nowait=True)`` is tried on the loop first; this process's
    other writer is awaited without blocking, up to :data:`LOOP_TRIES` times. Anything else —
    another process's lock, or any error, after which nothing was committed — sends the work
    to a worker thread, where waiting is harmless and failures are handled
    (docs/architecture.md, "The Core's transactions").

    ``late(result)``: called (in a worker thread) with what the thread committed when the
    caller was cancelled before it got the result — a cancelled await does not stop a thread.
    """
    if store is not None:
        wait = getattr(store, "wait_writable", None)
        for _ in range(LOOP_TRIES):
            try:
                return fn(*args, nowait=True)
            except WouldBlock as exc:
                if not exc.local or wait is None:
                    break
                await wait()
            except Exception:  # rolled back: the thread path redoes and handles it
                break
    if late is None:
        return await asyncio.to_thread(fn, *args)
    lock, state = threading.Lock(), dict[str, Any](abandoned=False, done=False)

    @functools.wraps(fn)  # the work, as the thread pool and logs name it
    def run() -> T:
        result = fn(*args)
        with lock:
            state["done"], state["result"], abandoned = True, result, state["abandoned"]
        if abandoned:
            late(result)
        return result

    try:
        return await asyncio.to_thread(run)
    except asyncio.CancelledError:  # the thread goes on; whatever it commits is handed to late
        with lock:
            state["abandoned"], done = True, state["done"]
        if done:  # finished, but its answer never reached us
            asyncio.get_running_loop().run_in_executor(None, late, state["result"])
        raise


def _run_coroutine(awaitable: Any) -> Any:
    async def runner() -> Any:
        return await awaitable

    return asyncio.run(runner())
