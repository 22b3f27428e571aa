"""Many concurrent valid payments thrown at real servers, each buyer trying to be served twice.

The seller (tests/load/apps/concurrent_seller.py) runs under ``uvicorn --workers 2`` (Starlette)
and ``gunicorn -w 2 --threads 4`` (Flask) on one SQLite file, and under uvicorn on PostgreSQL.
Attacks: one payment header sent at once to several workers, routes and methods (same price,
another price, a free route, a HEAD); a tab's consecutive guarantees sent out of order at once
by a buyer whose collateral covers only some of them; a guarantee signed on another buyer's
tab; HTTP/1.1 pipelining of a paid request, the same header again on another route and a free
request on one connection. The oracle reads the Core: each guarantee accepted once, each buyer
locked exactly for the 2xx bodies its client received, the handler run once per accepted
guarantee, no 5xx, no traceback in the server's log, ``Core.audit() == []``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

pytestmark = pytest.mark.slow

APPS = Path(__file__).resolve().parent / "apps"
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # Hardhat account #1 (public test key)
PRICE = {"/a": 10_000, "/b": 10_000, "/c": 20_000}
SERVERS = {
    "uvicorn": [
        *("-m", "uvicorn", "concurrent_seller:app", "--app-dir", str(APPS), "--workers", "2"),
        *("--log-level", "warning", "--timeout-keep-alive", "60"),
    ],
    "gunicorn": [
        *("-m", "gunicorn", "concurrent_seller:flask_app", "--chdir", str(APPS)),
        *("-w", "2", "--threads", "4", "--keep-alive", "60"),
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Seller:
    def __init__(self, server: str, tmp_path: Path, core_url: str | None = None) -> None:
        self.core_url = core_url or f"sqlite:///{tmp_path / 'core.db'}"
        self.counter = tmp_path / "runs.txt"
        self.log = tmp_path / "seller.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = server

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        args = [sys.executable, *SERVERS[self.server]]
        if self.server == "uvicorn":
            args += ["--host", "127.0.0.1", "--port", str(self.port)]
        else:
            args += ["-b", f"127.0.0.1:{self.port}"]
        env = {"LOAD_CORE": self.core_url, "LOAD_COUNTER": str(self.counter), "PAY_TO": PAY_TO}
        with self.log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                env={**os.environ, **env},
                cwd=self.log.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{self.url}/free", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"{args} did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.1)
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def offer(self, method: str, path: str) -> Any:
        challenge = httpx.request(method, f"{self.url}{path}", timeout=10)
        assert challenge.status_code == 402, challenge.text
        return decode_payment_required(challenge.headers["payment-required"]).accepts[0]

    def tab(self, buyer: TestBuyer, offer: Any) -> dict[str, Any]:
        body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": {}}
        body["paymentRequirements"] = offer.to_dict()
        answer = httpx.post(offer.extra["tabEndpoint"], json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def runs(self) -> list[list[str]]:
        text = self.counter.read_text() if self.counter.exists() else ""
        return [line.split() for line in text.splitlines()]


async def _send(url: str, method: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    """One request on its own connection (so the workers share them): status and JSON body."""
    await asyncio.sleep(random.random() * 0.05)
    async with httpx.AsyncClient(timeout=30) as client:
        body = b"{}" if method == "POST" else None
        response = await client.request(method, url + path, headers=headers, content=body)
        has_json = response.headers.get("content-type", "").startswith("application/json")
        return response.status_code, response.json() if has_json and response.content else None


def _oracle(seller: Seller, core: Core, charged: dict[str, int]) -> None:
    """``charged``: per buyer, what the 2xx bodies its client received were priced at."""
    deadline = time.monotonic() + 10  # the delivery scores are committed just after the answers
    while any(g.state == "pending_validation" for g in core.guarantees(limit=10_000)):
        assert time.monotonic() < deadline, "a delivery was never scored"
        time.sleep(0.1)
    guarantees = core.guarantees(limit=10_000)
    runs = seller.runs()
    assert len({g.guarantee_id for g in guarantees}) == len(guarantees)
    assert Counter(run[2] for run in runs) == Counter(g.guarantee_id for g in guarantees)
    for address, amount in charged.items():
        mine = [g for g in guarantees if g.user_address == address]
        assert core.position(address, network=NETWORK).locked == amount, address
        assert sum(g.amount for g in mine if g.state == "payable") == amount, address
    assert core.audit() == []
    assert "Traceback" not in seller.log.read_text(errors="replace")


@pytest.fixture(params=sorted(SERVERS))
def seller(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Seller]:
    running = Seller(request.param, tmp_path)
    with running.running():
        yield running


@pytest.fixture
def postgres_seller(postgres_url: str, tmp_path: Path) -> Iterator[Seller]:
    running = Seller("uvicorn", tmp_path, postgres_url)
    with running.running():
        yield running


def test_one_header_at_several_workers_routes_and_methods_pays_once(seller: Seller) -> None:
    _one_header_everywhere(seller)


@pytest.mark.postgres
def test_one_header_everywhere_pays_once_on_postgres(postgres_seller: Seller) -> None:
    _one_header_everywhere(postgres_seller)


@pytest.mark.postgres
def test_out_of_order_guarantees_pay_up_to_the_collateral_on_postgres(
    postgres_seller: Seller,
) -> None:
    test_a_tabs_guarantees_out_of_order_pay_up_to_the_collateral(postgres_seller)


def _one_header_everywhere(seller: Seller) -> None:
    core = Core(seller.core_url)
    offer = seller.offer("GET", "/a")
    buyers = [TestBuyer.new() for _ in range(10)]
    calls: list[tuple[str, str, str, dict[str, str]]] = []
    for buyer in buyers:
        core.deposit(buyer.address, 100 * PRICE["/a"], network=NETWORK)
        name, value = payment_header(buyer, offer, seller.tab(buyer, offer))
        tries = [("GET", "/a")] * 5 + [("GET", "/b"), ("POST", "/c"), ("HEAD", "/a")]
        tries.append(("GET", "/free"))
        calls += [(buyer.address, method, path, {name: value}) for method, path in tries]
    random.shuffle(calls)

    async def fire() -> list[tuple[int, Any]]:
        jobs = (_send(seller.url, method, path, headers) for _, method, path, headers in calls)
        return list(await asyncio.wait_for(asyncio.gather(*jobs), timeout=60))

    answers = asyncio.run(fire())
    charged = dict.fromkeys((b.address for b in buyers), 0)
    for (address, method, path, _), (status, body) in zip(calls, answers, strict=True):
        assert status in (200, 402), (method, path, status, body)
        if status == 200 and path != "/free":
            assert (method, path) == ("GET", "/a"), body  # the route the payment was made for
            charged[address] += PRICE[path]
    assert set(charged.values()) == {PRICE["/a"]}, charged  # each buyer served exactly once
    _oracle(seller, core, charged)
    core.close()


def test_a_tabs_guarantees_out_of_order_pay_up_to_the_collateral(seller: Seller) -> None:
    core = Core(seller.core_url)
    offer = seller.offer("GET", "/a")
    sent, covered = 8, 5
    buyers = [TestBuyer.new() for _ in range(5)]
    calls: list[tuple[str, dict[str, str]]] = []
    for buyer in buyers:
        core.deposit(buyer.address, covered * PRICE["/a"], network=NETWORK)
        tab = seller.tab(buyer, offer)
        first = int(tab["nextReqId"], 16)
        for req_id in range(first, first + sent):
            name, value = payment_header(buyer, offer, {**tab, "nextReqId": hex(req_id)})
            calls.append((buyer.address, {name: value}))
    # a buyer signing on another buyer's tab
    stranger = TestBuyer.new()
    core.deposit(stranger.address, 100 * PRICE["/a"], network=NETWORK)
    borrowed = {**seller.tab(buyers[0], offer), "nextReqId": hex(1000)}
    name, value = payment_header(stranger, offer, borrowed)
    calls.append((stranger.address, {name: value}))
    random.shuffle(calls)

    async def fire() -> list[tuple[int, Any]]:
        jobs = (_send(seller.url, "GET", "/a", headers) for _, headers in calls)
        return list(await asyncio.wait_for(asyncio.gather(*jobs), timeout=60))

    answers = asyncio.run(fire())
    served = Counter(
        address for (address, _), (status, _) in zip(calls, answers, strict=True) if status == 200
    )
    assert {status for status, _ in answers} <= {200, 402}
    assert served == {buyer.address: covered for buyer in buyers}
    charged = {address: n * PRICE["/a"] for address, n in served.items()}
    _oracle(seller, core, {**charged, stranger.address: 0})
    core.close()


def test_pipelined_requests_on_one_connection_pay_once(seller: Seller) -> None:
    core = Core(seller.core_url)
    offer = seller.offer("GET", "/a")
    buyers = [TestBuyer.new() for _ in range(6)]

    async def pipeline(buyer: TestBuyer) -> list[int]:
        name, value = payment_header(buyer, offer, seller.tab(buyer, offer))
        paid = f"GET /a HTTP/1.1\r\nHost: x\r\n{name}: {value}\r\n\r\n".encode()
        free = f"GET /free HTTP/1.1\r\nHost: x\r\n{name}: {value}\r\n\r\n".encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", seller.port)
        writer.write(paid + paid.replace(b"GET /a ", b"GET /b ") + paid + free)
        await writer.drain()
        got = b""
        with contextlib.suppress(TimeoutError):
            while len(re.findall(rb"HTTP/1\.1 \d+", got)) < 4:
                got += await asyncio.wait_for(reader.read(65536), 10)
        writer.close()
        return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d+)", got)]

    for buyer in buyers:
        core.deposit(buyer.address, 100 * PRICE["/a"], network=NETWORK)

    async def fire() -> list[list[int]]:
        return list(await asyncio.gather(*(pipeline(buyer) for buyer in buyers)))

    statuses = asyncio.run(fire())
    for got in statuses:
        assert got[:3] == [200, 402, 402], got
        assert got[3:] in ([200], []), got  # a server may close after answering three
    _oracle(seller, core, {buyer.address: PRICE["/a"] for buyer in buyers})
    core.close()
