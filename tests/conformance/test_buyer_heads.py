"""The heads of the answers the buyer reads arrive whole within the read timeout.

httpx's read timeout bounds each read: a seller sending a head (status line and headers) a byte
just in time, or ``103 Early Hints`` answers without end, held the buyer for ever, on the 402,
the tab endpoint, a listing or the x402 scheme's calls (docs/buyer.md, "Challenges"). A real
server on 127.0.0.1 misbehaves at the byte level, each drip within httpx's per-read timeout and
bounded (10 s at most); the buyer must give up at about its read timeout (1.5 s).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from fourmica_x402.client import (
    AsyncPaymentTransport,
    PaymentTransport,
    adiscover,
    discover,
    fetch_certificate,
    fetch_public_key,
)
from fourmica_x402.client.x402_scheme import FourMicaCreditScheme
from fourmica_x402.errors import DiscoveryFailed, PaymentFailed
from fourmica_x402.networks import default_asset
from fourmica_x402.testing import NETWORK, TestBuyer
from fourmica_x402.wire import PaymentRequirements

TIMEOUT = 1.5
LATE = r"did not arrive whole within 1\.5 s"
DRIPS, DRIP = 40, 0.25  # 10 s of dripping at most, each drip well within the read timeout


def _offer(base: str) -> dict[str, Any]:
    return {
        "scheme": "4mica-credit",
        "network": NETWORK,
        "asset": default_asset(NETWORK).address,
        "amount": "10000",
        "payTo": "0x" + "ab" * 20,
        "maxTimeoutSeconds": 300,
        "extra": {"tabEndpoint": f"{base}/tab"},
    }


class _Seller:
    """A raw HTTP/1.1 server: kept-alive connections, one thread each; ``slow`` names the
    answer it drips: ``402`` (its head, a byte at a time), ``tab`` (the same), ``tab103``
    (endless 103 answers) or ``listing`` (the same); the Core's reads (``/core/…``) always
    drip 103 answers."""

    def __init__(self, slow: str) -> None:
        self.slow = slow
        self.paths: list[list[str]] = []  # the requests, by connection
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._sock.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        seen: list[str] = []
        self.paths.append(seen)
        with conn, contextlib.suppress(OSError), conn.makefile("rb") as reader:
            while line := reader.readline():
                method, path, _ = line.decode().split(" ", 2)
                length = 0
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = reader.read(length)
                seen.append(path)
                if not self._answer(conn, method, path, body):
                    return

    def _answer(self, conn: socket.socket, method: str, path: str, body: bytes) -> bool:
        """Answer one request; whether the connection goes on."""
        if path == "/tab":
            if self.slow == "tab":
                return self._drip(conn, b"HTTP/1.1 200 OK\r\n", b"x")
            if self.slow == "tab103":
                return self._drip(conn, b"", b"HTTP/1.1 103 Early Hints\r\n\r\n")
            user = json.loads(body)["userAddress"]
            tab = json.dumps({"tabId": "0x1", "nextReqId": "0x1", "userAddress": user})
            return self._send(conn, 200, [("content-type", "application/json")], tab.encode())
        if path.startswith(("/.well-known/x402", "/core/")):  # a listing, a Core's reads
            return self._drip(conn, b"", b"HTTP/1.1 103 Early Hints\r\n\r\n")
        if self.slow == "402":
            return self._drip(conn, b"HTTP/1.1 402 Payment Required\r\n", b"x")
        required = {"x402Version": 2, "accepts": [_offer(self.base)], "resource": {"url": path}}
        header = base64.b64encode(json.dumps(required).encode()).decode()
        return self._send(conn, 402, [("payment-required", header)], b"")

    @staticmethod
    def _send(
        conn: socket.socket, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> bool:
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        conn.sendall(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
        return True

    @staticmethod
    def _drip(conn: socket.socket, first: bytes, each: bytes) -> bool:
        conn.sendall(first)
        for _ in range(DRIPS):  # then the connection is closed: the test ends anyway
            time.sleep(DRIP)
            conn.sendall(each)
        return False

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def raw_seller() -> Iterator[Callable[[str], _Seller]]:
    made: list[_Seller] = []

    def make(slow: str) -> _Seller:
        made.append(_Seller(slow))
        return made[-1]

    yield make
    for each in made:
        each.close()


@pytest.mark.parametrize("slow", ["402", "tab", "tab103"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_head_sent_slowly_ends_at_the_read_timeout(
    raw_seller: Callable[[str], _Seller], slow: str, mode: str
) -> None:
    server = raw_seller(slow)
    url = f"{server.base}/x"

    def get_sync() -> None:
        transport = PaymentTransport(TestBuyer.new().key)
        with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
            client.get(url)

    async def get_async() -> None:
        transport = AsyncPaymentTransport(TestBuyer.new().key)
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
            await client.get(url)

    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout, match=LATE):
        get_sync() if mode == "sync" else asyncio.run(get_async())
    assert time.monotonic() - started < 6  # the seller would go on for 10 s
    if slow != "402":  # the tab endpoint answers on the 402's kept-alive connection
        assert server.paths[0] == ["/x", "/tab"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_listing_behind_endless_informational_answers_ends_at_the_timeout(
    raw_seller: Callable[[str], _Seller], mode: str
) -> None:
    server = raw_seller("listing")
    started = time.monotonic()
    with pytest.raises(DiscoveryFailed, match=LATE):
        if mode == "sync":
            discover(server.base, timeout=TIMEOUT)
        else:
            asyncio.run(adiscover(server.base, timeout=TIMEOUT))
    assert time.monotonic() - started < 6  # the seller would go on for 10 s


@pytest.mark.parametrize("slow", ["tab", "tab103"])
def test_the_x402_schemes_own_calls_end_at_the_timeout(
    raw_seller: Callable[[str], _Seller], slow: str
) -> None:
    server = raw_seller(slow)
    scheme = FourMicaCreditScheme(TestBuyer.new().key, timeout=TIMEOUT)
    offer = PaymentRequirements.model_validate(_offer(server.base))
    started = time.monotonic()
    try:
        with pytest.raises(PaymentFailed, match=LATE):
            scheme._before(SimpleNamespace(selected_requirements=offer, payment_required=None))
    finally:
        scheme.close()
    assert time.monotonic() - started < 6


@pytest.mark.parametrize("read", ["public_key", "certificate"])
def test_a_core_read_behind_endless_informational_answers_ends_at_the_timeout(
    raw_seller: Callable[[str], _Seller], read: str
) -> None:
    """fetch_public_key and fetch_certificate read a Core the seller named (a receipt's
    core_url): its head sent without end (103 answers, each within httpx's per-read timeout)
    held the buyer as long as that Core liked. It ends at about the read timeout now."""
    server = raw_seller("core")
    receipt = SimpleNamespace(core_url=server.base, tab_id="0x1", request_id="0x1")
    started = time.monotonic()
    with httpx.Client(timeout=TIMEOUT) as client, pytest.raises(httpx.ReadTimeout, match=LATE):
        if read == "public_key":
            fetch_public_key(server.base, client=client)
        else:
            fetch_certificate(receipt, client=client)
    assert time.monotonic() - started < 6  # the Core would go on for 10 s


def test_a_callers_own_trace_still_sees_every_event(
    raw_seller: Callable[[str], _Seller],
) -> None:
    """The flow hooks httpcore's ``trace`` for the head's deadline: a caller's own trace
    callback is still called, and stays on its request."""
    server = raw_seller("none")
    events: list[str] = []

    def mine(event: str, info: dict[str, Any]) -> None:
        events.append(event)

    transport = PaymentTransport(TestBuyer.new().key)
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        request = client.build_request("GET", f"{server.base}/x", extensions={"trace": mine})
        with pytest.raises(PaymentFailed):  # this seller asks again after payment
            client.send(request)
    assert events.count("http11.receive_response_headers.started") == 2  # the 402, the retry
    assert request.extensions["trace"] is mine
