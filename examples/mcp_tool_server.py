"""Paid MCP tools: an MCP tool server (streamable HTTP) whose tools are priced per call.

Tools: ``search`` ($0.01 a call), ``summarize`` ($0.05), ``ping`` (free). ``initialize``,
``tools/list`` and notifications pass free; a ``tools/call`` of a priced tool is answered
402 until paid (docs/mcp.md).

Run it:   python examples/mcp_tool_server.py            # serves http://127.0.0.1:8000/mcp
          python examples/mcp_tool_server.py --demo     # serves on a free port, then a buyer
                                                        # session pays for a few calls, prints
                                                        # what it paid, and the server stops
Needs:    pip install "fourmica-x402[server,mcp]"
Env:      PORT (8000) · FOURMICA_X402_DB (a SQLite file in a temporary directory; a database
          URL or file used before is fine) · PAY_TO

Payments settle on the embedded Core in FOURMICA_X402_DB. The demo funds its buyer there with
$1 of test collateral, buys under a task budget of $0.065 (a search, a summary, then a second
search the budget refuses, nothing signed for it), and checks that the buyer's collateral
locked by this run is what it was served. Keys are throwaway TEST keys (publicly known);
never fund them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from fourmica_x402.adapters.asgi import PaymentMiddleware
from mcp.server.fastmcp import FastMCP

from fourmica_x402.client import SpendingPolicy
from fourmica_x402.client.mcp import paid_session
from fourmica_x402.core import Core
from fourmica_x402.errors import PaymentRefused
from fourmica_x402.guarantee import address_of
from fourmica_x402.mcp import McpTools
from fourmica_x402.networks import default_asset, format_amount
from fourmica_x402.testing import TEST_KEYS

NETWORK = "eip155:84532"  # Base Sepolia, USDC
USDC = default_asset(NETWORK)
# Throwaway TEST keys (publicly known Anvil accounts). Set PAY_TO to your own address.
PAY_TO = os.environ.get("PAY_TO") or address_of(TEST_KEYS[2])
BUYER_KEY = TEST_KEYS[3]
TOOLS = McpTools({"search": "$0.01", "summarize": "$0.05", "ping": None})


def tool_server() -> FastMCP:
    server = FastMCP("paid-tools", log_level="WARNING")

    @server.tool()
    def search(query: str) -> str:
        """Search the catalogue ($0.01 a call)."""
        return f"3 results for {query!r}"

    @server.tool()
    def summarize(text: str) -> str:
        """Summarize a text ($0.05 a call)."""
        return text if len(text) < 40 else text[:37] + "..."

    @server.tool()
    def ping() -> str:
        """Free."""
        return "pong"

    return server


def build_app(core: Core | str) -> PaymentMiddleware:
    """The MCP server's ASGI app with its tools priced (POST /mcp)."""
    config = TOOLS.config(
        pay_to=PAY_TO,
        network=NETWORK,
        core=core,
        route={"description": "paid MCP tools: search $0.01, summarize $0.05"},
    )
    return PaymentMiddleware(tool_server().streamable_http_app(), config)


def money(atomic: int) -> str:
    return format_amount(atomic, USDC)


async def buy(url: str) -> list[tuple[str, str, int]]:
    """A buyer's session: the calls it made, what each answered, what it paid."""
    policy = SpendingPolicy(max_per_request="$0.05")
    made: list[tuple[str, str, int]] = []
    async with paid_session(url, BUYER_KEY, policy=policy, task="demo", budget="$0.065") as s:
        print("tools:", ", ".join(t.name for t in (await s.list_tools()).tools))
        calls = [("ping", {}), ("search", {"query": "x402"}), ("summarize", {"text": "MCP"})]
        calls.append(("search", {"query": "more"}))  # over the task budget: refused
        for name, arguments in calls:
            paid_before = sum(r.amount or 0 for r in s.payments.ledger if r.outcome == "paid")
            try:
                result = await s.call_tool(name, arguments)
                answer = result.content[0].text  # type: ignore[union-attr]
            except PaymentRefused as refused:
                answer = f"refused ({refused.reason}): {refused.message}"
            paid = sum(r.amount or 0 for r in s.payments.ledger if r.outcome == "paid")
            made.append((name, answer, paid - paid_before))
            cost = "refused" if answer.startswith("refused") else money(paid - paid_before)
            print(f"{name:<10} {cost:>8}  -> {answer}")
    return made


def demo(db: str) -> int:
    # The SDK logs its session's standalone stream being cut when the server stops: expected.
    logging.getLogger("mcp.server.streamable_http").setLevel(logging.CRITICAL)
    core = Core(db)
    buyer = address_of(BUYER_KEY)
    before = int(core.position(buyer, network=NETWORK).locked)  # a database used before
    core.deposit(buyer, 1_000_000, network=NETWORK)  # $1 of test collateral
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(build_app(core), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    if not server.started:
        print("the server did not start", file=sys.stderr)
        return 1
    try:
        made = asyncio.run(buy(f"http://127.0.0.1:{port}/mcp"))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    paid = sum(amount for _, _, amount in made)
    locked = int(core.position(buyer, network=NETWORK).locked) - before  # by this run
    print(f"paid in all: {money(paid)}; the buyer's collateral locked: {money(locked)}")
    core.close()
    return 0 if paid == locked == 60_000 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="serve, buy a few calls, stop")
    args = parser.parse_args()
    db = os.environ.get("FOURMICA_X402_DB") or str(
        Path(tempfile.mkdtemp(prefix="mcp-tools-")) / "core.db"
    )
    if args.demo:
        return demo(db)
    port = int(os.environ.get("PORT", "8000"))
    print(f"paid MCP tools on http://127.0.0.1:{port}/mcp (Core: {db})")
    uvicorn.run(build_app(db), host="127.0.0.1", port=port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
