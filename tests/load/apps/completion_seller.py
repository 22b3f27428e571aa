"""The seller the completion-queue tests run under uvicorn, SIGKILLed with completions queued.

Env: SELLER_CORE (embedded Core database path), PAY_TO, SELLER_WINDOW (the gate's
``completion_window``, seconds), SELLER_V2 ("1": advertise the G-v2 delivery policy, else
G-v1 guarantees), SELLER_VALIDATION_TIMEOUT (the Core's, seconds), SELLER_SETTLE ("before",
the default, or "after"), SELLER_REPLAY ("1": ``idempotent_replay``), SELLER_SLEEP (seconds
the paid handler waits before answering; default 0).
"""

from __future__ import annotations

import asyncio
import os

from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fourmica_x402 import PaymentConfig
from fourmica_x402.core import Core, CoreConfig


async def premium(request: Request) -> JSONResponse:
    await asyncio.sleep(float(os.environ.get("SELLER_SLEEP", "0")))
    return JSONResponse({"guarantee": request.state.payment.guarantee_id})


async def free(request: Request) -> JSONResponse:
    return JSONResponse({"free": True})


core = Core(
    os.environ["SELLER_CORE"],
    config=CoreConfig(validation_timeout=float(os.environ["SELLER_VALIDATION_TIMEOUT"])),
)
config = PaymentConfig(
    pay_to=os.environ["PAY_TO"],
    routes={"GET /premium": "$0.01"},
    core=core,
    delivery_policy=os.environ.get("SELLER_V2") == "1",
    completion_window=float(os.environ["SELLER_WINDOW"]),
    settle=os.environ.get("SELLER_SETTLE", "before"),  # type: ignore[arg-type]
    idempotent_replay=os.environ.get("SELLER_REPLAY") == "1",
)
app = Starlette(
    routes=[Route("/premium", premium), Route("/free", free)],
    middleware=[Middleware(PaymentMiddleware, config=config)],
)
