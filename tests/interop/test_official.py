"""Interop with the official 4Mica Python stack, run for real on loopback.

The official packages (``x402==2.20.0``, ``4mica-x402==1.2.3``, ``sdk-4mica==1.2.10``)
live in a scratch virtualenv of their own, never in this project's environment: their
import name ``fourmica_x402`` is ours too. The helper scripts in ``scripts/`` run there:

- ``official_buyer.py``: x402's client with the 4mica EVM client scheme;
- ``official_seller.py``: the official route-dict FastAPI seller.

The virtualenv is ``$FOURMICA_INTEROP_VENV`` when set, else one built from PyPI under
``~/.cache/fourmica-x402-interop/<hash of the pins>`` (reused). Without network the tests
skip, except under ``CI=true`` where they fail.

x402 2.20.0 exactly: the seller side of 4mica-x402 1.2.3 breaks on x402 ≥ 2.21
(its scheme lacks ``payment_flows``), so every protected request would answer 500.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from fourmica_x402.adapters._bench.official import VENV_ENV, official_env
from fourmica_x402.adapters._bench.official import official_python as build_official_python

from fourmica_x402 import PaymentConfig
from fourmica_x402.bench import Skipped
from fourmica_x402.client import PaymentTransport
from fourmica_x402.core import Core
from fourmica_x402.guarantee import SignedGuarantee, address_of, recover_signer
from fourmica_x402.networks import default_asset, get_network
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import (
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    ResourceInfo,
    decode_payment_header,
    encode_header,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "scripts"
EXAMPLES = HERE.parents[1] / "examples"
CHAIN_ID = get_network(NETWORK).chain_id


# -- the scratch virtualenv (built and cached by the P5 benchmark's helper, shared) ----------


@pytest.fixture(scope="session")
def official_python(environment_missing: Callable[[str], NoReturn]) -> Path:
    """The Python of a virtualenv with the pinned official packages."""
    try:
        return build_official_python()
    except Skipped as exc:
        why = str(exc)
        if why.startswith(f"{VENV_ENV}=") or "is broken" in why:  # ours to fix, not the machine's
            pytest.fail(why, pytrace=False)
        return environment_missing(why)


def run_official(
    python: Path, script: str, *args: str, timeout: float = 120, stdin: str | None = None
) -> dict[str, Any]:
    """Run a helper script in the official virtualenv; its last stdout line is JSON."""
    try:
        out = subprocess.run(
            [str(python), "-I", str(SCRIPTS / script), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=official_env(),
            input=stdin,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} timed out after {timeout} s: {exc.stderr!r}"[-2000:])
    lines = out.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(f"{script} printed no JSON (rc {out.returncode}): {out.stderr[-2000:]}")
    result["_stderr"] = out.stderr
    return result


# -- servers on loopback ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(
    name: str, args: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, up (``ready_url`` answers 200) for the block, killed afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"{name} did not start: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def in_thread(app: Any) -> Iterator[str]:
    """An ASGI app under uvicorn in this process; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("in-process seller did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade"}


@contextlib.contextmanager
def v1_only_proxy(upstream: str) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback proxy that drops PAYMENT-REQUIRED from 402s, so x402 clients see v1 only.

    Our challenge carries the v2 header and the v1 body; the official client prefers the
    header. Without it, it reads the v1 body and pays with X-PAYMENT. Yields the proxy's
    URL and the headers of every request it forwarded.
    """
    seen: list[dict[str, str]] = []
    client = httpx.Client(base_url=upstream, timeout=30)

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            seen.append({k.lower(): v for k, v in headers.items()})
            answer = client.request(self.command, self.path, headers=headers, content=body)
            self.send_response(answer.status_code)
            for key, value in answer.headers.multi_items():
                if key.lower() in _HOP or key.lower() == "content-encoding":
                    continue
                if answer.status_code == 402 and key.lower() == "payment-required":
                    continue
                self.send_header(key, value)
            self.send_header("content-length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = _forward

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        client.close()


def new_key() -> tuple[str, str]:
    """A fresh random throwaway key and its address."""
    key = "0x" + secrets.token_hex(32)
    return key, address_of(key)


def wait_for(predicate: Any, what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def b64_json(value: str) -> Any:
    return json.loads(base64.b64decode(value))


# -- a. an official buyer pays our sellers ----------------------------------------------------

EXAMPLE_SELLERS = {"starlette": "starlette_seller.py", "flask": "flask_seller.py"}


@pytest.mark.parametrize("x402_version", [2, 1], ids=["v2", "v1"])
@pytest.mark.parametrize("seller", sorted(EXAMPLE_SELLERS))
def test_official_buyer_pays_our_example_seller(
    official_python: Path, seller: str, x402_version: int, tmp_path: Path
) -> None:
    port = free_port()
    db = f"sqlite:///{tmp_path / 'seller.db'}"
    env = {**os.environ, "PORT": str(port), "FOURMICA_X402_DB": db}
    args = [sys.executable, str(EXAMPLES / EXAMPLE_SELLERS[seller])]
    base = f"http://127.0.0.1:{port}"
    key, buyer = new_key()
    core = Core(db)
    try:
        core.deposit(buyer, 1_000_000, network=NETWORK)
        with serving(seller, args, f"{base}/free", tmp_path / "seller.log", env):
            if x402_version == 2:
                result = run_official(official_python, "official_buyer.py", f"{base}/premium", key)
                seen: list[dict[str, str]] = []
            else:
                with v1_only_proxy(base) as (proxy, seen):
                    result = run_official(
                        official_python, "official_buyer.py", f"{proxy}/premium", key, "--v1"
                    )
            assert result["error"] is None, result["_stderr"][-2000:]
            assert result["status"] == 200, result
            assert result["body"]["payer"] == buyer
            if x402_version == 2:
                settle, other = result["payment_response_header"], "x_payment_response_header"
            else:
                settle, other = result["x_payment_response_header"], "payment_response_header"
                paid = [h for h in seen if "x-payment" in h]
                assert len(paid) == 1 and not any("payment-signature" in h for h in seen)
            assert result[other] is None
            assert settle["success"] is True and settle["payer"] == buyer
            assert settle["transaction"] == result["body"]["guarantee"]
            gid = settle["transaction"]
            # v2: the default delivery policy (G-v2), scored 100 once the response went out;
            # v1: a plain G-v1 guarantee, payable at once.
            record = wait_for(
                lambda: (g := core.guarantee(gid)).state == "payable" and g, "a payable guarantee"
            )
            assert record.version == x402_version and record.user_address == buyer
            assert record.amount == 10_000
            if x402_version == 2:
                assert record.score == 100
            assert core.position(buyer, network=NETWORK).locked == 10_000
            assert core.audit() == []
    finally:
        core.close()


@pytest.mark.parametrize("x402_version", [2, 1], ids=["v2", "v1"])
def test_a_route_priced_on_another_network_is_paid_on_that_chain(
    official_python: Path, x402_version: int, tmp_path: Path
) -> None:
    """The official buyer signs for the chain of the Core its offer's ``rpcUrl`` names: a
    route priced on another network than the gate's names that chain's API."""
    from fastapi import FastAPI
    from fourmica_x402.adapters.fastapi import FourmicaX402, Paid

    from fourmica_x402.gate import Payment

    other = "eip155:11155111"
    db = f"sqlite:///{tmp_path / 'seller.db'}"
    app = FastAPI()
    FourmicaX402(app, pay_to=new_key()[1], network=NETWORK, core=db)

    @app.get("/sepolia")
    def sepolia(payment: Payment = Paid("$0.02", network=other)) -> dict[str, str]:  # noqa: B008
        return {"payer": str(payment.payer), "guarantee": str(payment.guarantee_id)}

    core = Core(db)
    key, buyer = new_key()
    ours_key, ours = new_key()
    try:
        for address in (buyer, ours):
            core.deposit(address, 1_000_000, network=other)
        with in_thread(app) as base:
            offer = b64_json(httpx.get(f"{base}/sepolia").headers["payment-required"])["accepts"][0]
            assert offer["network"] == other
            params = httpx.get(f"{offer['extra']['rpcUrl']}/core/public-params").json()
            assert params["chain_id"] == get_network(other).chain_id
            if x402_version == 2:
                result = run_official(
                    official_python, "official_buyer.py", f"{base}/sepolia", key, "--network", other
                )
            else:
                with v1_only_proxy(base) as (proxy, _):
                    result = run_official(
                        official_python,
                        "official_buyer.py",
                        *(f"{proxy}/sepolia", key, "--v1", "--network", other),
                    )
            assert result["error"] is None, result["_stderr"][-2000:]
            assert result["status"] == 200, result
            with httpx.Client(transport=PaymentTransport(ours_key), timeout=30) as client:
                assert client.get(f"{base}/sepolia").status_code == 200
        for address in (buyer, ours):
            assert core.position(address, network=other).locked == 20_000
        assert core.audit() == []
    finally:
        core.close()


def test_a_remote_sellers_route_on_another_network_than_the_services_is_paid_on_that_chain(
    official_python: Path, tmp_path: Path
) -> None:
    """A seller on ``HttpFacilitator`` priced on another network than the service's own
    (``serve --network``): its offer's ``rpcUrl`` is the service's API for the offer's chain
    (``/chains/<chain id>``), so the official buyer signs for that chain and is paid."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fourmica_x402.core.ledger import SANDBOX_REGISTRY
    from fourmica_x402.facilitator import HttpFacilitator
    from fourmica_x402.service import create_app

    async def premium(request: Request) -> JSONResponse:
        return JSONResponse({"payer": request.state.payment.payer})

    other = "eip155:11155111"
    core = Core(f"sqlite:///{tmp_path / 'core.db'}")
    key, buyer = new_key()
    try:
        core.deposit(buyer, 1_000_000, network=other)
        service_app = create_app(core, sandbox=True, network=NETWORK, tick_interval=None)
        with in_thread(service_app) as service:
            config = PaymentConfig(
                pay_to=new_key()[1],
                network=other,
                routes={"GET /premium": "$0.01"},
                facilitator=HttpFacilitator(service, validation_registry=SANDBOX_REGISTRY),
                records=f"sqlite:///{tmp_path / 'records.db'}",
            )
            app = Starlette(
                routes=[Route("/premium", premium)],
                middleware=[Middleware(PaymentMiddleware, config=config)],
            )
            with in_thread(app) as base:
                offer = b64_json(httpx.get(f"{base}/premium").headers["payment-required"])
                rpc = offer["accepts"][0]["extra"]["rpcUrl"]
                assert rpc == f"{service}/chains/{get_network(other).chain_id}"
                result = run_official(
                    official_python, "official_buyer.py", f"{base}/premium", key, "--network", other
                )
        assert result["error"] is None, result["_stderr"][-2000:]
        assert result["status"] == 200, result
        assert core.position(buyer, network=other).locked == 10_000
        assert core.audit() == []
    finally:
        core.close()


@pytest.mark.parametrize("seller", sorted(EXAMPLE_SELLERS))
def test_the_sdks_own_v2_reader_takes_our_examples_challenge(
    official_python: Path, seller: str, tmp_path: Path
) -> None:
    """sdk-4mica's README reads a v2 challenge with ``X402PaymentRequired.from_raw``, which
    refuses an empty ``resource.description`` or ``mimeType``: a route that sets neither
    advertises the defaults."""
    port = free_port()
    db = f"sqlite:///{tmp_path / 'seller.db'}"
    env = {**os.environ, "PORT": str(port), "FOURMICA_X402_DB": db}
    args = [sys.executable, str(EXAMPLES / EXAMPLE_SELLERS[seller])]
    base = f"http://127.0.0.1:{port}"
    with serving(seller, args, f"{base}/free", tmp_path / "seller.log", env):
        result = run_official(official_python, "official_challenge.py", f"{base}/premium")
    assert result["status"] == 402 and result["error"] is None, result
    assert result["resource"]["description"] and result["resource"]["mimeType"]


@pytest.mark.parametrize("seller", sorted(EXAMPLE_SELLERS))
def test_official_buyer_on_a_path_variant_is_charged_once_or_not_at_all(
    official_python: Path, seller: str, tmp_path: Path
) -> None:
    """GET /premium/ with the official buyer: Starlette redirects (307) and the buyer pays
    once, at /premium; Flask answers 404 and nothing is charged. (Starlette used to settle
    /premium/, answer the redirect, and be paid again after it: one response, two charges.)"""
    port = free_port()
    db = f"sqlite:///{tmp_path / 'seller.db'}"
    env = {**os.environ, "PORT": str(port), "FOURMICA_X402_DB": db}
    args = [sys.executable, str(EXAMPLES / EXAMPLE_SELLERS[seller])]
    base = f"http://127.0.0.1:{port}"
    key, buyer = new_key()
    core = Core(db)
    try:
        core.deposit(buyer, 1_000_000, network=NETWORK)
        with serving(seller, args, f"{base}/free", tmp_path / "seller.log", env):
            result = run_official(official_python, "official_buyer.py", f"{base}/premium/", key)
            charged = core.guarantees()
            if seller == "starlette":
                assert result["status"] == 200 and result["body"]["payer"] == buyer, result
                assert len(charged) == 1
                wait_for(lambda: core.guarantee(charged[0].guarantee_id).state == "payable", "pay")
                assert core.position(buyer, network=NETWORK).locked == 10_000
            else:
                assert result["status"] == 404, result
                assert charged == [] and core.position(buyer, network=NETWORK).locked == 0
            assert core.audit() == []
    finally:
        core.close()


# -- b. the official seller on our service ---------------------------------------------------


def test_official_route_dict_seller_uses_our_service(official_python: Path, tmp_path: Path) -> None:
    service_port, seller_port = free_port(), free_port()
    service = f"http://127.0.0.1:{service_port}"
    seller = f"http://127.0.0.1:{seller_port}"
    db = f"sqlite:///{tmp_path / 'service.db'}"
    serve = [sys.executable, "-m", "fourmica_x402", "serve", "--db", db]
    serve += ["--port", str(service_port), "--sandbox"]
    _, pay_to = new_key()
    _, validator = new_key()
    with serving("fourmica-x402 serve", serve, f"{service}/health", tmp_path / "service.log"):
        params = httpx.get(f"{service}/core/public-params", timeout=10).json()
        extra = {
            "rpcUrl": service,
            "validationRegistryAddress": params["trusted_validation_registries"][0],
            "validatorAddress": validator,
            "validatorAgentId": "7",
            "minValidationScore": 80,
            "jobHash": "0x" + "77" * 32,
        }
        official = [
            str(official_python),
            "-I",
            str(SCRIPTS / "official_seller.py"),
            str(seller_port),
            service,
            pay_to,
            "--extra",
            json.dumps(extra),
        ]
        with serving(
            "official seller",
            official,
            f"{seller}/health",
            tmp_path / "official_seller.log",
            official_env(),
        ):
            challenge = httpx.get(f"{seller}/premium", timeout=30)
            assert challenge.status_code == 402, challenge.text
            offer = b64_json(challenge.headers["payment-required"])["accepts"][0]
            assert offer["extra"]["tabEndpoint"] == f"{seller}/payment/tab"

            # our buyer (PaymentTransport over real HTTP)
            ours_key, ours = new_key()
            theirs_key, theirs = new_key()
            for address in (ours, theirs):
                funded = httpx.post(
                    f"{service}/sandbox/deposit",
                    json={"address": address, "amount": "$1"},
                    timeout=10,
                )
                assert funded.status_code == 200, funded.text
            with httpx.Client(transport=PaymentTransport(ours_key), timeout=30) as client:
                paid = client.get(f"{seller}/premium")
            assert paid.status_code == 200, paid.text
            assert paid.json() == {"premium": "the good stuff"}
            receipt = paid.extensions["fourmica_receipt"]
            assert receipt.outcome == "paid" and receipt.x402_version == 2
            settle = b64_json(paid.headers["payment-response"])
            assert settle["success"] is True and settle["payer"] == ours
            assert settle["transaction"] == receipt.guarantee_id

            # the official buyer, same seller, same service
            result = run_official(
                official_python, "official_buyer.py", f"{seller}/premium", theirs_key
            )
            assert result["error"] is None, result["_stderr"][-2000:]
            assert result["status"] == 200, result
            assert result["payment_response_header"]["success"] is True
            assert result["payment_response_header"]["payer"] == theirs

        # Tabs, verify and settle went to our service: its Core holds both guarantees, on
        # the tabs it opened, waiting for the validator's score (nobody posts one here).
        rows = httpx.get(f"{service}/api/guarantees", timeout=10).json()
        by_payer = {row["user_address"]: row for row in rows}
        assert set(by_payer) == {ours, theirs}, rows
        for row in by_payer.values():
            assert row["state"] == "pending_validation", row
            assert row["version"] == 2 and row["amount"] == 10_000
            assert row["recipient_address"] == pay_to and row["validator"] == validator
            assert row["min_score"] == 80 and row["certificate"], row
        assert by_payer[ours]["guarantee_id"] == receipt.guarantee_id
        assert by_payer[ours]["tab_id"] == receipt.tab_id
        assert by_payer[theirs]["guarantee_id"] == result["payment_response_header"]["transaction"]
        positions = httpx.get(f"{service}/api/positions", timeout=10).json()
        locked = {p["address"]: p["locked"] for p in positions}
        assert locked[ours] == 10_000 and locked[theirs] == 10_000
        metrics = httpx.get(f"{service}/metrics", timeout=10).text
        assert 'fourmica_settle_total{outcome="success"} 2.0' in metrics


@contextlib.contextmanager
def _sandbox_settle(tmp_path: Path) -> Iterator[tuple[str, TestBuyer, dict[str, Any], Any]]:
    """``fourmica-x402 serve --sandbox`` with a buyer holding $1 on it: (its URL, the buyer,
    the buyer's G-v1 tab to a new seller, $0.01 requirements of that seller)."""
    port = free_port()
    service = f"http://127.0.0.1:{port}"
    db = f"sqlite:///{tmp_path / 'service.db'}"
    serve = [sys.executable, "-m", "fourmica_x402", "serve", "--db", db]
    serve += ["--port", str(port), "--sandbox"]
    buyer, (_, seller) = TestBuyer.new(), new_key()
    with serving("fourmica-x402 serve", serve, f"{service}/health", tmp_path / "service.log"):
        funded = httpx.post(
            f"{service}/sandbox/deposit", json={"address": buyer.address, "amount": "$1"}
        )
        assert funded.status_code == 200, funded.text
        tab = httpx.post(
            f"{service}/tabs",
            json={"userAddress": buyer.address, "recipientAddress": seller, "guaranteeVersion": 1},
        ).json()
        req = PaymentRequirements(
            scheme="4mica-credit",
            network=NETWORK,
            asset=default_asset(NETWORK).address,
            amount="10000",
            pay_to=seller,
        )
        yield service, buyer, tab, req


def test_the_official_client_reads_our_settle_refusals_reason(
    official_python: Path, tmp_path: Path
) -> None:
    """The official seller reads a ``/settle`` refusal's code from ``errorReason`` (x402's
    SettleResponse) when the answer is a full SettleResponse, as ours is: without it, every
    refusal reached its buyer as a bare "Settlement failed"."""
    with _sandbox_settle(tmp_path) as (service, buyer, tab, req):
        body = {
            "x402Version": 2,
            "paymentPayload": b64_json(payment_header(buyer, req, tab)[1]),
            "paymentRequirements": req.to_dict(),
        }
        result = run_official(
            official_python, "official_settle.py", service, stdin=json.dumps(body)
        )
    first, replay = result["settles"]
    assert first["success"] is True and first["error_reason"] is None, result
    assert replay == {"success": False, "error_reason": "replayed_request_id", "transaction": ""}


def test_the_official_sdks_settle_helper_is_served_by_our_service(
    official_python: Path, tmp_path: Path
) -> None:
    """sdk-4mica's resource-server helper, ``X402Flow.settle_payment``, posts the buyer's
    ``X-PAYMENT`` value as it came, in ``paymentHeader`` (the SDK's README says to settle so).
    Our service read only ``paymentPayload``: every payment it settled was refused
    ``malformed_payment``, so a seller on the official SDK could never be paid through it."""
    with _sandbox_settle(tmp_path) as (service, buyer, tab, req):
        resource = ResourceInfo(url="http://seller.test/premium")
        name, header = payment_header(buyer, req, tab, version=1, resource=resource)
        assert name == "X-PAYMENT"
        body = {"header": header, "requirements": req.to_v1(resource).to_dict()}
        result = run_official(
            official_python, "official_sdk_settle.py", service, stdin=json.dumps(body)
        )
        positions = httpx.get(f"{service}/api/positions", timeout=10).json()
    first, replay = result["settles"]
    assert first["success"] is True and first["payer"] == buyer.address, result
    assert first["certificate"]["signature"], first
    assert replay["success"] is False and replay["error"] == "replayed_request_id", replay
    locked = {p["address"]: p["locked"] for p in positions}
    assert locked[buyer.address] == 10_000  # one payment, taken once


# -- c. the official payment header, byte for byte -------------------------------------------


def _json_diff(ours: bytes, theirs: bytes) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
        min(len(ours), len(theirs)),
    )
    return (
        f"first difference at byte {at}:\n"
        f"  official: …{theirs[max(0, at - 80) : at + 80]!r}\n"
        f"  ours:     …{ours[max(0, at - 80) : at + 80]!r}"
    )


@pytest.mark.parametrize("x402_version", [2, 1], ids=["v2", "v1"])
def test_official_payment_header_round_trips_byte_for_byte(
    official_python: Path, x402_version: int, tmp_path: Path
) -> None:
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    captured: list[tuple[str, str]] = []

    def before_settle(request: Any, payload: Any, requirements: Any) -> None:
        for name in ("payment-signature", "x-payment"):
            captured.extend((name, value) for value in request.header_values(name))

    async def premium(request: Request) -> JSONResponse:
        return JSONResponse({"payer": request.state.payment.payer})

    db = str(tmp_path / "core.db")
    _, seller = new_key()
    config = PaymentConfig(
        pay_to=seller, routes={"GET /premium": "$0.01"}, core=db, before_settle=before_settle
    )
    app = Starlette(
        routes=[Route("/premium", premium)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    key, buyer = new_key()
    core = Core(db)
    try:
        core.deposit(buyer, 1_000_000, network=NETWORK)
        with in_thread(app) as base:
            if x402_version == 2:
                result = run_official(official_python, "official_buyer.py", f"{base}/premium", key)
            else:
                with v1_only_proxy(base) as (proxy, _):
                    result = run_official(
                        official_python, "official_buyer.py", f"{proxy}/premium", key, "--v1"
                    )
        assert result["error"] is None, result["_stderr"][-2000:]
        assert result["status"] == 200, result
        assert len(captured) == 1, captured
        name, raw = captured[0]
        assert name == ("payment-signature" if x402_version == 2 else "x-payment")

        decoded = decode_payment_header(raw, expected_version=x402_version)
        assert isinstance(decoded, PaymentPayload if x402_version == 2 else PaymentPayloadV1)
        signed = SignedGuarantee.from_json(decoded.payload)
        assert recover_signer(signed, core.domain(CHAIN_ID)) == buyer
        # The official SDK signs G-v2 when challenged with x402 v2 (our v2 challenge carries
        # the delivery policy) and G-v1 on our v1 body (no policy there).
        assert signed.claims.version == x402_version
        assert signed.claims.user_address == buyer and signed.claims.amount == 10_000

        # Our models reproduce the official bytes: envelope, accepted offer, resource, claims.
        theirs = base64.b64decode(raw)
        ours = base64.b64decode(encode_header(decoded))
        assert ours == theirs, _json_diff(ours, theirs)
        assert encode_header(decoded) == raw
        inner = json.dumps(signed.to_json(), separators=(",", ":")).encode()
        official_inner = json.dumps(decoded.payload, separators=(",", ":")).encode()
        assert inner == official_inner, _json_diff(inner, official_inner)
    finally:
        core.close()


@contextlib.contextmanager
def _replay_seller(
    tmp_path: Path, path: str, handler: Any, official_python: Path, **options: Any
) -> Iterator[tuple[str, str, dict[str, Any], threading.Thread]]:
    """A Starlette app selling ``GET path`` at $0.01 with ``idempotent_replay`` and ``options``,
    served in a thread, and the official buyer paying it in another thread (started): yields
    its URL, the buyer's address, the buyer's outcome (filled in when the
    thread ends) and the thread. On leaving, the buyer was charged once."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    db = str(tmp_path / "core.db")
    config = PaymentConfig(
        pay_to=new_key()[1],
        routes={f"GET {path}": "$0.01"},
        core=db,
        idempotent_replay=True,
        **options,
    )
    app = Starlette(
        routes=[Route(path, handler)], middleware=[Middleware(PaymentMiddleware, config=config)]
    )
    key, buyer = new_key()
    core = Core(db)
    try:
        core.deposit(buyer, 1_000_000, network=NETWORK)
        with in_thread(app) as base:
            outcome: dict[str, Any] = {}
            paying = threading.Thread(
                target=lambda: outcome.update(
                    run_official(official_python, "official_buyer.py", f"{base}{path}", key)
                )
            )
            paying.start()
            yield f"{base}{path}", buyer, outcome, paying
        assert len(core.guarantees()) == 1
        assert core.position(buyer, network=NETWORK).locked == 10_000
        assert core.audit() == []
    finally:
        core.close()


def test_the_official_buyers_payment_sent_again_while_it_is_served_is_told_to_wait(
    official_python: Path, tmp_path: Path
) -> None:
    """With ``idempotent_replay``, the official buyer's header sent again while its request
    is still being served is refused 409 ``payment_in_progress``, saying so: its response
    is replayed once it has ended (the message used to say it never would be), and the
    buyer is charged once."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    captured: list[str] = []
    release = threading.Event()

    def before_settle(request: Any, payload: Any, requirements: Any) -> None:
        captured.extend(request.header_values("payment-signature"))

    async def slow(request: Request) -> JSONResponse:
        await run_in_threadpool(release.wait, 60)
        return JSONResponse({"payer": request.state.payment.payer})

    with _replay_seller(
        tmp_path, "/slow", slow, official_python, before_settle=before_settle
    ) as seller:
        url, _, outcome, paying = seller
        try:
            header = wait_for(lambda: captured and captured[0], "the paid request", 60)
            time.sleep(0.2)  # settled and recorded: the handler is waiting
            again = httpx.get(url, headers={"payment-signature": header})
        finally:
            release.set()
            paying.join(timeout=120)
        assert again.status_code == 409, again.text
        refusal = again.json()
        assert refusal["error"] == "payment_in_progress"
        assert "cannot be replayed" not in refusal["message"], refusal
        assert outcome["status"] == 200, outcome
        replay = httpx.get(url, headers={"payment-signature": header})
        assert replay.status_code == 200 and replay.json() == outcome["body"]


@pytest.mark.parametrize("settle_mode", ["before", "after"])
def test_the_official_buyers_payment_sent_twice_at_once_is_served_once_and_told_to_wait(
    official_python: Path, settle_mode: str, tmp_path: Path
) -> None:
    """With ``idempotent_replay``, the official buyer's header and the same header sent at
    the same moment (a client's retry racing its first try): one is served, the other is
    told 409 ``payment_in_progress`` (docs/operations.md), never 402 ``replayed_request_id``,
    which said the payment was spent on another request (the one that lost the race to the
    Core, or to the record, read no record first). Charged once."""
    import asyncio

    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    captured: list[str] = []
    both_in = asyncio.Event()
    release = threading.Event()

    async def before_settle(request: Any, payload: Any, requirements: Any) -> None:
        captured.extend(request.header_values("payment-signature"))
        if len(captured) >= 2:
            both_in.set()
        await asyncio.wait_for(both_in.wait(), 30)  # both past the replay lookup

    async def slow(request: Request) -> JSONResponse:
        await run_in_threadpool(release.wait, 60)
        return JSONResponse({"payer": request.state.payment.payer})

    with _replay_seller(
        tmp_path, "/slow", slow, official_python, before_settle=before_settle, settle=settle_mode
    ) as (url, buyer, outcome, paying):
        answers: list[httpx.Response] = []
        header = wait_for(lambda: captured and captured[0], "the paid request", 60)
        again = threading.Thread(
            target=lambda: answers.append(
                httpx.get(url, headers={"payment-signature": header}, timeout=60)
            )
        )
        again.start()
        try:
            # the one that lost answers at once; the other waits for the release
            wait_for(lambda: answers or outcome, "the loser's answer", 60)
        finally:
            release.set()
            paying.join(timeout=120)
            again.join(timeout=60)
        statuses = sorted([outcome["status"], answers[0].status_code])
        assert statuses == [200, 409], (outcome, answers[0].text)
        refused = answers[0] if answers[0].status_code == 409 else None
        if refused is not None:
            assert refused.json()["error"] == "payment_in_progress", refused.text
        else:
            assert outcome["body"]["error"] == "payment_in_progress", outcome
        replay = httpx.get(url, headers={"payment-signature": header})
        assert replay.status_code == 200 and replay.json() == {"payer": buyer}


def test_a_settle_after_payment_sent_again_as_its_first_request_settles_is_not_refused_402(
    official_python: Path, tmp_path: Path
) -> None:
    """``settle="after"`` with ``idempotent_replay``: the same header sent again, read no
    record yet, then verified once the official buyer's request had settled. The Core says
    the request id is used; that is the first request's payment, answered as a replay (409
    ``payment_in_progress`` or its response), not 402 ``replayed_request_id``."""
    import asyncio

    from starlette.requests import Request
    from starlette.responses import JSONResponse

    captured: list[str] = []
    second_in, settled = asyncio.Event(), asyncio.Event()

    async def before_settle(request: Any, payload: Any, requirements: Any) -> None:
        captured.extend(request.header_values("payment-signature"))
        if len(captured) == 1:  # the official buyer's: on once the copy has looked itself up
            await asyncio.wait_for(second_in.wait(), 30)
        else:  # the copy: verified once the first request has settled
            second_in.set()
            await asyncio.wait_for(settled.wait(), 30)

    async def after_settle(request: Any, result: Any) -> None:
        settled.set()

    async def premium(request: Request) -> JSONResponse:
        return JSONResponse({"payer": request.state.payment.payer})

    options = {"before_settle": before_settle, "after_settle": after_settle, "settle": "after"}
    with _replay_seller(tmp_path, "/premium", premium, official_python, **options) as seller:
        url, _, outcome, paying = seller
        try:
            header = wait_for(lambda: captured and captured[0], "the paid request", 60)
            again = httpx.get(url, headers={"payment-signature": header})
        finally:
            paying.join(timeout=120)
        assert outcome["status"] == 200, outcome
        assert again.status_code in (200, 409), again.text
        if again.status_code == 409:
            assert again.json()["error"] == "payment_in_progress", again.text
        else:
            assert again.json() == outcome["body"]


# -- d. our buyer pays the official route-dict seller ----------------------------------------


@contextlib.contextmanager
def _official_seller_on_our_service(
    official_python: Path, tmp_path: Path, extra: dict[str, Any] | None = None
) -> Iterator[tuple[str, str, str]]:
    """``fourmica-x402 serve --sandbox`` and the official FastAPI seller on it, its route's
    ``accepts.extra`` being ``extra`` (default: only ``rpcUrl``): (service, seller, payTo)."""
    service_port, seller_port = free_port(), free_port()
    service = f"http://127.0.0.1:{service_port}"
    seller = f"http://127.0.0.1:{seller_port}"
    serve = [sys.executable, "-m", "fourmica_x402", "serve"]
    serve += ["--db", f"sqlite:///{tmp_path / 'service.db'}"]
    serve += ["--port", str(service_port), "--sandbox"]
    _, pay_to = new_key()
    with serving("fourmica-x402 serve", serve, f"{service}/health", tmp_path / "service.log"):
        official = [str(official_python), "-I", str(SCRIPTS / "official_seller.py")]
        official += [str(seller_port), service, pay_to]
        official += ["--extra", json.dumps(extra if extra is not None else {"rpcUrl": service})]
        log = tmp_path / "official_seller.log"
        with serving("official seller", official, f"{seller}/health", log, official_env()):
            yield service, seller, pay_to


def _fund(service: str, address: str, amount: str = "$1") -> None:
    funded = httpx.post(
        f"{service}/sandbox/deposit", json={"address": address, "amount": amount}, timeout=10
    )
    assert funded.status_code == 200, funded.text


def test_our_buyer_pays_the_official_seller_an_offer_without_validation_policy(
    official_python: Path, tmp_path: Path
) -> None:
    """The official seller's tab endpoint opens the tab at the buyer's ``x402Version``
    (2 on a v2 challenge), whatever the guarantee the offer calls for: an offer without a
    validation policy is paid with a G-v1 guarantee."""
    with _official_seller_on_our_service(official_python, tmp_path) as (service, seller, pay_to):
        key, address = new_key()
        _fund(service, address)
        with httpx.Client(transport=PaymentTransport(key), timeout=30) as client:
            paid = client.get(f"{seller}/premium")
        assert paid.status_code == 200, paid.text
        receipt = paid.extensions["fourmica_receipt"]
        assert receipt.outcome == "paid", receipt
        assert receipt.guarantee_id == b64_json(paid.headers["payment-response"])["transaction"]
        rows = httpx.get(f"{service}/api/guarantees", timeout=10).json()
    assert [(r["user_address"], r["version"], r["amount"]) for r in rows] == [(address, 1, 10_000)]
    assert rows[0]["recipient_address"] == pay_to and rows[0]["certificate"], rows
