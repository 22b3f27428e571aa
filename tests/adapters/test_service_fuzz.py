"""Generative fuzzing of the Core service (``fourmica-x402 serve``): every endpoint, with and
without keys, fed valid bodies damaged by ``tests/fuzzkit.py`` and sent as raw bytes (so
duplicate keys, NaN, deep nesting and bad UTF-8 reach the server as written).

Oracle: never a 5xx, never a traceback or a key in an answer or a logged exception, a refusal
says why (``error``), every guarantee the Core holds is for exactly what its requirements
priced, and ``audit()`` is clean at the end. Small seeded budget by default; ``-m slow`` for
more; ``FOURMICA_FUZZ_SEED`` for another seed.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import random
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from fourmica_x402.core import Core
from fourmica_x402.service import create_app
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import PaymentRequirements

_spec = importlib.util.spec_from_file_location(
    "fuzzkit", Path(__file__).parent.parent / "fuzzkit.py"
)
assert _spec and _spec.loader
fuzzkit = sys.modules.setdefault("fuzzkit", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fuzzkit)

SEED = int(os.environ.get("FOURMICA_FUZZ_SEED", "402"))
KEY = "s3cret-operator-key"
SELLER = TestBuyer.from_key(
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
).address  # test key
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PRICE = 10_000
VALUES = [
    "-1",
    "0",
    "1e308",
    "x",
    "0x",
    "%00",
    "18446744073709551617",
    "",
    "%C3%A9",
    SELLER,
    SELLER.lower()[:-1],
    "failed",
    "NaN",
    "1" * 400,
    "%ff",
    "0x1",
]
QUERIES = ["address", "after", "status", "limit"]
#: a refusal's code: ``reason``, or ``error`` where the answer is ``{error, message}``
CODE = re.compile(r"[a-z][a-z0-9_]*")


def requirements() -> PaymentRequirements:
    return PaymentRequirements(
        scheme="4mica-credit",
        network=NETWORK,
        asset=USDC,
        amount=str(PRICE),
        pay_to=SELLER,
        extra={"tabEndpoint": "http://seller.test/x402/tab"},
    )


class Service:
    def __init__(self, client: TestClient, core: Core, rng: random.Random) -> None:
        self.client, self.core, self.rng = client, core, rng
        self.mutator = fuzzkit.Mutator(rng)
        self.buyers: list[TestBuyer] = []

    def tab_body(self, buyer: TestBuyer) -> dict[str, Any]:
        return {
            "userAddress": buyer.address,
            "recipientAddress": SELLER,
            "network": NETWORK,
            "erc20Token": USDC,
            "guaranteeVersion": 1,
        }

    def payment(self) -> tuple[dict[str, Any], TestBuyer]:
        # a few buyers, so their open tabs are reused (new tabs are rate-limited per client)
        if len(self.buyers) < 8:
            self.buyers.append(TestBuyer.new())
            self.core.deposit(self.buyers[-1].address, 10**9, network=NETWORK)
        buyer = self.rng.choice(self.buyers)
        tab = self.client.post("/tabs", json=self.tab_body(buyer)).json()
        assert "tabId" in tab, tab
        _, header = payment_header(buyer, requirements(), tab)
        payload = json.loads(base64.b64decode(header))
        body = {
            "x402Version": 2,
            "paymentPayload": payload,
            "paymentRequirements": requirements().to_dict(),
        }
        return body, buyer

    def valid(self) -> tuple[str, str, Any]:
        """One valid request: (method, path, JSON body or None)."""
        rng = self.rng
        body, buyer = self.payment()
        gid = self._a_guarantee()
        choices: list[tuple[str, str, Any]] = [
            ("POST", "/verify", body),
            ("POST", "/settle", body),
            ("POST", "/tabs", self.tab_body(buyer)),
            (
                "POST",
                "/core/payment-tabs",
                {"user_address": buyer.address, "recipient_address": SELLER, "erc20_token": USDC},
            ),
            ("POST", "/core/guarantees", body["paymentPayload"]["payload"]),
            ("POST", f"/guarantees/{gid}/void", {"by": SELLER}),
            ("POST", f"/guarantees/{gid}/validation", {"score": 100, "by": SELLER}),
            ("POST", "/sandbox/deposit", {"address": buyer.address, "amount": "$1"}),
            ("POST", "/sandbox/withdraw", {"address": buyer.address, "amount": 1}),
            ("POST", "/sandbox/debits/pay", {"address": buyer.address, "amount": "150"}),
            ("POST", "/sandbox/credits/claim", {"address": SELLER}),
            ("POST", "/sandbox/cycles/close", {}),
            ("POST", "/sandbox/tick", {}),
            ("POST", "/sandbox/suspend", {"address": buyer.address}),
            ("POST", "/auth/nonce", {"address": buyer.address}),
            ("POST", "/auth/verify", {"address": buyer.address, "nonce": "x", "signature": "0x"}),
            ("POST", "/auth/refresh", {"refresh_token": "abc"}),
            ("POST", "/auth/logout", {"refresh_token": "abc"}),
            ("POST", "/admin/webhooks", {"url": "https://hooks.example/h", "events": ["*"]}),
            ("POST", "/rpc", {"jsonrpc": "2.0", "id": 1, "method": "core_getPublicParams"}),
            ("GET", "/supported", None),
            ("GET", "/core/public-params", None),
            ("GET", f"/core/tabs/{hex(1)}/guarantees/0x0", None),
            ("GET", "/api/guarantees", None),
            ("GET", "/api/positions", None),
            ("GET", "/api/cycles", None),
            ("GET", "/api/cycles/1", None),
            ("GET", "/api/events", None),
            ("GET", "/admin/webhooks/deliveries", None),
            ("GET", "/dashboard", None),
            ("GET", "/", None),
            ("GET", "/metrics", None),
        ]
        return rng.choice(choices)

    def _a_guarantee(self) -> str:
        rows = self.core.guarantees(limit=1)
        return rows[0].guarantee_id if rows else "0x01"

    def round(self) -> None:
        rng = self.rng
        method, path, body = self.valid()
        headers = {"content-type": rng.choice(["application/json"] * 4 + ["text/plain", ""])}
        if rng.random() < 0.6:
            headers["authorization"] = rng.choice(
                [f"Bearer {KEY}"] * 3 + ["Bearer", "Basic czNjcmV0", f"Bearer {KEY}x", "bearer "]
            )
        if method == "GET":
            query = "&".join(
                f"{rng.choice(QUERIES)}={rng.choice(VALUES)}" for _ in range(rng.randrange(4))
            )
            path = path + ("?" + query if query else "")
            if rng.random() < 0.3:
                path = path.replace(
                    "/1", "/" + rng.choice(["-1", "0x", "99999999999999999999", "%ff"])
                )
            content = None
        else:
            mutated = self.mutator.mutate(body) if rng.random() < 0.85 else body
            text = fuzzkit.dumps(mutated)
            content = text.encode("utf-8", "surrogatepass")
            if rng.random() < 0.1:
                content = content[: rng.randrange(len(content) + 1)]
            if rng.random() < 0.05:
                content = b"\xff\xfe" + content
        resp = self.client.request(method, path, content=content, headers=headers)
        what = (method, path, resp.status_code, resp.text[:300], (content or b"")[:300])
        assert resp.status_code < 500, what
        assert "Traceback" not in resp.text, what
        assert KEY not in resp.text, what
        if resp.status_code >= 400 and resp.headers.get("content-type", "").startswith(
            "application/json"
        ):
            answer = resp.json()
            assert isinstance(answer, dict), what
            code = answer.get("reason") or answer.get("error")
            assert isinstance(code, str) and CODE.fullmatch(code), what
        if path == "/verify" and resp.status_code == 200:
            reason = resp.json().get("invalidReason")
            assert reason is None or CODE.fullmatch(reason), what


def _run(url: str, caplog: pytest.LogCaptureFixture, rounds: int) -> None:
    caplog.set_level(logging.INFO)
    core = Core(url)
    rng = random.Random(f"{SEED}:service")
    app = create_app(core, sandbox=True, api_key=KEY, tick_interval=None)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            service = Service(client, core, rng)
            for _ in range(rounds):
                service.round()
        for g in core.guarantees(limit=100_000):
            assert (g.amount, g.recipient_address) == (PRICE, SELLER), g
        assert core.audit() == []
    finally:
        core.close()
    crashed = [r for r in caplog.records if r.exc_info]
    assert not crashed, [(r.name, r.getMessage()) for r in crashed]
    assert not [r for r in caplog.records if KEY in r.getMessage()]


def test_fuzzed_service_calls_never_crash(store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    _run(store_url, caplog, rounds=60)


@pytest.mark.slow
def test_fuzzed_service_calls_at_length(store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    _run(store_url, caplog, rounds=1500)
