"""A buyer on x402's own client with our ``4mica-credit`` scheme (fourmica_x402.client.x402_scheme).

Runs INSIDE a scratch virtualenv with one x402 release, ``requests`` and this project's
dependencies; this project's package comes from PYTHONPATH (tests/interop/test_x402_scheme.py
builds both).

    python x402_buyer.py PLAN_JSON

The plan is ``{"key": <throwaway test key>, "payments": [{"url", "mode": "sync"|"async",
"spend_controls": <x402 SpendControls, false, or absent for x402's defaults>,
"policy": <SpendingPolicy keyword arguments, ``"approve": true|false`` standing for an
approval callback with that verdict, or absent>}…]}``. Each payment registers the
scheme on a fresh x402 client (``x402ClientSync`` + ``x402_requests`` for sync,
``x402Client`` + ``x402HttpxClient`` for async; x402 v1 and v2 both registered) and GETs the
URL. Prints one JSON line: ``{"x402": <version>, "results": [{"status", "body",
"payment_response", "x_payment_response", "error", "causes"}…]}`` (result headers decoded;
``causes``: the exception chain as ``"Type: message"`` strings).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import json
import sys
from typing import Any


def _decoded(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(base64.b64decode(value))
    except ValueError:
        return {"undecodable": value}


def _outcome(status: int, headers: Any, text: str) -> dict[str, Any]:
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    return {
        "status": status,
        "body": body,
        "payment_response": _decoded(headers.get("PAYMENT-RESPONSE")),
        "x_payment_response": _decoded(headers.get("X-PAYMENT-RESPONSE")),
        "error": None,
        "causes": [],
    }


def _failure(exc: BaseException) -> dict[str, Any]:
    causes = []
    seen: BaseException | None = exc
    while seen is not None and len(causes) < 6:
        causes.append(f"{type(seen).__name__}: {seen}"[:600])
        seen = seen.__cause__ or seen.__context__
    return {"status": None, "error": causes[0], "causes": causes}


def _client(payment: dict[str, Any], key: str, asynchronous: bool) -> Any:
    from x402 import x402Client, x402ClientSync

    from fourmica_x402.client import SpendingPolicy
    from fourmica_x402.client.x402_scheme import register

    client = x402Client() if asynchronous else x402ClientSync()
    options = dict(payment.get("policy") or {})
    if "approve" in options:  # the approval callback's fixed verdict (async for the async client)
        verdict = bool(options.pop("approve"))

        async def approve_async(request: Any) -> bool:
            return verdict

        options["approve"] = approve_async if asynchronous else (lambda request: verdict)
    policy = SpendingPolicy(**options) if payment.get("policy") else None
    register(client, key, policy=policy)
    if "spend_controls" in payment:  # absent: x402's defaults (on, $1 per payment)
        client.set_spend_controls(payment["spend_controls"])
    return client


def pay_sync(payment: dict[str, Any], key: str) -> dict[str, Any]:
    from x402.http.clients import x402_requests

    session = x402_requests(_client(payment, key, asynchronous=False))
    try:
        response = session.get(payment["url"], timeout=60)
    except Exception as exc:
        return _failure(exc)
    finally:
        session.close()
    return _outcome(response.status_code, response.headers, response.text)


async def pay_async(payment: dict[str, Any], key: str) -> dict[str, Any]:
    from x402.http.clients import x402HttpxClient

    async with x402HttpxClient(_client(payment, key, asynchronous=True), timeout=60) as http:
        try:
            response = await http.get(payment["url"])
        except Exception as exc:
            return _failure(exc)
    return _outcome(response.status_code, response.headers, response.text)


def main() -> int:
    plan = json.loads(sys.argv[1])
    results = []
    for payment in plan["payments"]:
        if payment["mode"] == "async":
            results.append(asyncio.run(pay_async(payment, plan["key"])))
        else:
            results.append(pay_sync(payment, plan["key"]))
    print(json.dumps({"x402": importlib.metadata.version("x402"), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
