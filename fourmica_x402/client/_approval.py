"""An approval callback under the async transport (docs/buyer.md): a sync one (a person at a
prompt) is asked in a worker thread, so the agent's other calls go on, and about one payment
at a time, so that an answer typed for one prompt never approves another payment."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any

from .policy import ApprovalRequest

__all__ = ["approval"]

_ASKING = threading.Lock()


def _one_at_a_time(approve: Callable[[ApprovalRequest], Any], request: ApprovalRequest) -> Any:
    with _ASKING:
        return approve(request)


async def approval(approve: Callable[[ApprovalRequest], Any] | None, request: Any) -> Any:
    """What ``approve`` answers for ``request`` (False without a callback)."""
    if approve is None:
        return False
    answer = await asyncio.to_thread(_one_at_a_time, approve, request)
    return await answer if inspect.isawaitable(answer) else answer
