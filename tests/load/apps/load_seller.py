"""The seller the load tests run under ``uvicorn --workers 2`` (one module, configured by env).

Env: LOAD_CORE (embedded Core database URL) or LOAD_FACILITATOR (a ``fourmica-x402 serve``
URL) with LOAD_RECORDS (records database URL) and LOAD_PORT (to advertise the tab endpoint);
LOAD_COUNTER (a file: one line per handler run); PAY_TO.
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

COUNTER = os.environ["LOAD_COUNTER"]


async def free(request: Request) -> JSONResponse:
    return JSONResponse({"free": True})


async def premium(request: Request) -> JSONResponse:
    payment = request.state.payment
    line = f"{os.getpid()} {payment.payer} {payment.guarantee_id}\n".encode()
    fd = os.open(COUNTER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one O_APPEND write per run: atomic across the workers
        os.write(fd, line)
    finally:
        os.close(fd)
    return JSONResponse({"payer": payment.payer, "guarantee": payment.guarantee_id})


common = dict(
    pay_to=os.environ["PAY_TO"],
    network="eip155:84532",
    routes={"GET /premium": "$0.01"},
    # Every buyer shares 127.0.0.1: one buyer's refusals must not throttle the others
    # (the real default of 20 per minute applies; this once caught a per-address bug).
    throttle_failures=int(os.environ.get("LOAD_THROTTLE", "20")),
)
if os.environ.get("LOAD_FACILITATOR"):
    import asyncio

    from fourmica_x402.facilitator import HttpFacilitator
    from fourmica_x402.gate import settle

    class Facilitator(HttpFacilitator):
        """LOAD_SETTLE_LATE: the settle's answer reaches the gate that many seconds late (the
        test kills the seller meanwhile)."""

        async def asettle(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            result = await super().asettle(*args, **kwargs)
            await asyncio.sleep(float(os.environ.get("LOAD_SETTLE_LATE", "0")))
            return result

    # LOAD_MARK_WAIT: how long a settle's mark waits before it is voided as in doubt.
    settle.SETTLE_MARK_WAIT = float(os.environ.get("LOAD_MARK_WAIT", settle.SETTLE_MARK_WAIT))
    timeout = float(os.environ.get("LOAD_FACILITATOR_TIMEOUT", "30"))
    config = PaymentConfig(
        facilitator=Facilitator(os.environ["LOAD_FACILITATOR"], timeout=timeout),
        records=os.environ["LOAD_RECORDS"],
        tab_endpoint=f"http://127.0.0.1:{os.environ['LOAD_PORT']}/x402/tab",
        **common,  # type: ignore[arg-type]
    )
else:
    config = PaymentConfig(core=os.environ["LOAD_CORE"], **common)  # type: ignore[arg-type]

app = Starlette(
    routes=[Route("/free", free), Route("/premium", premium)],
    middleware=[Middleware(PaymentMiddleware, config=config)],
)
