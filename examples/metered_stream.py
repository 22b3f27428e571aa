"""Metered streams: a live transcript sold per slice of 3 events.

A Starlette seller on an embedded Core (a SQLite file) sells ``GET /transcript`` as server-sent
events at $0.002 per slice of 3 lines. The request pays slice 1; before each later slice the
seller sends a ``payment-required`` event and waits for that slice's payment at its pay URL; the
stream ends with an ``end`` event saying why.

A buyer agent (the buyer client, ``AsyncPaidStream``) listens twice:

1. with a task budget of $0.01: it pays slices 1 to 4 (12 lines), then the transcript ends
   (``complete``) after line 10;
2. with a task budget of $0.004: it pays two slices (6 lines); the third is refused by its
   policy, so it stops the stream, which ends cleanly (``buyer_stopped``) — no line of the
   unpaid slice was sent.

It prints the lines, why each stream ended and the money: what the buyer's collateral locked is
exactly the slices it was sent ($0.008 + $0.004).

Run it:   python examples/metered_stream.py
Needs:    pip install "fourmica-x402[server]"
Env:      METERED_STREAM_DB: a database URL or a SQLite file (default: one in a temporary
          directory, removed at the end); a database used before is fine

The seller runs in this process on 127.0.0.1 (a free port), under uvicorn. Exit code 0 only if
the money adds up and the Core's audit passes. Keys are throwaway TEST keys; never fund them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from fourmica_x402 import PaymentConfig, Slices
from fourmica_x402.client import AsyncPaidStream, AsyncPaymentTransport, SpendingPolicy
from fourmica_x402.core import Core
from fourmica_x402.errors import BudgetExhausted
from fourmica_x402.guarantee import address_of
from fourmica_x402.networks import default_asset, format_amount
from fourmica_x402.testing import TEST_KEYS

NETWORK = "eip155:84532"  # Base Sepolia, USDC
USDC = default_asset(NETWORK)
# Throwaway TEST keys (publicly known Anvil accounts): never fund them.
SELLER = address_of(TEST_KEYS[1])
BUYER_KEY = TEST_KEYS[3]
LINES = 10


def seller_app(core: Core) -> Starlette:
    async def transcript(request: Request) -> StreamingResponse:
        async def lines() -> AsyncIterator[dict[str, object]]:
            for n in range(1, LINES + 1):
                await asyncio.sleep(0.01)  # the speaker talks
                yield {"line": n, "text": f"line {n} of the keynote"}

        stream = request.state.payment.stream  # sells the source's events slice by slice
        return StreamingResponse(stream.events(lines()), media_type="text/event-stream")

    slices = Slices(units=3, pay_timeout=10)
    routes = {"GET /transcript": {"price": "$0.002", "slices": slices, "description": "Live"}}
    config = PaymentConfig(pay_to=SELLER, network=NETWORK, core=core, routes=routes)
    return Starlette(
        routes=[Route("/transcript", transcript)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1, a free port; stopped on the way out."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


async def listen(url: str, policy: SpendingPolicy, budget: str) -> AsyncPaidStream:
    print(f"listening (task budget {budget})")
    transport = AsyncPaymentTransport(BUYER_KEY, policy=policy)
    async with httpx.AsyncClient(transport=transport, base_url=url, timeout=30) as client:
        stream = AsyncPaidStream(client, "GET", "/transcript")
        try:
            with policy.task(f"listen:{budget}", budget=budget):
                async for event in stream:
                    print(f"  {event.json()['text']}")
        except BudgetExhausted as exc:
            print(f"  the policy refused slice {stream.slices + 1}: {exc.message}")
    print(f"  ended: {stream.ended}, slices paid: {stream.slices}")
    return stream


async def run(db: str) -> int:
    core = Core(db)
    try:
        buyer = address_of(BUYER_KEY)
        before = int(core.position(buyer, network=NETWORK).locked)  # a database used before
        core.deposit(buyer, 1_000_000, network=NETWORK)  # $1 of collateral
        policy = SpendingPolicy()
        with serving(seller_app(core)) as url:
            whole = await listen(url, policy, "$0.01")
            short = await listen(url, policy, "$0.004")
        locked = int(core.position(buyer, network=NETWORK).locked) - before  # by this run
        print(f"buyer's collateral locked: {format_amount(locked, USDC)} (slices sent: 4 + 2)")
        problems = core.audit()
        print("audit:", "ok" if not problems else "; ".join(problems))
        ended = (whole.ended, whole.slices, short.ended, short.slices)
        ok = ended == ("complete", 4, "buyer_stopped", 2) and locked == 12_000 and not problems
        return 0 if ok else 1
    finally:
        core.close()


def main() -> int:
    configured = os.environ.get("METERED_STREAM_DB")
    scratch = None if configured else tempfile.mkdtemp(prefix="metered-stream-")
    path = Path(scratch or ".") / "core.db"
    # a database URL (as FOURMICA_X402_DB takes), or a SQLite file's path
    db = configured if configured and "://" in configured else f"sqlite:///{configured or path}"
    try:
        return asyncio.run(run(db))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
