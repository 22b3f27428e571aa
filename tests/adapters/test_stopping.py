"""A server's SIGTERM (uvicorn's, gunicorn's handler) marks the process as stopping: each paid
response that ends commits the completion queue before it returns (docs/operations.md,
"Stopping and crashes"). On an event loop that commit waited in the loop's thread: while the
database was locked by another worker, every other request of the process stood still.

A real process (a signal handler is per process): a real Core on a SQLite file, the ASGI
middleware on Starlette, driven by httpx on the process's own event loop; every wait bounded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILD = """
import asyncio, os, signal, sqlite3, sys, threading, time
import httpx
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from fourmica_x402 import PaymentConfig
from fourmica_x402.adapters.asgi import PaymentMiddleware
from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

db = sys.argv[1]
signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the server's own handler
core = Core("sqlite:///" + db)
buyer = TestBuyer.new()
core.deposit(buyer.address, 10**7, network=NETWORK)
released = threading.Event()


async def premium(request):
    # another worker of the seller writes for 1.5 s, from the handler on
    holder = sqlite3.connect(db, timeout=10, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")

    def release():
        time.sleep(1.5)
        holder.execute("COMMIT")
        released.set()

    threading.Thread(target=release).start()
    return JSONResponse({"ok": True})


config = PaymentConfig(
    pay_to=TestBuyer.new().address,
    core=core,
    network=NETWORK,
    routes={"GET /premium": "$0.01"},
    completion_window=30.0,
)
app = PaymentMiddleware(Starlette(routes=[Route("/premium", premium)]), config)


async def main():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        offer = decode_payment_required((await c.get("/premium")).headers["payment-required"])
        offer = offer.accepts[0]
        asked = {"x402Version": 2, "userAddress": buyer.address}
        asked["paymentRequirements"] = offer.to_dict()
        tab = (await c.post(offer.extra["tabEndpoint"], json=asked)).json()
        name, value = payment_header(buyer, offer, tab)
        os.kill(os.getpid(), signal.SIGTERM)  # the server is told to stop
        gaps = []

        async def tick():
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.02)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.1)
        answer = await c.get("/premium", headers={name: value})
        await asyncio.sleep(0.1)  # the ticker's late tick is counted
        ticker.cancel()
        with sqlite3.connect(db) as conn:
            status = conn.execute("SELECT status FROM fx_records").fetchall()
        print(answer.status_code, released.is_set(), round(max(gaps), 2), status, flush=True)


asyncio.run(main())
"""


def test_a_stopping_process_commits_each_response_off_the_event_loop(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "seller.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    status, released, gap, records = proc.stdout.split(" ", 3)
    # committed before the response returned: after the other worker's lock was released
    assert (status, released, records.strip()) == ("200", "True", "[('delivered',)]")
    assert float(gap) < 0.75, proc.stdout  # the event loop went on meanwhile (1.5 s before)
