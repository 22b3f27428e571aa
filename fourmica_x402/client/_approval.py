"""An approval callback under the async transport (docs/buyer.md): a sync one (a person at a
prompt) is asked in a worker thread, so the agent's other calls go on, and about one payment
at a time, so that an answer typed for one prompt never approves another payment. The sync
transports, called from many threads, ask one question at a time as well."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .policy import ApprovalRequest

__all__ = ["answered", "approval", "one_at_a_time"]

_ASKING = threading.RLock()  # re-entered by a callback that itself pays and asks
#: Set while a callback answers: a question it causes (it pays, through any transport, in this
#: thread or in one its context went to: ``asyncio.run``, ``asyncio.to_thread``) is asked
#: without waiting for the lock its own question holds.
_ANSWERING: contextvars.ContextVar[bool] = contextvars.ContextVar("_ANSWERING", default=False)


def one_at_a_time(
    approve: Callable[[ApprovalRequest], Any],
    request: ApprovalRequest,
    resolve: Callable[[Any], Any] = lambda verdict: verdict,
) -> Any:
    """``approve``'s answer about ``request`` (``resolve``: how its verdict is waited for),
    while no other thread of the process asks: the sync transports called from a pool of
    threads ask one question at a time too."""
    if _ANSWERING.get():
        return resolve(approve(request))
    with _ASKING:
        token = _ANSWERING.set(True)
        try:
            return resolve(approve(request))
        finally:
            _ANSWERING.reset(token)


def answered(approve: Callable[[ApprovalRequest], Any], request: ApprovalRequest) -> Any:
    """``approve``'s verdict about ``request`` under a sync transport, one question at a time."""
    return one_at_a_time(approve, request, _resolve)


def _resolve(verdict: Any) -> Any:
    """An approval callback's verdict; an awaitable one is run to its end (no loop of ours)."""
    if not inspect.isawaitable(verdict):
        return verdict
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(verdict))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a sync client inside a loop
        return pool.submit(contextvars.copy_context().run, asyncio.run, _await(verdict)).result()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def approval(approve: Callable[[ApprovalRequest], Any] | None, request: Any) -> Any:
    """What ``approve`` answers for ``request`` (False without a callback)."""
    if approve is None:
        return False
    answer = await asyncio.to_thread(one_at_a_time, approve, request)
    return await answer if inspect.isawaitable(answer) else answer
