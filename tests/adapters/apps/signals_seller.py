"""A seller the signals tests run under uvicorn, several processes on one database.

Env: SIGNALS_CORE (the embedded Core's database: a SQLite path or a PostgreSQL URL), PAY_TO.
Its ``/x402/metrics`` token comes from FOURMICA_X402_METRICS_TOKEN; it counts its refusals.
"""

from __future__ import annotations

import os

from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fourmica_x402 import PaymentConfig
from fourmica_x402.signals import RefusalCounter


async def premium(request: Request) -> JSONResponse:
    return JSONResponse({"guarantee": request.state.payment.guarantee_id})


async def free(request: Request) -> JSONResponse:
    return JSONResponse({"free": True})


config = PaymentConfig(
    pay_to=os.environ["PAY_TO"],
    routes={"GET /premium": "$0.01"},
    core=os.environ["SIGNALS_CORE"],
    delivery_policy=False,  # G-v1: payable at once, netted when the cycle closes
    on_failure=RefusalCounter(),
)
app = Starlette(
    routes=[Route("/premium", premium), Route("/free", free)],
    middleware=[Middleware(PaymentMiddleware, config=config)],
)
